"""Vision Transformers as SimilarityModels: the patch tokens at a chosen block are the feature map.

A ViT turns an image into one token per patch (plus a CLS token and, in some models, register
tokens: the "prefix" tokens), adds position embeddings and runs the sequence through transformer
blocks. `ViTSimilarityModel` cuts a timm `VisionTransformer` at the input of block `block` (default:
the last block):

* `features(x)` is the patch tokens entering that block, as a B x C x h x w map on the patch grid
  (a `TokenMap`: the prefix tokens entering the same block travel beside the map as `.prefix`, not
  in it, so no method mistakes them for image positions);
* the rest of the network -- blocks `block`..end, the final LayerNorm and the pooling -- maps the
  tokens back to the embedding (`embed_features`), so dS/d(token map) is defined and every CAM,
  gradient, occlusion method and metric runs unchanged.

The cut is at a block's input, not its output: with CLS pooling, the CLS token after the last block
does not depend on the patch tokens after the last block, so a map there would have zero gradient.
The explained embedding is the CLS token after the final norm (what DINO's k-NN evaluation uses) or,
with `pool="mean"`, the mean of the normed patch tokens. Any input side that is a multiple of the
patch size works: the position embeddings are resampled bicubically to the patch grid, as timm does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .backbones import StagedBackbone
from .similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel

POOLS = ("cls", "mean")
IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)

#: Tensor methods after which the prefix still belongs to the same images (same batch, same order).
_SAME_IMAGES = frozenset(
    {
        "detach",
        "requires_grad_",
        "contiguous",
        "clone",
        "float",
        "double",
        "half",
        "bfloat16",
        "to",
        "cpu",
        "cuda",
    }
)
_BATCH_SPLITS = frozenset({"split", "chunk", "tensor_split", "split_with_sizes"})


class TokenMap(torch.Tensor):
    """Patch tokens as a B x C x h x w map, carrying the prefix tokens (B x P x C) as `.prefix`.

    It is an ordinary tensor for every computation; only operations that keep whole images --
    detach, dtype/device moves, splitting or slicing along the batch, torch.cat along the batch --
    return a TokenMap whose prefix follows its images. Anything else returns a plain tensor.
    """

    prefix: torch.Tensor

    @staticmethod
    def wrap(patches: torch.Tensor, prefix: torch.Tensor) -> "TokenMap":
        if (
            patches.dim() != 4
            or prefix.dim() != 3
            or prefix.shape[0] != patches.shape[0]
            or prefix.shape[2] != patches.shape[1]
        ):
            raise ValueError(
                f"a TokenMap needs patches B x C x h x w and prefix tokens B x P x C, got {tuple(patches.shape)} "
                f"and {tuple(prefix.shape)}"
            )
        out = patches.as_subclass(TokenMap)
        out.prefix = prefix
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
            return _follow(getattr(func, "__name__", ""), args, kwargs, result)


def _plain(value):
    if isinstance(value, TokenMap):
        return value.as_subclass(torch.Tensor)
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def _batch_key(key) -> slice | None:
    """The batch slice of an index that keeps whole images (x[a:b] or x[a:b, ...]), else None."""
    if isinstance(key, slice):
        return key
    if isinstance(key, tuple) and key and isinstance(key[0], slice):
        if all(k is Ellipsis or k == slice(None) for k in key[1:]):
            return key[0]
    return None


def _follow(name: str, args: tuple, kwargs: dict, result):
    """Give `result` the prefix of the images it holds, when an operation kept whole images."""
    source = args[0] if args else None
    if result is source:  # in place (requires_grad_, contiguous of a contiguous map, ...): nothing changes
        return result
    if isinstance(source, TokenMap) and isinstance(result, torch.Tensor) and result.dim() == 4:
        same = result.shape[0] == source.shape[0] and result.shape[1] == source.shape[1]
        if name in _SAME_IMAGES and same:
            prefix = source.prefix.detach() if name == "detach" else source.prefix
            return TokenMap.wrap(result, prefix.to(device=result.device, dtype=result.dtype))
        key = _batch_key(args[1]) if name == "__getitem__" and len(args) > 1 else None
        if key is not None and result.shape[1:] == source.shape[1:]:
            return TokenMap.wrap(result, source.prefix[key])
    if name in _BATCH_SPLITS and isinstance(source, TokenMap) and isinstance(result, (tuple, list)):
        if all(r.shape[1:] == source.shape[1:] for r in result) and sum(r.shape[0] for r in result) == source.shape[0]:
            prefixes = source.prefix.split([r.shape[0] for r in result])
            return type(result)(TokenMap.wrap(r, p) for r, p in zip(result, prefixes))
    if name == "cat" and isinstance(result, torch.Tensor) and args and isinstance(args[0], (tuple, list)):
        parts = list(args[0])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if dim == 0 and parts and all(isinstance(p, TokenMap) for p in parts):
            return TokenMap.wrap(result, torch.cat([p.prefix for p in parts]).to(result.dtype))
    return _plain(result)


def _resample_position_embedding(
    pos_embed: torch.Tensor, grid: tuple[int, int], old_grid: tuple[int, int], prefix: int
):
    from timm.layers import resample_abs_pos_embed  # timm is imported only when a ViT runs

    return resample_abs_pos_embed(pos_embed, new_size=list(grid), old_size=list(old_grid), num_prefix_tokens=prefix)


class TokenEmbedding(nn.Module):
    """Image -> token sequence (prefix tokens, then patches in row-major order) with position embeddings.

    Shares the patch embedding, CLS/register tokens and position embedding of a timm VisionTransformer
    (and computes what its forward does before the first block); position embeddings are resampled
    (bicubic, as timm does) when the patch grid differs from the one they were trained for.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = vit.reg_token
        self.pos_embed = vit.pos_embed
        self.pos_drop, self.patch_drop, self.norm_pre = vit.pos_drop, vit.patch_drop, vit.norm_pre
        self.no_embed_class = bool(vit.no_embed_class)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.trained_grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        self.patch_size = int(vit.patch_embed.patch_size[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x)  # B x h x w x C (timm's dynamic-size layout)
        batch, rows, cols, dim = patches.shape
        patches = patches.reshape(batch, rows * cols, dim)
        prefix = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        shared = 0 if self.no_embed_class else self.num_prefix_tokens
        pos = _resample_position_embedding(self.pos_embed, (rows, cols), self.trained_grid, shared)
        if self.no_embed_class:  # position embeddings for the patches only
            tokens = torch.cat([*prefix, patches + pos], dim=1)
        else:
            tokens = torch.cat([*prefix, patches], dim=1) + pos
        return self.norm_pre(self.patch_drop(self.pos_drop(tokens)))


class TokenHead(nn.Module):
    """The rest of the network: the remaining blocks, the final norm, then CLS or mean-patch pooling."""

    def __init__(self, blocks: Sequence[nn.Module], norm: nn.Module, pool: str, num_prefix_tokens: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pooled(self.norm(self.blocks(tokens)))

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        return pool_tokens(tokens, self.pool, self.num_prefix_tokens)


def pool_tokens(tokens: torch.Tensor, pool: str, num_prefix_tokens: int) -> torch.Tensor:
    """B x N x C normed tokens -> B x C: the CLS token ("cls") or the mean of the patch tokens ("mean")."""
    if pool == "cls":
        return tokens[:, 0]
    return tokens[:, num_prefix_tokens:].mean(dim=1)


def block_index(block: int, depth: int) -> int:
    """A block number in [-depth, depth) as an index in [0, depth), or a clear error."""
    if isinstance(block, bool) or not isinstance(block, int) or not -depth <= block < depth:
        raise ValueError(
            f"block must be an integer in [-{depth}, {depth - 1}] (the feature map is the patch tokens entering "
            f"that block; -1 = the last of the {depth} blocks), got {block!r}"
        )
    return block % depth


def _check_vit(vit: nn.Module, pool: str) -> None:
    """The timm VisionTransformer features this wrapper relies on, with the fix when one is missing."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS} (CLS token or mean of the patch tokens), got {pool!r}")
    needed = ("patch_embed", "blocks", "norm", "pos_embed", "cls_token", "num_prefix_tokens", "dynamic_img_size")
    missing = [name for name in needed if not hasattr(vit, name)]
    if missing:
        raise TypeError(f"expected a timm VisionTransformer, got {type(vit).__name__} without {missing}")
    if not vit.dynamic_img_size:
        raise ValueError(
            "build the timm VisionTransformer with dynamic_img_size=True so any multiple of the patch size works"
        )
    if vit.pos_embed is None or (pool == "cls" and vit.cls_token is None):
        raise ValueError("the ViT needs learned absolute position embeddings (and a class token for pool='cls')")
    if isinstance(vit.norm, nn.Identity) and not isinstance(getattr(vit, "fc_norm", nn.Identity()), nn.Identity):
        raise ValueError("the ViT normalises after pooling (fc_norm); build it with a final norm (global_pool='token')")


class ViTSimilarityModel(SimilarityModel):
    """A Vision Transformer explained through the patch tokens entering block `block` (see the module doc).

    `backbone` is a StagedBackbone ("embed", "block0", ..., up to the cut) returning the whole token
    sequence; `head` is a TokenHead. Both share their modules with the timm model passed in.
    """

    is_vit = True

    def __init__(
        self,
        vit: nn.Module,
        *,
        block: int = -1,
        pool: str = "cls",
        normalize: tuple[Sequence[float], Sequence[float]] | None = IMAGENET,
        name: str = "vit",
    ) -> None:
        _check_vit(vit, pool)
        depth = len(vit.blocks)
        cut = block_index(block, depth)
        stages = OrderedDict(embed=TokenEmbedding(vit))
        stages.update((f"block{i}", vit.blocks[i]) for i in range(cut))
        head = TokenHead(list(vit.blocks)[cut:], vit.norm, pool, int(vit.num_prefix_tokens))
        super().__init__(StagedBackbone(stages), head, normalize=normalize, name=name)
        self.block, self.pool, self.depth = cut, pool, depth

    @property
    def embedding(self) -> TokenEmbedding:
        return self.backbone.stages["embed"]

    @property
    def patch_size(self) -> int:
        return self.embedding.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return self.embedding.num_prefix_tokens

    @property
    def blocks(self) -> list[nn.Module]:
        """All transformer blocks in order (those before the cut, then those of the head)."""
        return [self.backbone.stages[f"block{i}"] for i in range(self.block)] + list(self.head.blocks)

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid (rows, cols) of images x; both sides must be multiples of the patch size."""
        height, width = x.shape[-2:]
        p = self.patch_size
        if height % p or width % p:
            fix = f"{max(p, height // p * p)} x {max(p, width // p * p)}"
            raise ValueError(
                f"{self.name!r} cuts images into {p} x {p} patches, so both sides must be multiples of {p}; "
                f"got {height} x {width} px. Resize or crop to a multiple, e.g. {fix} px"
            )
        return height // p, width // p

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The token sequence entering the first block (B x (P + h*w) x C) of images in [0, 1]."""
        self.grid(x)
        return self.embedding(self.preprocess(x))

    def features(self, x: torch.Tensor) -> TokenMap:
        """Patch tokens entering block `self.block` as a TokenMap B x C x h x w (prefix tokens beside it)."""
        rows, cols = self.grid(x)
        tokens = self.backbone(self.preprocess(x))
        prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens :]
        fmap = patches.transpose(1, 2).reshape(len(x), -1, rows, cols).contiguous()
        return TokenMap.wrap(fmap, prefix)

    def embed_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """The remaining blocks, final norm and pooling, applied to a token map from `features`."""
        prefix = getattr(fmap, "prefix", None)
        if prefix is None:
            raise ValueError(
                f"{self.name!r} needs the CLS/register tokens that travel beside the patch map: pass the map "
                "returned by model.features(x) (a TokenMap), or build one with TokenMap.wrap(patches, prefix)"
            )
        patches = fmap.as_subclass(torch.Tensor).flatten(2).transpose(1, 2)
        return self.head(torch.cat([prefix.to(patches.dtype), patches], dim=1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.grid(x)
        return self.head(self.backbone(self.preprocess(x)))

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedding of a token sequence entering the first block (any number of patch tokens >= 1)."""
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.head.pooled(self.head.norm(tokens))

    def embed_kept(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Embeddings of one image with only some patch tokens: row m keeps patches keep[m] (M x K indices).

        Tokens are dropped after the position embeddings are added, so the kept ones keep their
        positions; the prefix tokens are always kept. Dropping is exact removal: nothing attends to a
        dropped token and mean pooling averages the kept patches only.
        """
        if keep.dim() != 2 or keep.shape[1] < 1:
            raise ValueError(f"keep must be M x K patch indices with K >= 1, got shape {tuple(keep.shape)}")
        tokens = self.tokens(x)
        if tokens.shape[0] != 1:
            raise ValueError(f"embed_kept explains one image at a time, got a batch of {tokens.shape[0]}")
        prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[0, self.num_prefix_tokens :]
        kept = patches[keep.to(patches.device)]  # M x K x C
        return self.embed_tokens(torch.cat([prefix.expand(len(keep), -1, -1), kept], dim=1))

    def attentions(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every block (each B x heads x N x N, rows sum to 1) for images x."""
        tokens, maps = self.tokens(x), []
        for blk in self.blocks:
            maps.append(attention_weights(blk.attn, blk.norm1(tokens)))
            tokens = blk(tokens)
        return maps


def attention_weights(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) of a timm Attention module on its (already normed) input x: B x heads x N x N."""
    needed = ("qkv", "num_heads", "head_dim", "scale", "q_norm", "k_norm")
    if any(not hasattr(attention, name) for name in needed) or getattr(attention, "gate", None) is not None:
        raise TypeError(
            "attention weights need timm's standard Attention (qkv, q_norm, k_norm, no gate), "
            f"got {type(attention).__name__}"
        )
    batch, count, _ = x.shape
    qkv = attention.qkv(x).reshape(batch, count, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    query, key = attention.q_norm(qkv[0]), attention.k_norm(qkv[1])
    return torch.softmax((query * attention.scale) @ key.transpose(-2, -1), dim=-1)


__all__ = ["ViTSimilarityModel", "TokenMap", "TokenEmbedding", "TokenHead", "attention_weights", "block_index", "POOLS"]
