"""Every registered method and metric on Vision Transformers, and the ViT-native methods checked by hand.

* Contract: on small ViTs in the DINO layout (CLS pooling) and the DINOv2 layout with registers
  (mean pooling, cut at block 0), every method gives finite maps of the expected size and every
  metric finite values, with no state left behind.
* Patch-only toy: a ViT whose similarity depends on one patch only (every other token is exactly
  zero) puts every method's evidence on that patch.
* Token occlusion equals timm's blocks run on the shortened sequence; attention weights reproduce
  timm's attention output; rollout equals the matrix product written out.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cl_explain import evaluate_pair, explain, list_methods, list_metrics
from cl_explain.explainers.base import get_method
from cl_explain.explainers.rollout import rollout
from cl_explain.metrics.sanity import cascade_blocks, randomization_test
from cl_explain.models.similarity import SimilarityModel
from cl_explain.models.vit import TokenMap, ViTSimilarityModel, attention_weights
from cl_explain.models.vit_checkpoints import vit_from_state_dict

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from helpers import tiny_vit_state  # noqa: E402

SIDE = 112
METHODS = sorted(list_methods())
FAST = {
    "smoothgrad": {"samples": 4},
    "averaged_transforms": {"step": 0.25},
    "pixel_invariance": {"samples": 32, "epochs": 20},
    "pairwise_occlusion": {"erasures": 16},
    "occlusion": {"stride": 16},
    "context_agnostic_occlusion": {"stride": 16},
}


MODELS = {
    "dino-cls": lambda: vit_from_state_dict(tiny_vit_state(64, 2, 16, 14, 0, False), name="tiny-dino"),
    "dinov2-registers-mean-block0": lambda: vit_from_state_dict(
        tiny_vit_state(64, 2, 14, 37, 1, True), block=0, pool="mean", name="tiny-dinov2"
    ),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request) -> ViTSimilarityModel:
    return MODELS[request.param]()


def pair(seed: int = 0, side: int = SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(1, 3, side, side, generator=g)
    return x1, (0.7 * x1 + 0.3 * torch.rand(1, 3, side, side, generator=g)).clamp(0, 1)


def all_hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())


# ----------------------------------------------------------------------------------------------
# Contract: every method and every metric runs on a ViT
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_metric_runs_on_a_vit(model, method):
    x1, x2 = pair()
    mask = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    mask[20:70, 30:90] = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = all_hooks(model)
    spec = get_method(method)
    explanation = explain(model, x1, x2, method, **FAST.get(method, {}))
    grid = model.grid(x1)
    for m in explanation.maps:
        assert torch.isfinite(m).all() and float(m.max() - m.min()) > 0, "a constant map explains nothing"
        assert m.shape[0] <= SIDE and (m.shape in ((SIDE, SIDE), grid) or m.dim() == 2)
    if method in ("gradcam", "interaction_cam", "attention_rollout"):
        assert explanation.map1.shape == grid  # CAMs and rollout live on the patch grid
    single = not spec.needs_pair and spec.partner is None  # explains x1 alone (rollout, pixel invariance)
    assert (explanation.map2 is None) == single
    values = evaluate_pair(
        model,
        x1,
        x2,
        explanation,
        metrics=list(list_metrics()),
        masks=(mask, mask),
        step=SIDE * SIDE // 8,
        n_draws=2,
        on_not_applicable="skip",
    )
    expected = set(list_metrics())
    if not spec.sensitivity:
        expected.discard("max_sensitivity")
    if not spec.needs_pair and explanation.partner is None:  # scored as explaining x1 alone (harness rule):
        # only the conditional metrics of direction 1 and grounding apply
        expected -= {
            "insertion_simultaneous",
            "deletion_simultaneous",
            "average_drop_simultaneous",
            "average_increase_simultaneous",
        }
    assert expected <= set(values)
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    assert 0 <= values["energy_pointing_game"] <= 1
    # no state leaks: weights, mode, hooks, gradients
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training and all_hooks(model) == hooks
    assert all(p.grad is None for p in model.parameters())


def test_interaction_cam_reductions_and_gradcam_weightings(model):
    x1, x2 = pair(1)
    maps = []
    for params in ({"reduction": "mean"}, {"reduction": "max"}, {"reduction": "attn"}, {"grad_interaction": True}):
        maps.append(explain(model, x1, x2, "interaction_cam", **params).map1)
    maps.append(explain(model, x1, x2, "gradcam", weighting="channel").map1)
    assert all(m.shape == model.grid(x1) and torch.isfinite(m).all() for m in maps)
    assert not torch.allclose(maps[0], maps[1]) and not torch.allclose(maps[0], maps[2])


def test_randomisation_cascade_walks_head_then_blocks_then_embedding(model):
    names = [name for name, _ in cascade_blocks(model)]
    assert names == ["head", *[f"block{i}" for i in reversed(range(model.block))], "embed"]
    x1, x2 = pair(2)
    frame = randomization_test(model, x1, x2, "gradcam")
    assert frame[frame.step == 0].spearman.min() > 0.999 and len(frame) == 2 * (len(names) + 1)


# ----------------------------------------------------------------------------------------------
# The token map: prefix tokens travel beside the patches
# ----------------------------------------------------------------------------------------------
def test_token_map_keeps_prefix_with_its_images(model):
    x = torch.cat(pair(3))
    fmap = model.features(x)
    assert isinstance(fmap, TokenMap) and fmap.prefix.shape[:2] == (2, model.num_prefix_tokens)
    first, second = fmap.detach().split(1)
    assert isinstance(first, TokenMap) and torch.equal(second.prefix, fmap.prefix[1:])
    assert torch.equal(fmap[1:].prefix, fmap.prefix[1:]) and torch.equal(
        torch.cat([second, first]).prefix[0], fmap.prefix[1]
    )
    assert fmap.float().prefix.dtype == torch.float32 and fmap.double().prefix.dtype == torch.float64
    for plain in (fmap * 2, fmap.sum(dim=1), fmap[:, :3], fmap.mean(dim=(2, 3))):
        assert type(plain) is torch.Tensor  # arithmetic gives ordinary tensors
    with torch.no_grad():
        torch.testing.assert_close(model.embed_features(second), model.embed(x[1:]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="model.features\\(x\\).*TokenMap.wrap"):
        model.embed_features(fmap.as_subclass(torch.Tensor))


# ----------------------------------------------------------------------------------------------
# ViT-native methods against independent computations
# ----------------------------------------------------------------------------------------------
def timm_tokens_forward(model: ViTSimilarityModel, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled embedding from the modules directly, using timm's own _pos_embed and the kept patch tokens."""
    embed = model.embedding
    with torch.no_grad():
        tokens = embed.patch_embed(model.preprocess(x))
        vit_like = type("V", (), {})()  # the attributes timm's _pos_embed reads
        for name in (
            "cls_token",
            "reg_token",
            "pos_embed",
            "pos_drop",
            "patch_embed",
            "no_embed_class",
            "num_prefix_tokens",
        ):
            setattr(vit_like, name, getattr(embed, name))
        vit_like.dynamic_img_size = True
        tokens = VisionTransformer._pos_embed(vit_like, tokens)
        prefix = embed.num_prefix_tokens
        if keep is not None:
            tokens = torch.cat([tokens[:, :prefix], tokens[:, prefix:][:, keep]], dim=1)
        for blk in model.blocks:
            tokens = blk(tokens)
        tokens = model.head.norm(tokens)
        return tokens[:, 0] if model.pool == "cls" else tokens[:, prefix:].mean(dim=1)


def test_token_dropping_equals_running_the_shortened_sequence(model):
    x, _ = pair(4)
    rows, cols = model.grid(x)
    keep = torch.tensor([[0, 5, 9, 20], [1, 2, 3, rows * cols - 1]])
    with torch.no_grad():
        dropped = model.embed_kept(x, keep)
        everything = model.embed_kept(x, torch.arange(rows * cols)[None])
    torch.testing.assert_close(everything[0], model.embed(x)[0], rtol=0, atol=1e-5)
    for i in range(2):
        torch.testing.assert_close(dropped[i], timm_tokens_forward(model, x, keep[i])[0], rtol=0, atol=1e-5)
    result = explain(model, x, pair(5)[0], "token_occlusion", window=2, stride=3)
    assert result.map1.shape == ((rows - 2) // 3 + 1, (cols - 2) // 3 + 1)
    with pytest.raises(ValueError, match="larger than the 7 x 7 patch grid|larger than the 8 x 8 patch grid"):
        explain(model, x, x, "token_occlusion", window=9)


def test_attention_weights_reproduce_timm_attention(model):
    x, _ = pair(6)
    tokens = model.tokens(x)
    blk = model.blocks[0]
    with torch.no_grad():
        normed = blk.norm1(tokens)
        weights = attention_weights(blk.attn, normed)
        qkv = blk.attn.qkv(normed).reshape(1, tokens.shape[1], 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        mixed = (weights @ qkv[2]).transpose(1, 2).reshape(tokens.shape)
        torch.testing.assert_close(blk.attn.proj(blk.attn.norm(mixed)), blk.attn(normed), rtol=0, atol=1e-5)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:-1]))


def test_rollout_is_the_product_of_residual_attention():
    g = torch.Generator().manual_seed(0)
    attentions = [torch.softmax(torch.randn(1, 3, 5, 5, generator=g), dim=-1) for _ in range(3)]
    eye = torch.eye(5, dtype=torch.float64)
    a = [(att.double().mean(dim=1)[0] + eye) / 2 for att in attentions]
    torch.testing.assert_close(rollout(attentions)[0], a[2] @ a[1] @ a[0])
    top = (attentions[0].double().amax(dim=1)[0] + eye) / 2
    torch.testing.assert_close(rollout(attentions[:1], "max")[0], top / top.sum(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(attentions, "median")


def test_rollout_reads_the_pooled_token(model):
    x, _ = pair(7)
    flow = rollout(model.attentions(x))[0]
    prefix = model.num_prefix_tokens
    readout = flow[0, prefix:] if model.pool == "cls" else flow[prefix:, prefix:].mean(dim=0)
    result = explain(model, x, None, "attention_rollout")
    assert result.map2 is None and result.map1.shape == model.grid(x)
    torch.testing.assert_close(result.map1.flatten(), readout.float())


def test_vit_only_methods_refuse_other_models_with_the_fix():
    cnn = SimilarityModel(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), name="cnn")
    x = torch.rand(1, 3, 16, 16)
    for method in ("token_occlusion", "attention_rollout"):
        assert get_method(method).vit_only and not get_method(method).applies_to(cnn)
        with pytest.raises(
            ValueError, match=f"{method}.*needs a Vision Transformer.*'cnn'.*load_model\\('dino-vits16'"
        ):
            explain(cnn, x, x, method)
    assert not any(get_method(m).vit_only for m in METHODS if m not in ("token_occlusion", "attention_rollout"))


# ----------------------------------------------------------------------------------------------
# Patch-only toy: the similarity depends on one patch; every method lights that patch
# ----------------------------------------------------------------------------------------------
TOY_SIDE, TOY_PATCH, TOY_WIDTH = 64, 16, 8
CELL = (1, 2)  # the patch (row, col) on the 4 x 4 grid
ROWS, COLS = (
    slice(CELL[0] * TOY_PATCH, (CELL[0] + 1) * TOY_PATCH),
    slice(CELL[1] * TOY_PATCH, (CELL[1] + 1) * TOY_PATCH),
)


class PatchGate(nn.Module):
    """Keeps the pixels of one patch (shifted to [1, 2], so the patch is always 'present'); zeroes the rest."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, TOY_SIDE, TOY_SIDE)
        mask[..., ROWS, COLS] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask * (x + 1)


@torch.no_grad()
def patch_only_vit() -> ViTSimilarityModel:
    """Tokens outside the patch are exactly zero (gated pixels, no bias, no position embedding) and stay zero
    through block 0 (a per-token MLP); in block 1 the CLS attends to the patch alone (a 'present' channel
    read by the keys), and the patch's colours reach the CLS through the values. Features: tokens entering block 0."""
    g = torch.Generator().manual_seed(0)
    d = TOY_WIDTH
    with torch.random.fork_rng(devices=[]):  # timm initialises from the global generator: fix it, leave it as it was
        torch.manual_seed(0)
        vit = VisionTransformer(
            img_size=TOY_SIDE,
            patch_size=TOY_PATCH,
            embed_dim=d,
            depth=2,
            num_heads=1,
            mlp_ratio=2.0,
            num_classes=0,
            dynamic_img_size=True,
            global_pool="token",
        )
    conv = nn.Conv2d(3, d, TOY_PATCH, stride=TOY_PATCH, bias=False)
    w = torch.zeros(d, 3, TOY_PATCH, TOY_PATCH)
    area = TOY_PATCH * TOY_PATCH
    w[0] = 1.0 / area  # 'present': 3 x mean of (pixel + 1)
    for c in range(3):  # colour against brightness
        w[1 + c, c] = 4.0 / area
        w[1 + c] -= 2.0 / area
    w[4:] = torch.randn(d - 4, 3, TOY_PATCH, TOY_PATCH, generator=g) * 0.1
    conv.weight.copy_(w)
    vit.patch_embed.proj = nn.Sequential(PatchGate(), conv)
    vit.pos_embed.zero_()
    vit.cls_token.copy_(-0.1 * torch.eye(d)[1].view(1, 1, d))
    for blk in vit.blocks:
        for bias in (
            blk.norm1.bias,
            blk.norm2.bias,
            blk.attn.qkv.bias,
            blk.attn.proj.bias,
            blk.mlp.fc1.bias,
            blk.mlp.fc2.bias,
        ):
            bias.zero_()
    first, last = vit.blocks
    first.attn.proj.weight.zero_()
    first.mlp.fc2.weight.mul_(0.3)
    first.mlp.fc2.weight[0] = 0
    last.attn.qkv.weight[: 2 * d] = 0
    last.attn.qkv.weight[0, 1] = -20.0  # the CLS query reads its own channel 1
    last.attn.qkv.weight[d, 0] = 20.0  # keys read 'present': only the patch has it
    last.attn.qkv.weight[2 * d :] = 3 * torch.randn(d, d, generator=g)
    last.attn.proj.weight.copy_(torch.randn(d, d, generator=g))
    last.mlp.fc2.weight.zero_()
    vit.norm.bias.zero_()
    return ViTSimilarityModel(vit.eval(), block=0, normalize=None, name="patch-only-vit")


def toy_pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    blocks = [nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(TOY_SIDE,) * 2) for _ in range(2)]
    return tuple(0.8 * b + 0.2 * torch.rand(1, 3, TOY_SIDE, TOY_SIDE, generator=g) for b in blocks)


TOY_VARIANTS = [(name, {}) for name in METHODS] + [
    ("gradcam", {"weighting": "channel"}),
    ("interaction_cam", {"reduction": "max"}),
    ("interaction_cam", {"reduction": "attn"}),
    ("interaction_cam", {"grad_interaction": True}),
    ("token_occlusion", {"variant": "context_agnostic"}),
]
TOY_PARAMS = {
    "occlusion": {"window": 16, "stride": 16},
    "context_agnostic_occlusion": {"window": 16, "stride": 16},
    "token_occlusion": {"window": 1},
    "smoothgrad": {"samples": 8},
    "pairwise_occlusion": {"erasures": 200},
    "pixel_invariance": {"samples": 256, "epochs": 100, "surrogate_side": 16},
}
#: Surrogate and random-erasure methods: evidence concentrated on the patch, not exclusive to it.
STATISTICAL = ("pairwise_occlusion", "pixel_invariance")


def test_toy_similarity_depends_on_the_patch_only():
    model = patch_only_vit()
    x1, x2 = toy_pair()
    elsewhere = x1.clone()
    elsewhere[..., :16, :] = torch.rand(1, 3, 16, TOY_SIDE)
    assert model.score(elsewhere, x2) == model.score(x1, x2) and model.score(x1, x2) < 0.999
    with torch.no_grad():
        attention = model.attentions(x1)[1][0, 0, 0]
    assert float(attention[1 + CELL[0] * 4 + CELL[1]]) > 0.999  # the CLS attends to the patch alone


@pytest.mark.parametrize("method,params", TOY_VARIANTS, ids=[f"{m}-{p}" if p else m for m, p in TOY_VARIANTS])
def test_patch_only_vit_lights_the_patch(method, params):
    model = patch_only_vit()
    x1, x2 = toy_pair()
    result = explain(model, x1, x2, method, **{**TOY_PARAMS.get(method, {}), **params})
    lit = 0
    for m in result.maps:
        inside = torch.zeros(m.shape, dtype=torch.bool)
        if m.shape == (4, 4):  # patch grid (CAMs, rollout, token occlusion, 16 px occlusion windows)
            inside[CELL] = True
        else:
            assert m.shape == (TOY_SIDE, TOY_SIDE)
            inside[ROWS, COLS] = True
        if method in STATISTICAL:
            assert m[inside].mean() > 1.2 * m[~inside].abs().mean()
            lit += 1
            continue
        outside = m[~inside]
        scale = float(m.abs().max())
        assert float((outside - outside[0]).abs().max()) <= 1e-6 * max(scale, 1e-30), "the map varies off the patch"
        if float((m[inside] - outside[0]).abs().min()) > 1e-6 * scale:
            lit += 1
        else:  # only a ReLU (Grad-CAM's channel weighting) may clamp a whole map to zero
            assert (method, params) == ("gradcam", {"weighting": "channel"}) and scale == 0
    assert lit >= (1 if (method, params) == ("gradcam", {"weighting": "channel"}) else len(result.maps))
