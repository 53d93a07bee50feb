"""Paper-checkpoint loaders: every named model is rebuilt from a file in its official layout.

For each release, a reference network is written here the way the official code builds it (or, for
SimCLRv2, as a functional forward pass over the converter's state-dict keys), given seeded random
weights with BatchNorm statistics calibrated on random images, and saved with the release's
top-level keys and prefixes. Loading that file through `cl_explain.load_model` must reproduce the
reference embedding. Error paths (wrong, truncated, missing, unsafe, mis-hashed files) are checked
for messages that name the file and the fix.
"""

from __future__ import annotations

import argparse
import hashlib
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import cl_explain
from cl_explain.models.checkpoint_io import (
    CheckpointError,
    load_strict,
    read_checkpoint,
    sha256_of,
    strip_prefix,
)
from cl_explain.models.paper import PAPER_MODELS, fold_weight_norm, resnet50_from_state_dict
from cl_explain.models.similarity import IMAGENET_MEAN, IMAGENET_STD

from helpers import Weights

SIDE = 32
STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]


def random_images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def assert_same_embedding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0 and torch.isfinite(expected).all()
    # float32 with channels-last convolutions (SimilarityModel) against plain NCHW: rounding differs, and
    # random-weight ResNet-50s amplify it to about 5e-5 of the largest value; bugs change far more.
    torch.testing.assert_close(actual, expected, rtol=0, atol=2e-4 * float(expected.abs().max()))


def assert_eval(model: nn.Module) -> None:
    assert model.training is False
    assert not any(module.training for module in model.modules())


def load(name: str, path, **kwargs):
    model = cl_explain.load_model(name, checkpoint=path, **kwargs)
    assert_eval(model)
    return model


# ----------------------------------------------------------------------------------------------
# Reference networks with random weights
# ----------------------------------------------------------------------------------------------
def dense(state: dict) -> dict:
    """Contiguous copies of the compact views (other tensors, e.g. BN statistics, are shared)."""
    return {key: value.contiguous() for key, value in state.items()}


def file_state(module: nn.Module) -> dict:
    """A reference's state dict with its weights as the compact views they were made from."""
    return {key: getattr(value, "compact", value).detach() for key, value in module.state_dict(keep_vars=True).items()}


def dense_parameter(view: torch.Tensor) -> nn.Parameter:
    parameter = nn.Parameter(view.contiguous())
    parameter.compact = view
    return parameter


def init_norm(target: dict, prefix: str, channels: int, weights: Weights, affine: bool = True) -> None:
    """BN entries: random affine parameters, identity statistics (calibrated later)."""
    if affine:
        target[prefix + "weight"] = weights.around(channels, 1.0, 0.5)
        target[prefix + "bias"] = weights.around(channels, 0.0, 0.1)
    target[prefix + "running_mean"] = torch.zeros(channels)
    target[prefix + "running_var"] = torch.ones(channels)
    target[prefix + "num_batches_tracked"] = torch.tensor(0)


@torch.no_grad()
def randomise_(module: nn.Module, weights: Weights) -> nn.Module:
    """Give a reference built on the meta device random weights; BN statistics = those of a random batch."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            if hasattr(layer, "weight_v"):  # old-style weight norm: direction v and magnitude g
                layer.weight_v = dense_parameter(weights.matrix(layer.weight_v.shape))
                layer.weight_g = nn.Parameter(weights.around(layer.weight_g.shape[0], 1.0, 0.5)[:, None])
            else:
                layer.weight = dense_parameter(weights.matrix(layer.weight.shape))
            if layer.bias is not None:
                layer.bias = nn.Parameter(weights.around(layer.bias.shape[0], 0.0, 0.1))
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            entries: dict[str, torch.Tensor] = {}
            init_norm(entries, "", layer.num_features, weights, affine=layer.affine)
            for name, value in entries.items():
                setattr(layer, name, nn.Parameter(value) if name in ("weight", "bias") else value)
            layer.momentum = None  # cumulative average: one batch sets the statistics exactly
    assert not any(tensor.is_meta for tensor in module.state_dict().values())
    module.train()
    module(random_images(4, seed=99))
    return module.eval()


def on_meta(cls) -> nn.Module:
    with torch.device("meta"):
        return cls()


def official_resnet50(fc: nn.Module | None = None) -> torchvision.models.ResNet:
    net = torchvision.models.resnet50()
    net.fc = fc if fc is not None else nn.Identity()
    return net


class BarlowTwinsReference(nn.Module):
    """As in facebookresearch/barlowtwins: backbone, 8192-d projector, affine-free loss BN."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = official_resnet50()
        self.projector = nn.Sequential(
            nn.Linear(2048, 8192, bias=False),
            nn.BatchNorm1d(8192),
            nn.ReLU(inplace=True),
            nn.Linear(8192, 8192, bias=False),
            nn.BatchNorm1d(8192),
            nn.ReLU(inplace=True),
            nn.Linear(8192, 8192, bias=False),
        )
        self.bn = nn.BatchNorm1d(8192, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projector(self.backbone(imagenet_normalise(x)))
        self.bn(z)  # only so its statistics are calibrated too; the explained embedding is z
        return z


class SimSiamReference(nn.Module):
    """As in facebookresearch/simsiam: encoder = ResNet-50(num_classes=2048) with fc wrapped into the projector."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torchvision.models.resnet50(num_classes=2048)
        self.encoder.fc = nn.Sequential(
            nn.Linear(2048, 2048, bias=False),
            nn.BatchNorm1d(2048),
            nn.ReLU(inplace=True),
            nn.Linear(2048, 2048, bias=False),
            nn.BatchNorm1d(2048),
            nn.ReLU(inplace=True),
            self.encoder.fc,
            nn.BatchNorm1d(2048, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(2048, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 2048)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.encoder(imagenet_normalise(x)))


class DinoReference(nn.Module):
    """As in facebookresearch/dino (MultiCropWrapper(resnet50, DINOHead(2048, 60000, use_bn=True)))."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = official_resnet50()
        mlp = [nn.Linear(2048, 2048), nn.BatchNorm1d(2048), nn.GELU()]
        mlp += [nn.Linear(2048, 2048), nn.BatchNorm1d(2048), nn.GELU(), nn.Linear(2048, 256)]
        self.head = nn.Module()
        self.head.mlp = nn.Sequential(*mlp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm is what DINO used
            self.head.last_layer = nn.utils.weight_norm(nn.Linear(256, 60000, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.head.mlp(self.backbone(imagenet_normalise(x))), dim=-1, p=2)
        return self.head.last_layer(z)


class SupervisedReference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet50()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(imagenet_normalise(x))


def with_prefix(state: dict, prefix: str) -> dict:
    return {prefix + key: value for key, value in state.items()}


# SimCLRv2: the converter's file layout written out key by key, and a functional forward over it.
SIMCLR_DEPTHS = (3, 4, 6, 3)


def simclr_state(width: int, seed: int) -> tuple[dict, dict]:
    """Random ('resnet', 'head') state dicts with the key names of the simclrv2-pytorch conversion."""
    weights = Weights(seed)
    resnet: dict[str, torch.Tensor] = {}

    def conv(key: str, c_out: int, c_in: int, k: int) -> None:
        resnet[key] = weights.matrix((c_out, c_in, k, k))

    conv("net.0.0.weight", 64 * width, 3, 7)
    init_norm(resnet, "net.0.1.0.", 64 * width, weights)
    c_in = 64 * width
    for stage, n_blocks in enumerate(SIMCLR_DEPTHS):
        mid = 64 * width * 2**stage
        for block in range(n_blocks):
            p = f"net.{stage + 1}.blocks.{block}."
            if block == 0:
                conv(p + "projection.shortcut.weight", 4 * mid, c_in, 1)
                init_norm(resnet, p + "projection.bn.0.", 4 * mid, weights)
            conv(p + "net.0.weight", mid, c_in if block == 0 else 4 * mid, 1)
            init_norm(resnet, p + "net.1.0.", mid, weights)
            conv(p + "net.2.weight", mid, mid, 3)
            init_norm(resnet, p + "net.3.0.", mid, weights)
            conv(p + "net.4.weight", 4 * mid, mid, 1)
            init_norm(resnet, p + "net.5.0.", 4 * mid, weights)
        c_in = 4 * mid
    resnet["fc.weight"] = weights.matrix((1000, c_in))
    resnet["fc.bias"] = weights.around(1000, 0.0, 0.1)
    head: dict[str, torch.Tensor] = {}
    for i, (d_in, d_out) in enumerate([(c_in, c_in), (c_in, c_in), (c_in, 128)]):
        head[f"layers.{3 * i}.weight"] = weights.matrix((d_out, d_in))
        init_norm(head, f"layers.{3 * i + 1}.", d_out, weights)
    simclr_forward(dense(resnet), dense(head), random_images(4, seed=99), calibrate=True)
    return resnet, head


@torch.no_grad()
def simclr_forward(resnet: dict, head: dict, x: torch.Tensor, calibrate: bool = False) -> torch.Tensor:
    """SimCLRv2 embedding computed directly from the state dicts (raw pixels in, no normalisation).

    With `calibrate`, every BN uses and stores its batch statistics (momentum 1).
    """

    def bn(h: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
        return F.batch_norm(
            h,
            state[prefix + "running_mean"],
            state[prefix + "running_var"],
            state[prefix + "weight"],
            state[prefix + "bias"],
            training=calibrate,
            momentum=1.0,
            eps=1e-5,
        )

    def conv(h: torch.Tensor, key: str, stride: int = 1) -> torch.Tensor:
        weight = resnet[key]
        return F.conv2d(h, weight, stride=stride, padding=(weight.shape[-1] - 1) // 2)

    h = F.relu(bn(conv(x, "net.0.0.weight", 2), resnet, "net.0.1.0."))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for stage, n_blocks in enumerate(SIMCLR_DEPTHS):
        for block in range(n_blocks):
            p = f"net.{stage + 1}.blocks.{block}."
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = h
            if block == 0:
                shortcut = bn(conv(h, p + "projection.shortcut.weight", stride), resnet, p + "projection.bn.0.")
            r = F.relu(bn(conv(h, p + "net.0.weight"), resnet, p + "net.1.0."))
            r = F.relu(bn(conv(r, p + "net.2.weight", stride), resnet, p + "net.3.0."))
            r = bn(conv(r, p + "net.4.weight"), resnet, p + "net.5.0.")
            h = F.relu(shortcut + r)
    z = h.mean(dim=(2, 3))
    for i in range(3):
        z = bn(F.linear(z, head[f"layers.{3 * i}.weight"]), head, f"layers.{3 * i + 1}.")
        z = F.relu(z) if i < 2 else z
    return z


# ----------------------------------------------------------------------------------------------
# Files in the official layouts (built once per module)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("paper_checkpoints")


@pytest.fixture(scope="module")
def simclr_1x(folder):
    resnet, head = simclr_state(width=1, seed=10)
    path = folder / "r50_1x_sk0_ema.pth"
    torch.save({"resnet": resnet, "head": head}, path)
    return path, (resnet, head)


@pytest.fixture(scope="module")
def barlow(folder):
    ref = randomise_(on_meta(BarlowTwinsReference), Weights(20))
    path = folder / "checkpoint.pth"
    optimizer = {
        "state": {},
        "param_groups": [
            {
                "lr": 0.0,
                "weight_decay": 1.5e-6,
                "weight_decay_filter": True,
                "lars_adaptation_filter": True,
                "params": [0, 1, 2],
            }
        ],
    }
    torch.save({"epoch": 1000, "model": with_prefix(file_state(ref), "module."), "optimizer": optimizer}, path)
    return path, ref


@pytest.fixture(scope="module")
def simsiam(folder):
    ref = randomise_(on_meta(SimSiamReference), Weights(30))
    path = folder / "checkpoint_0099.pth.tar"
    optimizer = {"state": {}, "param_groups": [{"lr": 0.05, "momentum": 0.9, "fix_lr": True, "params": [0]}]}
    torch.save(
        {
            "epoch": 100,
            "arch": "resnet50",
            "state_dict": with_prefix(file_state(ref), "module."),
            "optimizer": optimizer,
        },
        path,
    )
    return path, ref


@pytest.fixture(scope="module")
def dino_reference():
    return randomise_(on_meta(DinoReference), Weights(40))


def save_dino(path, teacher_state: dict) -> None:
    """The layout of main_dino.py's save_dict (teacher and student share tensors, so stored once)."""
    state = with_prefix(teacher_state, "module.")
    args = argparse.Namespace(
        arch="resnet50",
        out_dim=60000,
        use_bn_in_head=True,
        norm_last_layer=True,
        lr=0.03,
        global_crops_scale=(0.14, 1.0),
        output_dir=".",
        seed=0,
        dist_url=None,
    )
    torch.save(
        {
            "student": state,
            "teacher": state,
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 100,
            "args": args,
            "dino_loss": {"center": torch.zeros(1, 60000)},
        },
        path,
    )


@pytest.fixture(scope="module")
def supervised(folder):
    ref = randomise_(on_meta(SupervisedReference), Weights(50, compact=False))  # an ordinary contiguous file
    path = folder / "resnet50-0676ba61.pth"
    torch.save(ref.net.state_dict(), path)
    return path, ref


# ----------------------------------------------------------------------------------------------
# Every named loader reproduces its reference
# ----------------------------------------------------------------------------------------------
def test_simclr_v2_1x_matches_functional_reference(simclr_1x):
    path, (resnet, head) = simclr_1x
    model = load("simclr-v2-r50-1x", path)
    x = random_images(2, seed=11)
    with torch.no_grad():
        assert_same_embedding(model.embed(x), simclr_forward(dense(resnet), dense(head), x))
        assert model.backbone.stage_names == STAGES
        assert model.backbone(x, until="layer2").shape == (2, 512, SIDE // 8, SIDE // 8)
    assert not model.normalized and torch.equal(model.zero_pixel.flatten(), torch.zeros(3))  # raw pixels in


def test_simclr_v2_2x_matches_functional_reference(folder):
    resnet, head = simclr_state(width=2, seed=12)
    path = folder / "r50_2x_sk0_ema.pth"
    torch.save({"resnet": resnet, "head": head}, path)
    model = load("simclr-v2-r50-2x", path)
    x = random_images(1, seed=13)
    with torch.no_grad():
        assert_same_embedding(model.embed(x), simclr_forward(dense(resnet), dense(head), x))
    assert model.features(x).shape[1] == 4096
    path.unlink()


def test_barlow_twins_matches_reference_without_loss_bn(barlow):
    path, ref = barlow
    model = load("barlow-twins-r50", path)
    x = random_images(2, seed=21)
    with torch.no_grad():
        assert_same_embedding(model.embed(x), ref(x))
    assert model.backbone.stage_names == STAGES and model.normalized


def test_simsiam_explains_predictor_of_projector(simsiam):
    path, ref = simsiam
    model = load("simsiam-r50", path)
    x = random_images(2, seed=31)
    with torch.no_grad():
        assert_same_embedding(model.embed(x), ref(x))
    x1 = x[:1].clone().requires_grad_(True)  # gradient methods can differentiate the loaded model
    (grad,) = torch.autograd.grad(model.similarity(x1, x[1:]).sum(), x1)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(parameter.requires_grad and not parameter.is_meta for parameter in model.parameters())


@pytest.mark.parametrize("last_layer", ["weight_norm", "plain"])
def test_dino_accepts_weight_normalised_and_plain_last_layer(dino_reference, folder, last_layer):
    ref = dino_reference
    state = file_state(ref)
    if last_layer == "plain":
        del state["head.last_layer.weight_g"], state["head.last_layer.weight_v"]
        state["head.last_layer.weight"] = ref.head.last_layer.weight.detach().clone()
    path = folder / f"dino_resnet50_pretrain_full_checkpoint_{last_layer}.pth"
    save_dino(path, state)
    model = load("dino-r50", path)
    x = random_images(2, seed=41)
    with torch.no_grad():
        assert_same_embedding(model.embed(x), ref(x))
    assert model.embed(x).shape == (2, 60000)
    path.unlink()


def test_fold_weight_norm_matches_torch_parametrization():
    torch.manual_seed(0)
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(6, 5, bias=False))
    with torch.no_grad():
        layer.parametrizations.weight.original0.uniform_(0.5, 1.5)
    folded = fold_weight_norm({f"last.{k}": v for k, v in layer.state_dict().items()}, "last")
    assert list(folded) == ["last.weight"]
    torch.testing.assert_close(folded["last.weight"], layer.weight.detach())


def test_supervised_explains_logits(supervised):
    path, ref = supervised
    model = load("supervised-r50", path)
    x = random_images(2, seed=51)
    with torch.no_grad():
        assert_same_embedding(model.embed(x), ref(x))
    assert model.embed(x).shape == (2, 1000)


def test_generic_resnet50_with_prefix_and_head(supervised):
    _, ref = supervised
    wrapped = with_prefix(ref.net.state_dict(), "module.encoder_q.")
    x = random_images(2, seed=52)
    logits = resnet50_from_state_dict(wrapped, prefix="module.encoder_q.", name="moco")
    pooled = resnet50_from_state_dict(ref.net.state_dict(), head=nn.Identity())
    with torch.no_grad():
        assert_same_embedding(logits.embed(x), ref(x))
        ref.net.fc, fc = nn.Identity(), ref.net.fc
        try:
            assert_same_embedding(pooled.embed(x), ref(x))  # torchvision's pooled 2048-d feature
        finally:
            ref.net.fc = fc
    assert_eval(logits)
    with pytest.raises(CheckpointError, match="no keys starting with 'backbone.'"):
        resnet50_from_state_dict(wrapped, prefix="backbone.")


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def test_other_models_checkpoint_names_file_format_and_keys(simsiam, folder):
    path, ref = simsiam
    with pytest.raises(CheckpointError) as caught:
        load("barlow-twins-r50", path)
    message = str(caught.value)
    assert str(path) in message and "no 'model' entry" in message and "state_dict" in message
    assert "Barlow Twins full checkpoint" in message

    encoder_only = folder / "simsiam_encoder.pth"
    torch.save(file_state(ref.encoder), encoder_only)  # a SimSiam encoder is not the ImageNet classifier
    with pytest.raises(CheckpointError) as caught:
        load("supervised-r50", encoder_only)
    message = str(caught.value)
    assert str(encoder_only) in message and "ImageNet ResNet-50" in message
    assert "missing keys: fc.weight, fc.bias" in message
    assert "unexpected keys: fc.0.weight, fc.1.weight, fc.1.bias" in message


def test_simclr_width_and_shape_mismatches_are_explained(simclr_1x):
    path, _ = simclr_1x
    with pytest.raises(CheckpointError, match="width-1x.*load it as 'simclr-v2-r50-1x'"):
        load("simclr-v2-r50-2x", path)
    with torch.device("meta"):
        wrong = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(CheckpointError, match=r"shape mismatches: 0.weight \(file \(4, 2\), model \(4, 3\)\)"):
        load_strict(wrong, {"0.weight": torch.zeros(4, 2), "0.bias": torch.zeros(4)}, path="f.pth", expected="x")


def test_truncated_and_non_torch_files_are_named(simsiam, folder):
    path, _ = simsiam
    truncated = folder / "truncated.pth.tar"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated") as caught:
        load("simsiam-r50", truncated)
    assert str(truncated) in str(caught.value)
    text = folder / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt"):
        read_checkpoint(text)
    tensor_file = folder / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(CheckpointError, match="holds a Tensor, expected a dict"):
        read_checkpoint(tensor_file)


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_missing_file_names_release_and_how_to_pass_it(name, tmp_path):
    absent = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError) as caught:
        cl_explain.load_model(name, checkpoint=absent)
    message = str(caught.value)
    assert isinstance(caught.value, CheckpointError)
    assert str(absent) in message and PAPER_MODELS[name].release in message and "checkpoint=" in message
    with pytest.raises(CheckpointError, match="no checkpoint given.*official release"):
        cl_explain.load_model(name)


def test_unknown_name_lists_available_models():
    with pytest.raises(ValueError) as caught:
        cl_explain.load_model("simclr-v3")
    assert all(name in str(caught.value) for name in PAPER_MODELS)


def test_sha256_is_checked(simclr_1x):
    path, _ = simclr_1x
    digest = sha256_of(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    load("simclr-v2-r50-1x", path, sha256=digest.upper())
    with pytest.raises(CheckpointError, match=f"sha256 of .*r50_1x_sk0_ema.pth' is {digest}, expected 0+"):
        load("simclr-v2-r50-1x", path, sha256="0" * 64)


UNPICKLED: list[str] = []


def record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class CodeOnLoad:
    """Unpickling this calls a function: exactly what a malicious checkpoint does."""

    def __reduce__(self):
        return (record_unpickling, ("ran",))


class CustomConfig:
    def __init__(self) -> None:
        self.depth = 50


@pytest.mark.parametrize("payload", [CodeOnLoad(), CustomConfig()], ids=["reduce", "class"])
def test_pickles_needing_code_are_refused(payload, tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {}, "extra": payload}, path)
    with pytest.raises(CheckpointError, match="refused to read .*unsafe.pth.* for safety") as caught:
        cl_explain.load_model("simsiam-r50", checkpoint=path)
    assert type(payload).__name__ in str(caught.value) or "record_unpickling" in str(caught.value)
    assert UNPICKLED == []


def test_dino_args_namespace_is_the_only_extra_class_allowed(tmp_path):
    path = tmp_path / "args.pth"
    torch.save({"args": argparse.Namespace(arch="resnet50", out_dim=60000)}, path)
    assert read_checkpoint(path)["args"].out_dim == 60000


def test_options_are_rejected_and_prefixes_stripped(simclr_1x):
    path, _ = simclr_1x
    with pytest.raises(TypeError, match="takes no loading options.*'width'"):
        cl_explain.load_model("simclr-v2-r50-1x", checkpoint=path, width=2)
    assert strip_prefix({"module.a": 1, "b": 2, "x.module.c": 3}, "module.") == {"a": 1, "b": 2, "x.module.c": 3}
