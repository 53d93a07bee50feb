"""DINO and DINOv2 ViT loaders: stand-in checkpoints in the official key layouts reproduce timm's forward.

Each stand-in file is written key by key in the layout of the official release (DINO backbone state
dicts; DINOv2 `*_pretrain.pth` with layer scale, mask token and 518 px position embeddings), with
seeded random weights. The reference is timm's own model of that name, built with
`pretrained=False` and loaded through timm's own checkpoint filter; its embedding (CLS token after
the final norm) must equal the one `cl_explain.load_model` gives, to 1e-5, at 224 px and at a size
that needs the position embeddings interpolated. One test per architecture uses the real depth,
width and key set; the others use 2 blocks (the loader reads the depth from the file).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import cl_explain
from cl_explain.models.checkpoint_io import CheckpointError
from cl_explain.models.similarity import IMAGENET_MEAN, IMAGENET_STD
from cl_explain.models.vit import TokenMap, ViTSimilarityModel
from cl_explain.models.vit_checkpoints import VIT_MODELS, vit_from_state_dict

from helpers import Weights  # compact seeded weights: strided views of one pool, saved once

timm = pytest.importorskip("timm")

#: name -> (timm model name, patch, width, sizes (H, W) compared: 224 px and one needing interpolation)
ARCHS = {
    "dino-vits16": ("vit_small_patch16_224", 16, 384, [(224, 224), (160, 224)]),
    "dino-vitb16": ("vit_base_patch16_224", 16, 768, [(224, 224), (160, 224)]),
    "dinov2-vits14": ("vit_small_patch14_dinov2", 14, 384, [(224, 224), (112, 168)]),
    "dinov2-vitb14": ("vit_base_patch14_dinov2", 14, 768, [(224, 224), (112, 168)]),
}
#: Weight scale of the stand-ins (timm initialises with std 0.02): unit normals would saturate every softmax.
SCALE = 0.05
TOLERANCE = 1e-5


def official_state(name: str, depth: int, seed: int, registers: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the release's layout: DINO (224 px grid) or DINOv2 (518 px, ls1/ls2, mask token)."""
    _, patch, width, _ = ARCHS[name]
    dinov2 = name.startswith("dinov2")
    weights = Weights(seed)
    weights.pool.mul_(SCALE)
    grid = 37 if dinov2 else 14
    state = {
        "cls_token": weights.matrix((1, 1, width)),
        "pos_embed": weights.matrix((1, 1 + grid * grid, width)),
        "patch_embed.proj.weight": weights.matrix((width, 3, patch, patch)),
        "patch_embed.proj.bias": weights.around(width, 0.0, 0.1),
    }
    if dinov2:
        state["mask_token"] = torch.zeros(1, width)
    if registers:
        state["register_tokens"] = weights.matrix((1, registers, width))
    for i in range(depth):
        block = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            state[f"{block}{norm}.weight"] = weights.around(width, 1.0, 0.5)
            state[f"{block}{norm}.bias"] = weights.around(width, 0.0, 0.1)
        for layer, shape in (
            ("attn.qkv", (3 * width, width)),
            ("attn.proj", (width, width)),
            ("mlp.fc1", (4 * width, width)),
            ("mlp.fc2", (width, 4 * width)),
        ):
            state[f"{block}{layer}.weight"] = weights.matrix(shape)
            state[f"{block}{layer}.bias"] = weights.around(shape[0], 0.0, 0.1)
        if dinov2:
            state[f"{block}ls1.gamma"] = weights.around(width, 0.5, 0.4)
            state[f"{block}ls2.gamma"] = weights.around(width, 0.5, 0.4)
    state["norm.weight"] = weights.around(width, 1.0, 0.5)
    state["norm.bias"] = weights.around(width, 0.0, 0.1)
    return state


def timm_reference(name: str, state: dict, depth: int, registers: int = 0):
    """timm's model of that name at random init, then the file's weights through timm's own checkpoint filter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    model_name = ARCHS[name][0]
    if registers:
        model_name = model_name.replace("dinov2", f"reg{registers}_dinov2")
    model = timm.create_model(model_name, pretrained=False, num_classes=0, dynamic_img_size=True, depth=depth)
    dense = {key: value.contiguous() for key, value in state.items()}
    model.load_state_dict(checkpoint_filter_fn(dense, model), strict=True)
    return model.eval()


def timm_embedding(model, x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.forward_features((x - mean) / std)[:, 0]


def images(size: tuple[int, int], count: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def assert_equal_to_timm(model: ViTSimilarityModel, reference, sizes) -> list[float]:
    differences = []
    for size in sizes:
        x = images(size)
        expected = timm_embedding(reference, x)
        with torch.no_grad():
            actual, via_map = model.embed(x), model.embed_features(model.features(x))
        assert expected.abs().max() > 0.1 and torch.isfinite(expected).all()
        for got in (actual, via_map):
            difference = float((got - expected).abs().max())
            assert difference <= TOLERANCE, (size, difference)
            differences.append(difference)
    return differences


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("vit_checkpoints")


@pytest.fixture(scope="module")
def dino_small(folder):
    state = official_state("dino-vits16", depth=2, seed=1)
    path = folder / "dino_deitsmall16_pretrain.pth"
    torch.save(state, path)
    return path, state


# ----------------------------------------------------------------------------------------------
# Every architecture reproduces timm's forward, at 224 px and with interpolated position embeddings
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_two_block_stand_in_equals_timm_at_two_sizes(name, folder):
    state = official_state(name, depth=2, seed=len(name))
    path = folder / f"{name}-2-blocks.pth"
    torch.save(state, path)
    model = cl_explain.load_model(name, checkpoint=path)
    assert isinstance(model, ViTSimilarityModel) and model.is_vit and not model.training
    assert (model.depth, model.block, model.pool, model.patch_size) == (2, 1, "cls", ARCHS[name][1])
    assert_equal_to_timm(model, timm_reference(name, state, depth=2), ARCHS[name][3])
    path.unlink()


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_real_architecture_key_set_shapes_and_embedding(name, folder):
    """12 blocks at the real width: the file's keys and shapes are exactly those of the release."""
    timm_name, patch, width, _ = ARCHS[name]
    state = official_state(name, depth=12, seed=7)
    reference = timm_reference(name, state, depth=12)
    expected_keys = set(reference.state_dict()) | ({"mask_token"} if name.startswith("dinov2") else set())
    assert set(state) == expected_keys
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in reference.state_dict().items())
    assert state["pos_embed"].shape[1] == (1370 if name.startswith("dinov2") else 197)
    path = folder / f"{name}-full.pth"
    torch.save(state, path)
    assert path.stat().st_size < 40 * 2**20  # the compact weights keep even ViT-B small on disk
    model = cl_explain.load_model(name, checkpoint=path)
    assert model.depth == 12 and model.features(images((224, 224), 1)).shape == (1, width, 224 // patch, 224 // patch)
    assert_equal_to_timm(model, reference, [(224, 224)])
    path.unlink()


def test_dinov2_with_registers_keeps_them_beside_the_map(folder):
    state = official_state("dinov2-vits14", depth=2, seed=3, registers=4)
    path = folder / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(state, path)
    model = cl_explain.load_model("dinov2-vits14", checkpoint=path)
    fmap = model.features(images((112, 112), 1))
    assert isinstance(fmap, TokenMap) and fmap.shape == (1, 384, 8, 8) and fmap.prefix.shape == (1, 5, 384)
    assert_equal_to_timm(model, timm_reference("dinov2-vits14", state, depth=2, registers=4), [(224, 224), (112, 168)])


def test_dino_full_training_checkpoint_loads_its_teacher_backbone(dino_small, folder):
    path, state = dino_small
    teacher = {f"module.backbone.{k}": v for k, v in state.items()}
    teacher["module.head.last_layer.weight_g"] = torch.ones(8, 1)
    full = folder / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save({"teacher": teacher, "student": teacher, "epoch": 100}, full)
    x = images((224, 224))
    with torch.no_grad():
        torch.testing.assert_close(
            cl_explain.load_model("dino-vits16", checkpoint=full).embed(x),
            cl_explain.load_model("dino-vits16", checkpoint=path).embed(x),
            rtol=0,
            atol=0,
        )


def test_block_and_pool_options(dino_small):
    path, state = dino_small
    reference = timm_reference("dino-vits16", state, depth=2)
    x = images((224, 224))
    first = cl_explain.load_model("dino-vits16", checkpoint=path, block=0, pool="mean")
    assert first.block == 0 and list(first.backbone.stages) == ["embed"]
    with torch.no_grad():
        normed = reference.forward_features((x - first.mean) / first.std)
        torch.testing.assert_close(first.embed(x), normed[:, 1:].mean(dim=1), rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(first.embed_features(first.features(x)), first.embed(x), rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match=r"block must be an integer in \[-2, 1\]"):
        cl_explain.load_model("dino-vits16", checkpoint=path, block=2)
    with pytest.raises(ValueError, match="pool must be one of"):
        cl_explain.load_model("dino-vits16", checkpoint=path, pool="max")
    with pytest.raises(TypeError, match="block= and pool="):
        cl_explain.load_model("dino-vits16", checkpoint=path, width=2)


def test_generic_loader_reads_patch_width_and_depth_from_the_file():
    state = official_state("dino-vits16", depth=1, seed=4)
    model = vit_from_state_dict(state, name="one-block", pool="mean")
    assert (model.depth, model.name, model.pool) == (1, "one-block", "mean")
    assert model.features(images((32, 48), 1)).shape == (1, 384, 2, 3)  # non-square: rows x cols of patches
    with pytest.raises(CheckpointError, match="not divisible by num_heads=5"):
        vit_from_state_dict(state, num_heads=5)


def test_list_models_names_the_vits():
    models = cl_explain.list_models()
    for name in ARCHS:
        assert name in models and "CLS token" in models[name]


# ----------------------------------------------------------------------------------------------
# Clear errors that name the fix
# ----------------------------------------------------------------------------------------------
def test_wrong_family_or_size_names_the_model_to_use(dino_small, folder):
    path, _ = dino_small
    with pytest.raises(CheckpointError, match="DINO ViT-S/16.*load it as 'dino-vits16'") as caught:
        cl_explain.load_model("dinov2-vits14", checkpoint=path)
    assert str(path) in str(caught.value)
    base = folder / "dinov2_vitb14_pretrain.pth"
    torch.save(official_state("dinov2-vitb14", depth=1, seed=5), base)
    with pytest.raises(CheckpointError, match="DINOv2 ViT-B/14.*load it as 'dinov2-vitb14'"):
        cl_explain.load_model("dinov2-vits14", checkpoint=base)
    large = {k: v for k, v in official_state("dino-vits16", depth=1, seed=6).items()}
    large["patch_embed.proj.weight"] = torch.zeros(384, 3, 8, 8)
    eight = folder / "dino_deitsmall8_pretrain.pth"
    torch.save(large, eight)
    with pytest.raises(CheckpointError, match="no registered model.*vit_from_state_dict"):
        cl_explain.load_model("dino-vits16", checkpoint=eight)


def test_wrong_keys_and_shapes_are_listed(dino_small, folder):
    _, state = dino_small
    renamed = dict(state)
    renamed["blocks.0.attn.qkv.w"] = renamed.pop("blocks.0.attn.qkv.weight")
    path = folder / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(
        CheckpointError, match="missing keys: blocks.0.attn.qkv.weight; unexpected keys: blocks.0.attn.qkv.w"
    ):
        cl_explain.load_model("dino-vits16", checkpoint=path)
    reshaped = dict(state)
    reshaped["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 384)
    torch.save(reshaped, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches: blocks.1.mlp.fc1.weight \(file \(100, 384\)"):
        cl_explain.load_model("dino-vits16", checkpoint=path)
    odd_grid = dict(state)
    odd_grid["pos_embed"] = torch.zeros(1, 1 + 14 * 13, 384)
    torch.save(odd_grid, path)
    with pytest.raises(CheckpointError, match="square patch grid"):
        cl_explain.load_model("dino-vits16", checkpoint=path)
    resnet = folder / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 2048)}, resnet)
    with pytest.raises(CheckpointError, match="missing keys cls_token, pos_embed, patch_embed.proj.weight"):
        cl_explain.load_model("dinov2-vitb14", checkpoint=resnet)
    nested = folder / "nested.pth"
    torch.save({"model": state, "epoch": 3}, nested)
    with pytest.raises(CheckpointError, match="entries model, epoch are not tensors"):
        cl_explain.load_model("dino-vits16", checkpoint=nested)


def test_sha256_is_checked(dino_small):
    path, _ = dino_small
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert cl_explain.load_model("dino-vits16", checkpoint=path, sha256=digest).depth == 2
    with pytest.raises(CheckpointError, match=f"sha256 of .* is {digest}, expected f+: .*download it again"):
        cl_explain.load_model("dino-vits16", checkpoint=path, sha256="f" * 64)


@pytest.mark.parametrize("name", sorted(VIT_MODELS))
def test_missing_file_names_release_and_how_to_pass_it(name, tmp_path):
    absent = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError) as caught:
        cl_explain.load_model(name, checkpoint=absent)
    message = str(caught.value)
    assert str(absent) in message and VIT_MODELS[name].release in message and "checkpoint=" in message


def test_image_sides_must_be_multiples_of_the_patch(dino_small):
    path, _ = dino_small
    model = cl_explain.load_model("dino-vits16", checkpoint=path)
    with pytest.raises(ValueError, match=r"multiples of 16; got 100 x 224 px.*e.g. 96 x 224 px"):
        model.embed(images((100, 224)))
