"""Loaders for the released DINO and DINOv2 Vision Transformers. Files are supplied by the user.

DINO (Caron et al. 2021) released backbone state dicts (`dino_deitsmall16_pretrain.pth`, ...) with
keys `cls_token`, `pos_embed` (224 px: 14 x 14 patches + CLS), `patch_embed.proj.*`, `blocks.N.*`
and `norm.*`; its full training checkpoints hold the same keys under 'teacher' as
`module.backbone.*`. DINOv2 (Oquab et al. 2023) released `dinov2_vit*14_pretrain.pth` state dicts in
the same layout plus layer scale (`blocks.N.ls1.gamma`, `ls2.gamma`), a `mask_token` (used only by
its masked-image training, dropped here) and position embeddings for 518 px (37 x 37 patches + CLS);
the `*_reg4_pretrain.pth` files add `register_tokens`, which carry no position embedding.

Each file is read safely (`checkpoint_io.read_checkpoint`), recognised from its shapes (patch size,
width, depth, layer scale), rebuilt as a timm VisionTransformer on the meta device, matched key by
key (`load_strict`) and wrapped as a `ViTSimilarityModel`. The depth is read from the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_io import CheckpointError, describe_keys, load_strict, read_checkpoint, strip_prefix
from .vit import IMAGENET, ViTSimilarityModel

_BLOCK = re.compile(r"blocks\.(\d+)\.")
_CORE = ("cls_token", "pos_embed", "patch_embed.proj.weight")
VIT_FORMAT = (
    "a DINO/DINOv2 ViT backbone state dict (cls_token, pos_embed, patch_embed.proj.*, blocks.N.norm1/attn/norm2/mlp.*, "
    "norm.*; DINOv2 also blocks.N.ls1/ls2.gamma and mask_token)"
)


@dataclass(frozen=True)
class Layout:
    """What a ViT state dict holds, read from its shapes."""

    patch: int
    width: int
    depth: int
    grid: int
    layer_scale: bool
    registers: int

    @property
    def family(self) -> str:
        return "dinov2" if self.layer_scale else "dino"

    def title(self) -> str:
        size = {384: "S", 768: "B", 1024: "L"}.get(self.width, f"width {self.width}")
        return f"{'DINOv2' if self.layer_scale else 'DINO'} ViT-{size}/{self.patch}"


def backbone_state(content: Mapping, path: Path) -> dict[str, torch.Tensor]:
    """The backbone's state dict from a released file: a plain state dict or DINO's full checkpoint."""
    if isinstance(content.get("teacher"), Mapping):  # DINO full checkpoint: {'teacher': module.backbone.*, ...}
        teacher = strip_prefix(content["teacher"], "module.")
        return {key[len("backbone.") :]: value for key, value in teacher.items() if key.startswith("backbone.")}
    sections = [str(key) for key, value in content.items() if not isinstance(value, torch.Tensor)]
    if sections:
        raise CheckpointError(
            f"{str(path)!r} is not a ViT backbone state dict: entries {describe_keys(sections)} are not tensors; "
            f"expected {VIT_FORMAT} (or DINO's full checkpoint with a 'teacher' entry)"
        )
    return dict(content)


def read_layout(state: Mapping[str, torch.Tensor], path: Path) -> Layout:
    """Patch size, width, depth, position grid, layer scale and register count, or a clear error."""
    missing = [key for key in _CORE if not isinstance(state.get(key), torch.Tensor)]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} does not match the expected format ({VIT_FORMAT}): missing keys {describe_keys(missing)} "
            f"(the file has {describe_keys(map(str, state))})"
        )
    proj, pos = state["patch_embed.proj.weight"], state["pos_embed"]
    if proj.dim() != 4 or proj.shape[1] != 3 or proj.shape[2] != proj.shape[3] or pos.dim() != 3:
        raise CheckpointError(
            f"{str(path)!r}: patch_embed.proj.weight has shape {tuple(proj.shape)} and pos_embed {tuple(pos.shape)}; "
            f"expected (width, 3, p, p) and (1, 1 + grid*grid, width): {VIT_FORMAT}"
        )
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    grid = round((pos.shape[1] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[1] or pos.shape[2] != width:
        raise CheckpointError(
            f"{str(path)!r}: pos_embed has shape {tuple(pos.shape)}; expected (1, 1 + n*n, {width}) for a square "
            f"patch grid plus the CLS token: {VIT_FORMAT}"
        )
    indices = sorted({int(m.group(1)) for key in state if (m := _BLOCK.match(key))})
    if not indices or indices != list(range(len(indices))):
        raise CheckpointError(
            f"{str(path)!r}: transformer blocks {indices[:8]} are not numbered 0..N-1 (keys blocks.N.*): {VIT_FORMAT}"
        )
    registers = state.get("register_tokens")
    return Layout(
        patch,
        width,
        len(indices),
        grid,
        "blocks.0.ls1.gamma" in state,
        int(registers.shape[1]) if isinstance(registers, torch.Tensor) and registers.dim() == 3 else 0,
    )


def to_timm_layout(state: Mapping[str, torch.Tensor], layout: Layout, path: Path) -> dict[str, torch.Tensor]:
    """Official names -> timm's: drop the training-only mask token; registers take the timm layout.

    With registers, DINOv2 adds pos_embed[0] to the CLS token and no position to the registers; timm
    stores that as a CLS token with its position added and position embeddings for the patches only.
    """
    state = dict(state)
    mask = state.pop("mask_token", None)
    if mask is not None and tuple(mask.shape) not in ((1, layout.width), (1, 1, layout.width)):
        raise CheckpointError(
            f"{str(path)!r}: mask_token has shape {tuple(mask.shape)}, expected (1, {layout.width}): {VIT_FORMAT}"
        )
    if layout.registers:
        state["reg_token"] = state.pop("register_tokens")
        state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
        state["pos_embed"] = state["pos_embed"][:, 1:]
    return state


def build_vit(state: Mapping[str, torch.Tensor], layout: Layout, path: Path, num_heads: int | None = None):
    """A timm VisionTransformer with exactly the file's tensors (built on the meta device, nothing initialised)."""
    from timm.models.vision_transformer import VisionTransformer

    heads = num_heads or max(1, layout.width // 64)
    if layout.width % heads:
        raise CheckpointError(
            f"{str(path)!r}: width {layout.width} is not divisible by num_heads={heads}; pass num_heads"
        )
    hidden = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = hidden.shape[0] / layout.width if isinstance(hidden, torch.Tensor) and hidden.dim() == 2 else 4.0
    with torch.device("meta"):
        vit = VisionTransformer(
            img_size=layout.grid * layout.patch,
            patch_size=layout.patch,
            embed_dim=layout.width,
            depth=layout.depth,
            num_heads=heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            init_values=1.0 if layout.layer_scale else None,
            class_token=True,
            reg_tokens=layout.registers,
            no_embed_class=layout.registers > 0,
            global_pool="token",
            num_classes=0,
            dynamic_img_size=True,
            weight_init="skip",
        )
    load_strict(vit, state, path=path, expected=VIT_FORMAT)
    left = [name for name, tensor in [*vit.named_parameters(), *vit.named_buffers()] if tensor.is_meta]
    if left:
        raise CheckpointError(
            f"{str(path)!r}: no values for {describe_keys(left)} after loading; expected {VIT_FORMAT}"
        )
    return vit


def vit_from_state_dict(
    checkpoint_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    block: int = -1,
    pool: str = "cls",
    name: str = "vit",
    sha256: str | None = None,
) -> ViTSimilarityModel:
    """A ViTSimilarityModel from any ViT in the DINO/DINOv2 layout (e.g. DINO ViT-S/8, DINOv2 ViT-L/14).

    Patch size, width, depth, layer scale and registers come from the file; `num_heads` defaults to
    width / 64 (true of every DINO and DINOv2 ViT). `block` and `pool` as in ViTSimilarityModel.
    """
    if isinstance(checkpoint_or_state_dict, Mapping):
        content, path = dict(checkpoint_or_state_dict), Path("<state dict>")
    else:
        path = Path(checkpoint_or_state_dict)
        content = read_checkpoint(path, sha256=sha256, release=VIT_FORMAT)
    state = backbone_state(content, path)
    layout = read_layout(state, path)
    vit = build_vit(to_timm_layout(state, layout, path), layout, path, num_heads)
    return ViTSimilarityModel(vit, block=block, pool=pool, normalize=IMAGENET, name=name).eval()


@dataclass(frozen=True)
class ViTRelease:
    """A released DINO/DINOv2 ViT: its architecture, how to get the file and how to load it."""

    name: str
    description: str
    release: str
    family: str
    patch: int
    width: int
    heads: int

    def check(self, layout: Layout, path: Path) -> None:
        """The file must hold this release's architecture; otherwise name the model that fits it."""
        if (layout.family, layout.patch, layout.width) == (self.family, self.patch, self.width):
            return
        fits = [
            r.name
            for r in VIT_MODELS.values()
            if (r.family, r.patch, r.width) == (layout.family, layout.patch, layout.width)
        ]
        advice = (
            f"load it as {fits[0]!r}"
            if fits
            else "no registered model has that architecture; load it with "
            "cl_explain.models.vit_checkpoints.vit_from_state_dict(path)"
        )
        raise CheckpointError(
            f"{str(path)!r} holds a {layout.title()} ({'with' if layout.layer_scale else 'without'} layer scale, "
            f"width {layout.width}, patch {layout.patch}), but {self.name!r} is a {self.title}: {advice}"
        )

    @property
    def title(self) -> str:
        return f"{'DINOv2' if self.family == 'dinov2' else 'DINO'} ViT-{'S' if self.width == 384 else 'B'}/{self.patch}"

    def load(self, checkpoint: str | os.PathLike | None, sha256: str | None = None, **options) -> ViTSimilarityModel:
        """Read the user-supplied file (verified against `sha256` if given) into an eval-mode ViTSimilarityModel.

        Options: `block` (the feature map is the patch tokens entering this block; default -1, the
        last) and `pool` ("cls": CLS token after the final norm, default; "mean": mean of the normed
        patch tokens).
        """
        unknown = sorted(set(options) - {"block", "pool"})
        if unknown:
            raise TypeError(f"{self.name!r} takes the loading options block= and pool=, got {unknown}")
        content = read_checkpoint(checkpoint, sha256=sha256, release=f"the official release {self.release}")
        path = Path(checkpoint)
        state = backbone_state(content, path)
        layout = read_layout(state, path)
        self.check(layout, path)
        vit = build_vit(to_timm_layout(state, layout, path), layout, path, self.heads)
        return ViTSimilarityModel(vit, normalize=IMAGENET, name=self.name, **options).eval()


_DINO_URL = "https://dl.fbaipublicfiles.com/dino"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"

VIT_MODELS: dict[str, ViTRelease] = {
    entry.name: entry
    for entry in (
        ViTRelease(
            "dino-vits16",
            "DINO ViT-S/16, embedding = CLS token after the final norm (needs dino_deitsmall16_pretrain.pth)",
            "DINO ViT-S/16 backbone weights (facebookresearch/dino, "
            f"{_DINO_URL}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth; the full checkpoint also works)",
            "dino",
            16,
            384,
            6,
        ),
        ViTRelease(
            "dino-vitb16",
            "DINO ViT-B/16, embedding = CLS token after the final norm (needs dino_vitbase16_pretrain.pth)",
            "DINO ViT-B/16 backbone weights (facebookresearch/dino, "
            f"{_DINO_URL}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth; the full checkpoint also works)",
            "dino",
            16,
            768,
            12,
        ),
        ViTRelease(
            "dinov2-vits14",
            "DINOv2 ViT-S/14, embedding = CLS token after the final norm (needs dinov2_vits14_pretrain.pth)",
            "DINOv2 ViT-S/14 backbone (facebookresearch/dinov2, "
            f"{_DINOV2_URL}/dinov2_vits14/dinov2_vits14_pretrain.pth; "
            "dinov2_vits14_reg4_pretrain.pth with registers also works)",
            "dinov2",
            14,
            384,
            6,
        ),
        ViTRelease(
            "dinov2-vitb14",
            "DINOv2 ViT-B/14, embedding = CLS token after the final norm (needs dinov2_vitb14_pretrain.pth)",
            "DINOv2 ViT-B/14 backbone (facebookresearch/dinov2, "
            f"{_DINOV2_URL}/dinov2_vitb14/dinov2_vitb14_pretrain.pth; "
            "dinov2_vitb14_reg4_pretrain.pth with registers also works)",
            "dinov2",
            14,
            768,
            12,
        ),
    )
}
