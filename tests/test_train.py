"""Objectives against explicit hand computations, and bit-identical tiny training runs."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from cl_explain.data.scenes import load_split
from cl_explain.train import (
    TrainConfig,
    barlow_twins_loss,
    knn_accuracy,
    nt_xent,
    simsiam_loss,
    train,
)


def test_nt_xent_matches_explicit_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t = 0.5
    z = torch.cat([z1, z2])
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        partner = (i + b) % n
        cos = [float(F.cosine_similarity(z[i], z[j], dim=0)) / t for j in range(n)]
        denominator = sum(math.exp(cos[j]) for j in range(n) if j != i)
        total += -math.log(math.exp(cos[partner]) / denominator)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(total / n, rel=1e-5)


def test_nt_xent_is_low_for_matching_views_and_high_for_shuffled():
    z = torch.eye(6)
    assert float(nt_xent(z, z, 0.1)) < 0.01
    assert float(nt_xent(z, z.roll(1, 0), 0.1)) > 5


def test_barlow_twins_matches_explicit_cross_correlation():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    lambd, n, d = 0.1, 5, 3

    def standardise(z):
        rows = []
        for j in range(d):
            column = [float(z[i, j]) for i in range(n)]
            mean = sum(column) / n
            var = sum((v - mean) ** 2 for v in column) / n
            rows.append([(v - mean) / math.sqrt(var + 1e-5) for v in column])
        return rows  # d x n

    a, b = standardise(z1), standardise(z2)
    expected = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            expected += (1 - c) ** 2 if i == j else lambd * c**2
    assert float(barlow_twins_loss(z1, z2, lambd)) == pytest.approx(expected, rel=1e-5)
    # identical standardised inputs with decorrelated features give ~zero loss
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(x, x, 1.0)) < 1e-4


def test_simsiam_value_and_stop_gradient():
    p1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    p2 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    z1 = torch.tensor([[1.0, 1.0]], requires_grad=True)
    z2 = torch.tensor([[2.0, 0.0]], requires_grad=True)
    loss = simsiam_loss(p1, p2, z1, z2)
    # cos(p1, z2) = 1, cos(p2, z1) = 1/sqrt(2)
    assert float(loss.detach()) == pytest.approx(-(1 + 1 / math.sqrt(2)) / 2)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # projections are stop-gradient targets
    assert p2.grad is not None and float(p2.grad.abs().sum()) > 0


def test_knn_accuracy_on_separable_toy_data():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = torch.tensor([0, 0, 1, 1])
    test_x = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    assert knn_accuracy(train_x, train_y, test_x, torch.tensor([0, 1]), k=2) == 1.0
    assert knn_accuracy(train_x, train_y, test_x, torch.tensor([1, 0]), k=2) == 0.0


@pytest.fixture(scope="module")
def tiny_scenes():
    return load_split("train", n=16, seed=3, size=32, cache=False)


@pytest.mark.parametrize("objective", ["simclr", "barlow-twins", "simsiam", "supervised"])
def test_tiny_training_is_bit_identical(objective, tiny_scenes):
    config = TrainConfig(objective, epochs=1, batch_size=8, width=4, size=32, n_train=16, threads=1, max_steps=2)
    model_a, info_a = train(config, tiny_scenes, log=lambda message: None, view_workers=0)
    model_b, _ = train(config, tiny_scenes, log=lambda message: None, view_workers=0)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    assert info_a["steps"] == 2 and math.isfinite(info_a["losses"][-1])
    # and training actually changed the weights from their initialisation
    torch.manual_seed(config.seed)
    from cl_explain.models.embedded import build_backbone

    init = build_backbone(config.width).state_dict()
    assert not torch.equal(
        init["stages.layer4.conv2.weight"], model_a.backbone.state_dict()["stages.layer4.conv2.weight"]
    )


def test_different_seed_gives_different_weights(tiny_scenes):
    base = dict(epochs=1, batch_size=8, width=4, size=32, n_train=16, threads=1, max_steps=1)
    a, _ = train(TrainConfig("simclr", seed=0, **base), tiny_scenes, log=lambda message: None, view_workers=0)
    b, _ = train(TrainConfig("simclr", seed=1, **base), tiny_scenes, log=lambda message: None, view_workers=0)
    assert not torch.equal(
        a.backbone.state_dict()["stages.stem.conv1.weight"], b.backbone.state_dict()["stages.stem.conv1.weight"]
    )


def test_views_rendered_by_a_worker_process_give_the_same_views_and_weights(tiny_scenes, monkeypatch):
    import cl_explain.train as train_module

    config = TrainConfig("barlow-twins", epochs=3, batch_size=8, width=4, size=32, n_train=16, threads=1)
    banks_here, banks_worker = {}, {}
    b, _ = train(config, tiny_scenes, banks=banks_here, log=lambda message: None, view_workers=0)

    def not_here(*args, **kwargs):
        raise AssertionError("views rendered in the training process")

    monkeypatch.setattr(train_module, "view_bank", not_here)  # the spawned worker imports the real one
    a, info = train(config, tiny_scenes, banks=banks_worker, log=lambda message: None, view_workers=1)
    assert sorted(key[1] for key in banks_worker) == [1, 2, 3]  # one bank per epoch, all from the worker
    assert banks_worker.keys() == banks_here.keys()
    assert all(torch.equal(banks_worker[key], banks_here[key]) for key in banks_here)
    assert all(torch.equal(a.state_dict()[key], value) for key, value in b.state_dict().items())
    assert info["augment_seconds"] >= 0


def test_channels_last_training_matches_the_standard_layout_up_to_rounding(tiny_scenes):
    base = dict(epochs=1, batch_size=8, width=16, size=32, n_train=16, threads=1, max_steps=1)
    plain, _ = train(TrainConfig("simclr", **base), tiny_scenes, log=lambda message: None, view_workers=0)
    fast, info = train(
        TrainConfig("simclr", channels_last=True, **base), tiny_scenes, log=lambda message: None, view_workers=0
    )
    # Adam divides by the gradient's running magnitude, so where a gradient is about zero its rounding decides
    # the step's sign: such weights may differ by up to two steps of lr; the rest agree to rounding
    lr = TrainConfig("simclr").lr
    for key, value in plain.state_dict().items():
        difference = (fast.state_dict()[key].float() - value.float()).abs()
        assert float(difference.max()) <= 2 * lr + 1e-6, key
        assert float((difference > 1e-4).float().mean()) <= 0.01, key
    stored = info["payload"]["backbone"]["stages.stem.conv1.weight"]
    assert stored.is_contiguous() and not stored.is_contiguous(memory_format=torch.channels_last)


def test_cycled_view_banks_equal_training_on_repeated_banks(tiny_scenes):
    base = dict(epochs=3, batch_size=8, width=4, size=32, n_train=16, threads=1)
    cycled_banks = {}
    cycled, _ = train(
        TrainConfig("simsiam", view_epochs=2, **base),
        tiny_scenes,
        banks=cycled_banks,
        log=lambda message: None,
        view_workers=0,
    )
    assert sorted(key[1] for key in cycled_banks) == [1, 2]  # epoch 3 trained on bank 1 again
    # the same run spelled out: one bank per epoch, with epoch 3's bank a copy of epoch 1's
    key = next(key for key in cycled_banks if key[1] == 1)
    repeated = {**cycled_banks, (key[0], 3, *key[2:]): cycled_banks[key]}
    spelled, _ = train(
        TrainConfig("simsiam", **base), tiny_scenes, banks=repeated, log=lambda message: None, view_workers=0
    )
    fresh, _ = train(TrainConfig("simsiam", **base), tiny_scenes, log=lambda message: None, view_workers=0)
    weight = "stages.layer4.conv2.weight"
    assert torch.equal(cycled.backbone.state_dict()[weight], spelled.backbone.state_dict()[weight])
    assert not torch.equal(cycled.backbone.state_dict()[weight], fresh.backbone.state_dict()[weight])
    with pytest.raises(ValueError, match="view_epochs must be"):
        TrainConfig("simclr", view_epochs=0)


@pytest.mark.parametrize("objective", ["simsiam", "barlow-twins"])
def test_fixed_predictor_lr_keeps_only_the_simsiam_predictor_at_the_base_rate(objective):
    from cl_explain.models.embedded import build_backbone, build_head
    from cl_explain.train.loop import _optimizer

    config = TrainConfig(objective, width=4, lr=0.01, fixed_predictor_lr=True)
    backbone, head = build_backbone(4), build_head(objective, 4)
    optimizer, schedule = _optimizer(config, backbone, head, total_steps=10)
    for _ in range(5):  # half way: cosine factor 0.5
        optimizer.step()
        schedule.step()
    rates = [group["lr"] for group in optimizer.param_groups]
    if objective == "simsiam":
        assert rates == pytest.approx([0.005, 0.01])
        assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in head.predictor.parameters()}
    else:  # no predictor: the option has nothing to act on
        assert rates == pytest.approx([0.005])
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(backbone.parameters())) + len(
        list(head.parameters())
    )


def test_warmup_ramps_linearly_then_the_cosine_starts_from_the_base_rate():
    from cl_explain.models.embedded import build_backbone, build_head
    from cl_explain.train.loop import _optimizer

    config = TrainConfig("simsiam", width=4, lr=0.2, optimizer="sgd", fixed_predictor_lr=True)
    backbone, head = build_backbone(4), build_head("simsiam", 4)
    optimizer, schedule = _optimizer(config, backbone, head, total_steps=10, warmup_steps=4)
    rates = []
    for _ in range(10):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    # steps 0-3: 1/4, 2/4, 3/4, 4/4 of the base rate in both groups; then the scheduled group decays over
    # the 6 remaining steps (cosine of 0/6 .. 5/6 of pi) while the predictor stays at the base rate
    ramp = [0.05, 0.1, 0.15, 0.2]
    decay = [0.1 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert [r[0] for r in rates] == pytest.approx(ramp + decay)
    assert [r[1] for r in rates] == pytest.approx(ramp + [0.2] * 6)


@pytest.mark.parametrize(
    "out_dim, widths",
    [
        (
            None,
            [(64, 64), (64, 64), (64, 64), (64, 16), (16, 64)],
        ),  # without out_dim: everything at the backbone width d = 64
        (512, [(64, 512), (512, 512), (512, 512), (512, 128), (128, 512)]),  # the paper's shape, D = 512
    ],
)
def test_simsiam_head_has_the_papers_shape_at_its_output_width(out_dim, widths):
    from cl_explain.models.embedded import build_head, feature_dim

    assert feature_dim(16) == 64
    head = build_head("simsiam", 16, out_dim=out_dim)
    linears = [
        (layer.in_features, layer.out_features) for layer in head.modules() if isinstance(layer, torch.nn.Linear)
    ]
    assert linears == widths
    assert head(torch.randn(3, 64)).shape == (3, widths[-1][1])


def test_sgd_takes_a_plain_l2_momentum_step_and_keeps_the_schedule():
    from cl_explain.models.embedded import build_backbone, build_head
    from cl_explain.train.loop import _optimizer

    config = TrainConfig("simsiam", width=4, lr=0.1, weight_decay=0.01, optimizer="sgd")
    backbone, head = build_backbone(4), build_head("simsiam", 4)
    optimizer, schedule = _optimizer(config, backbone, head, total_steps=4)
    weight = head.projector[0].weight
    before, gradient = weight.detach().clone(), torch.randn_like(weight)
    weight.grad = gradient
    optimizer.step()
    # first step of SGD with momentum: the buffer is the L2-regularised gradient itself
    assert torch.allclose(weight.detach(), before - 0.1 * (gradient + 0.01 * before), atol=1e-7)
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        TrainConfig("simsiam", optimizer="lamb")


def test_channels_last_with_a_narrow_backbone_is_refused():
    with pytest.raises(ValueError, match="width >= 16"):
        TrainConfig("simclr", width=4, channels_last=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _view_workers_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    spawned = b"spawn_main" in cmdline.read()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if ppid == parent and spawned:
                found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process table from /proc (Linux)")
def test_view_worker_stops_when_the_training_process_is_killed():
    script = (
        "from cl_explain.data.scenes import load_split\n"
        "from cl_explain.train import TrainConfig, train\n"
        "scenes = load_split('train', n=256, seed=3, size=32, cache=False)\n"
        "config = TrainConfig('simclr', epochs=10_000, batch_size=64, width=4, size=32, n_train=256)\n"
        "train(config, scenes, log=lambda message: print(message, flush=True))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert "epoch 1/" in process.stdout.readline()  # the worker rendered the first bank
        workers = _view_workers_of(process.pid)
        assert len(workers) == 1
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 15
    while _alive(workers[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphaned = _alive(workers[0])
    if orphaned:
        os.kill(workers[0], signal.SIGKILL)
    assert not orphaned, "the view worker outlived the training process"


def test_multi_threaded_training_renders_every_bank_first_with_parallel_workers(tiny_scenes, monkeypatch):
    from multiprocessing import active_children

    import cl_explain.train as train_module

    config = TrainConfig("simclr", epochs=4, batch_size=8, width=4, size=32, n_train=16, threads=2, view_epochs=3)
    banks_here, banks_workers = {}, {}
    b, _ = train(config, tiny_scenes, banks=banks_here, log=lambda message: None, view_workers=0)
    monkeypatch.setattr(train_module, "view_bank", lambda *args, **kwargs: pytest.fail("rendered in the trainer"))
    messages = []
    a, info = train(
        config,
        tiny_scenes,
        banks=banks_workers,
        view_workers=2,
        log=lambda message: messages.append((message, len(banks_workers), len(active_children()))),
    )
    assert messages[0][0].startswith("rendering 3 view banks in 2 processes before training")
    assert [n for _, n, _ in messages[1:]] == [3, 3, 3, 3]  # all three distinct banks existed after epoch 1
    assert [children for *_, children in messages[1:]] == [0, 0, 0, 0]  # the workers were shut down before epoch 1
    assert all(torch.equal(banks_workers[key], banks_here[key]) for key in banks_here)
    assert all(torch.equal(a.state_dict()[key], value) for key, value in b.state_dict().items())
    assert info["augment_seconds"] > 0


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_bad_view_workers_is_refused(tiny_scenes, workers):
    with pytest.raises(ValueError, match="view_workers must be a number of processes"):
        train(
            TrainConfig("simclr", epochs=1, batch_size=8, width=4, size=32, n_train=16),
            tiny_scenes,
            log=lambda message: None,
            view_workers=workers,
        )


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig("moco")


@pytest.mark.parametrize(("pool", "stem"), [("cls", "patch"), ("mean", "patch"), ("cls", "conv")])
def test_tiny_vit_training_is_bit_identical_and_saves_a_loadable_vit(tiny_scenes, tmp_path, pool, stem):
    from cl_explain.models.embedded import build_network, model_from_payload
    from cl_explain.models.vit import ViTSimilarityModel

    config = TrainConfig(
        "simclr",
        arch="vit",
        epochs=1,
        batch_size=8,
        width=16,
        heads=2,
        depth=2,
        patch=8,
        size=32,
        n_train=16,
        threads=1,
        max_steps=2,
        pool=pool,
        stem=stem,
    )
    model_a, info_a = train(config, tiny_scenes, log=lambda message: None, view_workers=0)
    model_b, _ = train(config, tiny_scenes, log=lambda message: None, view_workers=0)
    assert isinstance(model_a, ViTSimilarityModel) and model_a.name == "embedded-vit" and model_a.patch_size == 8
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    torch.manual_seed(config.seed)
    init_backbone, _ = build_network(dataclasses.asdict(config))
    trained = info_a["payload"]["backbone"]
    assert not torch.equal(init_backbone.state_dict()["blocks.1.mlp.fc2.weight"], trained["blocks.1.mlp.fc2.weight"])
    # The saved payload reloads to the same model: the explained embedding is the normed CLS token or the
    # mean of the normed patch tokens, as timm's forward_features gives them on the normalised image.
    torch.save(info_a["payload"], tmp_path / "vit.pt")
    reloaded = model_from_payload(torch.load(tmp_path / "vit.pt", weights_only=True), tmp_path / "vit.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        vit = reloaded.embedding  # the token embedding shares its modules with the timm model
        torch.testing.assert_close(reloaded.embed(x), model_a.embed(x))
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in info_a["payload"]["normalize"].values())
        init_backbone.load_state_dict(trained)
        tokens = init_backbone.eval().forward_features((x - mean) / std)
        expected = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(1)
        torch.testing.assert_close(reloaded.embed(x), expected)
        assert reloaded.features(x).shape == (2, 16, 4, 4) and reloaded.embed(torch.rand(1, 3, 48, 48)).shape == (1, 16)
    assert vit.patch_size == 8
    stem_layers = reloaded.embedding.patch_embed.proj
    assert isinstance(stem_layers, torch.nn.Sequential) == (stem == "conv")
    assert not any(m.training for m in reloaded.modules())  # the stem's batch norms use their running statistics


def test_conv_stem_keeps_the_patch_grid_and_a_local_receptive_field():
    from cl_explain.models.embedded import build_vit

    torch.manual_seed(0)
    vit = build_vit(32, 1, 2, 8, 2.0, 64, stem="conv").eval()
    x = torch.rand(1, 3, 64, 64)
    changed = x.clone()
    changed[..., 40:48, 40:48] = torch.rand(1, 3, 8, 8)  # patch (5, 5)
    with torch.no_grad():
        a, b = (vit.patch_embed(v).view(8, 8, 32) for v in (x, changed))
    moved = (a - b).abs().amax(-1) > 0
    # Three 4x4 convolutions of stride 2 give token t the pixels 8t - 7 .. 8t + 14, centred on its patch:
    # only the patch's token and its eight neighbours move, every other token stays exactly the same.
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[4:7, 4:7] = True
    assert torch.equal(moved, expected)
    assert vit(x).shape == (1, 32) and vit(torch.rand(1, 3, 48, 48)).shape == (1, 32)


def test_vit_config_is_checked():
    with pytest.raises(ValueError, match="unknown architecture"):
        TrainConfig("simclr", arch="mlp")
    with pytest.raises(ValueError, match="multiple of the patch"):
        TrainConfig("simclr", arch="vit", size=36, patch=8)
    with pytest.raises(ValueError, match="multiple of the heads"):
        TrainConfig("simclr", arch="vit", width=30, heads=4)
    with pytest.raises(ValueError, match="stem must be one of"):
        TrainConfig("simclr", arch="vit", stem="hybrid")
    with pytest.raises(ValueError, match="power-of-two patch"):
        TrainConfig("simclr", arch="vit", stem="conv", size=36, patch=6)
    assert TrainConfig("simclr", arch="vit").model_name == "embedded-vit"
    assert TrainConfig("barlow-twins").model_name == "embedded-barlow-twins"


def test_the_kernel_record_names_the_caps_and_the_level_a_process_really_runs(monkeypatch):
    from cl_explain.utils import cpu_kernels

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    record = cpu_kernels()
    assert record["ONEDNN_MAX_CPU_ISA"] == "AVX2" and record["MKL_ENABLE_INSTRUCTIONS"] is None
    assert record["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability() and record["cpu"]
    # ATEN_CPU_CAPABILITY is read when torch starts: a fresh process pinned to the portable kernels says so
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    script = "import json; from cl_explain.utils import cpu_kernels; print(json.dumps(cpu_kernels()))"
    pinned = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert '"aten_cpu_capability": "DEFAULT"' in pinned.stdout
