"""The committed embedded models: load by name, hash checks with a rebuild hint, quality vs random init."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cl_explain.models import list_models, load_model
from cl_explain.models.checkpoint_io import CheckpointError, sha256_of
from cl_explain.models import embedded
from cl_explain.data.scenes import DEFAULT_SIZE
from cl_explain.train.manifest import POINTING_PAIRS
from cl_explain.models.embedded import EMBEDDED_MODELS, OBJECTIVES, load_embedded, models_dir, read_manifest

MANIFEST = read_manifest()
SSL = ["embedded-simclr", "embedded-barlow-twins", "embedded-simsiam"]


def test_every_registered_model_is_in_the_manifest_with_its_file():
    assert set(EMBEDDED_MODELS) <= set(MANIFEST["models"]), "run `make models`"
    for name in EMBEDDED_MODELS:
        entry = MANIFEST["models"][name]
        path = models_dir() / entry["file"]
        assert path.is_file() and sha256_of(path) == entry["sha256"]
        for key in ("objective", "config", "seed", "torch", "train_seconds", "quality", "random_init_quality"):
            assert key in entry, f"{name}: manifest entry lacks {key!r}"


def test_checkpoints_are_small():
    total = sum((models_dir() / entry["file"]).stat().st_size for entry in MANIFEST["models"].values())
    assert total <= 25 * 2**20


def test_list_models_describes_embedded_models():
    models = list_models()
    for name in EMBEDDED_MODELS:
        assert name in models and "embedded" in models[name]


@pytest.mark.parametrize("name", [f"embedded-{objective}" for objective in OBJECTIVES])
def test_load_by_name(name):
    model = load_model(name)
    assert not model.training and model.name == name
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fmap = model.features(x)
        assert fmap.shape[-2:] == (8, 8)  # >= 7 x 7 for CAM methods
        emb = model.embed(x)
    assert emb.shape[0] == 2 and torch.isfinite(emb).all()
    assert set(model.backbone.stage_names) == {"stem", "layer1", "layer2", "layer3", "layer4"}
    if name == "embedded-simsiam":  # explained output = predictor(projector(pool))
        with torch.no_grad():
            expected = model.head.predictor(model.head.projector(fmap.mean((2, 3))))
        assert torch.allclose(emb, expected)
    if name == "embedded-supervised":
        assert emb.shape[1] == 8  # class logits


def test_hash_mismatch_and_missing_file_say_make_models(tmp_path):
    name = "embedded-simclr"
    entry = MANIFEST["models"][name]
    good = models_dir() / entry["file"]
    tampered = tmp_path / "tampered.pt"
    tampered.write_bytes(good.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="make models"):
        load_embedded(name, checkpoint=tampered, sha256=entry["sha256"])
    with pytest.raises(FileNotFoundError, match="make models"):
        load_embedded(name, checkpoint=tmp_path / "missing.pt")


def test_default_location_checks_the_manifest_hash(tmp_path, monkeypatch):
    """A data/models folder whose manifest disagrees with the file, or lacks the file, is refused."""
    name = "embedded-barlow-twins"
    shutil.copy(models_dir() / MANIFEST["models"][name]["file"], tmp_path / f"{name}.pt")
    manifest = {"models": {name: {**MANIFEST["models"][name], "sha256": "0" * 64}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(embedded, "models_dir", lambda: tmp_path)
    with pytest.raises(CheckpointError, match="make models"):
        load_model(name)
    (tmp_path / f"{name}.pt").unlink()
    with pytest.raises(FileNotFoundError, match="make models"):
        load_model(name)
    with pytest.raises(FileNotFoundError, match="make models"):
        load_model("embedded-simsiam")  # no manifest entry at all


@pytest.mark.parametrize("name", SSL)
def test_ssl_models_far_above_random_init_and_chance(name):
    entry = MANIFEST["models"][name]
    quality, baseline = entry["quality"], entry["random_init_quality"]
    for metric in ("knn_top1", "linear_probe_top1"):
        assert quality[metric] > baseline[metric] + 0.15, f"{name} {metric} not far above random init"
        assert quality[metric] > 2 * quality["chance"]


@pytest.fixture(scope="module")
def recomputed_quality():
    """name -> the quality numbers of the committed checkpoint recomputed by `train.recompute_quality`
    (evaluation views rendered from scratch once, shared by every model)."""
    from cl_explain.data.scenes import load_split
    from cl_explain.train import EvalData, recompute_quality

    data = EvalData.build(load_split("train", cache=False), load_split("test", cache=False))
    computed: dict[str, dict[str, float]] = {}

    def quality(name: str) -> dict[str, float]:
        if name not in computed:
            computed[name] = recompute_quality([name], data=data)[name]
        return computed[name]

    return quality


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MANIFEST["models"]))
def test_every_quality_number_recomputes_from_the_checkpoint(name, recomputed_quality):
    """kNN, linear probe and both pass rates of each committed model, recomputed, equal the manifest's
    within what another CPU's kernels move them (`QUALITY_TOLERANCE`, a few test scenes; the manifest
    rounds to 1e-4)."""
    from cl_explain.train import QUALITY_TOLERANCE

    stored = MANIFEST["models"][name]["quality"]
    recomputed = recomputed_quality(name)
    assert set(recomputed) == set(stored)
    moved = {
        key: (recomputed[key], stored[key])
        for key in stored
        if abs(recomputed[key] - stored[key]) > QUALITY_TOLERANCE[key] + 1e-4
    }
    assert not moved, f"{name}: (recomputed, manifest) beyond the cross-CPU tolerance: {moved}"


@pytest.mark.parametrize("name", [*SSL, "embedded-supervised"])
def test_models_beat_random_init(name):
    quality, baseline = MANIFEST["models"][name]["quality"], MANIFEST["models"][name]["random_init_quality"]
    for metric in ("knn_top1", "linear_probe_top1", "view_pass_rate", "pure_view_pass_rate"):
        if name == "embedded-supervised" and metric.endswith("pass_rate"):
            continue  # logits are not trained for view invariance
        assert quality[metric] > baseline[metric] > quality["chance"]


def test_graded_snapshots_improve_along_training():
    """At least four SimCLR snapshots whose linear probe rises strictly up to the final model, by 0.3 or more."""
    names = sorted(n for n in MANIFEST["models"] if n.startswith("embedded-simclr-e")) + ["embedded-simclr"]
    assert len(names) >= 5
    probe = [MANIFEST["models"][n]["quality"]["linear_probe_top1"] for n in names]
    assert all(a < b for a, b in zip(probe, probe[1:])), dict(zip(names, probe))
    assert probe[-1] - probe[0] >= 0.3


#: The embedded default's promise for every self-supervised model (manifest, test split; the manifest's numbers
#: are recomputed by the slow test above): quality key -> (comparison, bound). The class is linearly readable, the
#: object matters more than the background (swap triplets), the background alone rarely identifies a scene, and
#: two views of a scene beat another scene.
TARGETS = {
    "linear_probe_top1": (">=", 0.8),
    "knn_top1": (">=", 0.7),
    "object_over_background": (">=", 0.9),
    "background_identifies_scene": ("<=", 0.65),
    "view_pass_rate": (">=", 0.75),
}
#: Targets the committed models miss, with the measured value (data/README.md says why). Strict: a miss that
#: turns into a pass makes its test fail, so this list cannot go stale.
KNOWN_MISSES = {
    ("embedded-simclr", "background_identifies_scene"): "0.660: about what the untrained network scores (0.657)",
    ("embedded-simsiam", "linear_probe_top1"): "0.714: SimSiam trains on weaker colour jitter (data/README.md)",
    ("embedded-simsiam", "knn_top1"): "0.593: SimSiam trains on weaker colour jitter (data/README.md)",
    ("embedded-simsiam", "view_pass_rate"): "0.724: SimSiam trains on weaker colour jitter (data/README.md)",
}


def _target_cases():
    for name in SSL:
        for key, (comparison, bound) in TARGETS.items():
            reason = KNOWN_MISSES.get((name, key))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(name, key, comparison, bound, marks=marks, id=f"{name}-{key}")


@pytest.mark.parametrize("name, key, comparison, bound", list(_target_cases()))
def test_self_supervised_models_meet_the_targets(name, key, comparison, bound):
    value = MANIFEST["models"][name]["quality"][key]
    met = value >= bound if comparison == ">=" else value <= bound
    assert met, f"{name}: {key} = {value}, target {comparison} {bound}"


def test_default_model_leaves_insertion_room():
    """Insertion from the package's default start recovers at least 0.2 of similarity on the default model
    (the other models' room is reported in the manifest, not required)."""
    assert MANIFEST["models"]["embedded-simclr"]["quality"]["insertion_room"] >= 0.2


def test_embedded_vit_is_a_token_model_that_learnt_the_classes():
    """The embedded ViT: 8 px patches (from a convolutional stem), so a 96 px view is a 12 x 12 token map like
    the ResNets' last map;
    kNN on its explained embedding (the CLS token) far above its random initialisation."""
    model = load_model("embedded-vit")
    assert model.is_vit and model.patch_size == 8
    x = torch.rand(2, 3, DEFAULT_SIZE, DEFAULT_SIZE)
    with torch.no_grad():
        assert model.features(x).shape[-2:] == (12, 12)
        torch.testing.assert_close(model.embed_features(model.features(x)), model.embed(x))
    entry = MANIFEST["models"]["embedded-vit"]
    assert entry["arch"] == "vit" and entry["objective"] == "simclr"
    assert entry["quality"]["knn_top1"] > entry["random_init_quality"]["knn_top1"] + 0.15


def test_embedded_vit_meets_the_knn_target():
    assert MANIFEST["models"]["embedded-vit"]["quality"]["knn_top1"] >= 0.6


def test_supervised_model_is_a_high_ceiling():
    assert MANIFEST["models"]["embedded-supervised"]["quality"]["linear_probe_top1"] >= 0.95


def test_a_map_that_knows_nothing_rarely_hits_the_target():
    """Pointing-game hit rates of a random map and of a centred Gaussian (stored with the data set and
    recomputed here) stay low, so a hit means something."""
    from cl_explain.data.pairings import scene_pairs
    from cl_explain.train.quality import pointing_baselines

    stored = MANIFEST["dataset"]["pointing_baselines"]
    for mode, numbers in stored.items():
        assert numbers["random_map"] <= 0.2 and numbers["centred_gaussian"] <= 0.3
        recomputed = pointing_baselines(scene_pairs(POINTING_PAIRS, "test", seed=0, mode=mode))
        assert recomputed == pytest.approx(numbers, abs=1e-4)


@pytest.fixture
def manifest_threads(request):
    """Evaluate with the thread count the manifest's numbers were computed with (TrainConfig.threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(MANIFEST["models"][request.node.callspec.params["name"]]["config"]["threads"])
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def check_scenes():
    """The first CHECK_SCENES train/test scenes, rendered from scratch (not from the cache)."""
    from cl_explain.data.scenes import load_split
    from cl_explain.train import CHECK_SCENES

    n_train, n_test = CHECK_SCENES
    return load_split("train", n=n_train, cache=False), load_split("test", n=n_test, cache=False)


@pytest.mark.parametrize("name", ["embedded-simclr", "embedded-barlow-twins", "embedded-simsiam", "embedded-vit"])
def test_recomputed_knn_matches_the_manifest(name, check_scenes, manifest_threads):
    """Recompute the quick kNN check from freshly rendered scenes and compare with the manifest."""
    from cl_explain.train import QUALITY_TOLERANCE, embed_scenes, knn_accuracy

    entry = MANIFEST["models"][name]
    model = load_model(name)
    train, test = check_scenes
    train_f, _ = embed_scenes(model, train, DEFAULT_SIZE)
    test_f, _ = embed_scenes(model, test, DEFAULT_SIZE)
    knn = knn_accuracy(train_f, train.labels, test_f, test.labels)
    assert knn == pytest.approx(entry["quality"]["knn_top1_check"], abs=QUALITY_TOLERANCE["knn_top1_check"] + 1e-4)
    assert knn > entry["random_init_quality"]["knn_top1_check"]


def test_channels_last_layout_changes_no_result():
    """SimilarityModel runs its convolutions channels-last (faster); in float64 the result equals plain NCHW."""
    model = load_model("embedded-simclr").double()
    assert model.backbone.stages["stem"].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(3, 3, DEFAULT_SIZE, DEFAULT_SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fmap = model.features(x)
        assert fmap.is_contiguous()  # callers may .view() it
        model.backbone.to(memory_format=torch.contiguous_format)
        plain = model.backbone(model.preprocess(x))
    assert not plain.is_contiguous(memory_format=torch.channels_last) or plain.shape[-1] == 1
    torch.testing.assert_close(fmap, plain, rtol=1e-10, atol=1e-12)
