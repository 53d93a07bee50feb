"""The embedded default models (the package's offline default): small networks trained on the synthetic scenes.

Four objectives share one small ResNet (`build_backbone`): SimCLR, Barlow Twins, SimSiam and a
supervised classifier, plus snapshots taken along the SimCLR training (models of graded quality).
`embedded-vit` is a small Vision Transformer (`build_vit`: timm's VisionTransformer, 8 px patches
embedded by a convolutional stem, so a 96 px view is a 12 x 12 token grid like the ResNets' last map)
trained with SimCLR; its explained embedding is the pooled token representation after the final norm
(the checkpoint's `pool`: the CLS token, as for the DINO models, or the mean of the patch tokens), and
the projector that SimCLR trained on top of it stays in the checkpoint for training only.
The checkpoints live in data/models with a manifest (data/models/manifest.json) written by
`python -m cl_explain.train --all` (`make models`); they load by name through `load_model`.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..utils import repo_root
from .backbones import StagedBackbone
from .checkpoint_io import CheckpointError, CheckpointNotFoundError, load_strict, read_checkpoint
from .similarity import SimilarityModel

OBJECTIVES = ("simclr", "barlow-twins", "simsiam", "supervised")
#: Epochs of the SimCLR run kept as graded snapshots (epoch 0 = the random initialisation).
SIMCLR_SNAPSHOTS = (0, 2, 5, 10, 20)
CHECKPOINT_FORMAT = 1
REBUILD_HINT = "rebuild the embedded models with `make models` (python -m cl_explain.train --all)"


@dataclass(frozen=True)
class EmbeddedModel:
    """A registry entry: which objective, and which epoch (None = end of training)."""

    name: str
    objective: str
    epoch: int | None = None
    arch: str = "resnet"

    @property
    def description(self) -> str:
        if self.arch == "vit":
            return (
                "embedded small ViT (8 px patches from a convolutional stem), SimCLR, explained embedding = "
                "pooled tokens, trained on the synthetic scenes (data/models)"
            )
        what = {
            "simclr": "SimCLR (NT-Xent)",
            "barlow-twins": "Barlow Twins",
            "simsiam": "SimSiam (explained output = predictor(projector))",
            "supervised": "supervised classifier (explained output = class logits)",
        }[self.objective]
        when = (
            "fully trained"
            if self.epoch is None
            else ("random initialisation" if self.epoch == 0 else f"snapshot after {self.epoch} epoch(s)")
        )
        return f"embedded small ResNet, {what}, {when}, trained on the synthetic scenes (data/models)"


def _registry() -> dict[str, EmbeddedModel]:
    entries = [EmbeddedModel(f"embedded-{objective}", objective) for objective in OBJECTIVES]
    entries += [EmbeddedModel(f"embedded-simclr-e{epoch:02d}", "simclr", epoch) for epoch in SIMCLR_SNAPSHOTS]
    entries.append(EmbeddedModel("embedded-vit", "simclr", arch="vit"))
    return {entry.name: entry for entry in entries}


EMBEDDED_MODELS: dict[str, EmbeddedModel] = _registry()


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def build_backbone(width: int = 16) -> StagedBackbone:
    """Small ResNet: stem (3x3 conv stride 2 + max pool stride 2), then layer1..layer4 of one basic
    block each with widths w, 2w, 4w, 4w and strides 1, 2, 1, 1 (total stride 8).

    A 96 px input (the embedded scenes) gives a 12 x 12 x (4w) map at layer4.
    """
    stem = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, width, 3, 2, 1, bias=False),
            bn1=nn.BatchNorm2d(width),
            relu=nn.ReLU(inplace=True),
            maxpool=nn.MaxPool2d(3, 2, 1),
        )
    )
    return StagedBackbone(
        OrderedDict(
            stem=stem,
            layer1=BasicBlock(width, width, 1),
            layer2=BasicBlock(width, 2 * width, 2),
            layer3=BasicBlock(2 * width, 4 * width, 1),
            layer4=BasicBlock(4 * width, 4 * width, 1),
        )
    )


def feature_dim(width: int) -> int:
    """Channels of the layer4 map (= the pooled feature size)."""
    return 4 * width


ARCHS = ("resnet", "vit")


VIT_STEMS = ("patch", "conv")


def check_vit_stem(stem: str, patch: int) -> None:
    """Refuse an unknown ViT stem, or a convolutional stem on a patch that is not a power of two >= 2
    (its stride-2 convolutions halve the image until one pixel per patch is left)."""
    if stem not in VIT_STEMS:
        raise ValueError(f"stem must be one of {VIT_STEMS} (a ViT's patch embedding), got {stem!r}")
    if stem == "conv" and (patch < 2 or patch & (patch - 1)):
        raise ValueError(f"a convolutional stem needs a power-of-two patch of at least 2 px, got {patch}")


def conv_stem_embed(**kwargs) -> nn.Module:
    """timm's PatchEmbed with its single patch-sized convolution replaced by a convolutional stem (Xiao et
    al. 2021, "Early convolutions help transformers see better"): log2(patch) 4x4 convolutions of stride
    2 and padding 1, each with batch norm and ReLU, widening to the token width, then a 1x1 projection.
    The token grid is the patch grid, so everything that reads a ViT as patches (position embeddings,
    token maps, token occlusion) is unchanged. Each token's receptive field is centred on its patch (even
    kernels keep the centre at the patch's middle; 3x3 ones would put it on the patch's top-left corner)
    and reaches a little less than a patch into its neighbours."""
    from timm.layers import PatchEmbed

    embed = PatchEmbed(**kwargs)
    patch, width = embed.patch_size[0], int(kwargs["embed_dim"])  # build_vit has checked the patch
    steps = patch.bit_length() - 1
    layers, cin = [], int(kwargs.get("in_chans", 3))
    for i in range(steps):
        cout = max(width >> (steps - 1 - i), 8)
        layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        cin = cout
    layers.append(nn.Conv2d(cin, width, 1))
    embed.proj = nn.Sequential(*layers)
    return embed


def build_vit(
    width: int, depth: int, heads: int, patch: int, mlp_ratio: float, size: int, stem: str = "patch"
) -> nn.Module:
    """timm VisionTransformer with embedding width `width`, `depth` blocks of `heads` heads, `patch` px
    patches on `size` px images, a CLS token and no classifier: forward gives the normed CLS token.
    `stem`: "patch" (one patch-sized convolution, as DINO's ViTs) or "conv" (`conv_stem_embed`)."""
    from timm.models.vision_transformer import VisionTransformer

    check_vit_stem(stem, patch)
    extra = {"embed_layer": conv_stem_embed} if stem == "conv" else {}
    return VisionTransformer(
        img_size=size,
        patch_size=patch,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        num_classes=0,
        global_pool="token",
        dynamic_img_size=True,
        **extra,
    )


def build_network(config: dict) -> tuple[nn.Module, nn.Module]:
    """The (backbone, head) a training config (`TrainConfig` as a dict) describes, freshly initialised
    from torch's global generator. A ViT backbone returns its pooled CLS token, a ResNet its last map."""
    arch = config.get("arch", "resnet")
    width = int(config["width"])
    out_dim, n_classes = config.get("out_dim"), int(config.get("n_classes", 8))
    if arch == "vit":
        backbone = build_vit(
            width,
            int(config["depth"]),
            int(config["heads"]),
            int(config["patch"]),
            float(config["mlp_ratio"]),
            int(config["size"]),
            config.get("stem", "patch"),
        )
        return backbone, build_head(config["objective"], width, out_dim, n_classes, in_dim=width)
    if arch != "resnet":
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHS}")
    return build_backbone(width), build_head(config["objective"], width, out_dim, n_classes)


def _mlp(dims: list[int], last_bn: bool | str = False) -> nn.Sequential:
    """Linear (no bias) + BN + ReLU between layers; the last layer optionally with BN ('plain' = no affine)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(cin, cout, bias=False))
        if not last:
            layers += [nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(cout, affine=last_bn != "plain"))
    return nn.Sequential(*layers)


def build_head(
    objective: str, width: int = 16, out_dim: int | None = None, n_classes: int = 8, in_dim: int | None = None
) -> nn.Module:
    """The head whose output is the explained embedding, shaped like the paper's models. Its input is
    `in_dim` features (default: the ResNet's pooled width, `feature_dim(width)`).

    simclr: 2-layer projector with BN (SimCLRv2 style); barlow-twins: 3-layer projector, no final BN;
    simsiam: Sequential(projector d-D-D-D (last BN without affine), predictor D-D/4-D); supervised: linear
    classifier (logits).
    """
    d = feature_dim(width) if in_dim is None else in_dim
    if objective == "simclr":
        return _mlp([d, d, out_dim or 64], last_bn=True)
    if objective == "barlow-twins":
        hidden = out_dim or 256
        return _mlp([d, hidden, hidden, hidden])
    if objective == "simsiam":
        # The paper's shape: hidden = output width, predictor bottleneck = output / 4.
        # Without out_dim the head stays at the backbone width d.
        out = out_dim or d
        bottleneck = out // 4
        return nn.Sequential(
            OrderedDict(
                projector=_mlp([d, out, out, out], last_bn="plain"),
                predictor=nn.Sequential(
                    nn.Linear(out, bottleneck, bias=False),
                    nn.BatchNorm1d(bottleneck),
                    nn.ReLU(inplace=True),
                    nn.Linear(bottleneck, out),
                ),
            )
        )
    if objective == "supervised":
        return nn.Linear(d, n_classes)
    raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")


def models_dir() -> Path:
    """data/models of the checkout (checkpoints + manifest.json)."""
    return repo_root() / "data" / "models"


def read_manifest(folder: str | os.PathLike | None = None) -> dict:
    """The manifest of the embedded models ({} entries if it does not exist yet)."""
    path = Path(folder or models_dir()) / "manifest.json"
    if not path.is_file():
        return {"models": {}}
    return json.loads(path.read_text())


def checkpoint_payload(
    name: str,
    objective: str,
    config: dict,
    backbone: nn.Module,
    head: nn.Module,
    normalize: tuple[list[float], list[float]],
    epoch: int,
) -> dict:
    """What a checkpoint file holds: only tensors, numbers, strings and containers (weights_only safe)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "name": name,
        "objective": objective,
        "epoch": int(epoch),
        "config": dict(config),
        "normalize": {"mean": [float(v) for v in normalize[0]], "std": [float(v) for v in normalize[1]]},
        "backbone": _stored(backbone),
        "head": _stored(head),
    }


def _stored(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the state in the standard (contiguous) layout, however the module was trained."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in module.state_dict().items()}


def model_from_payload(payload: dict, path: str | os.PathLike) -> SimilarityModel:
    """Rebuild the SimilarityModel (eval mode) of a checkpoint payload, with strict key/shape checks."""
    for key in ("format", "objective", "config", "normalize", "backbone", "head"):
        if key not in payload:
            raise CheckpointError(
                f"{str(path)!r} is not an embedded-model checkpoint (no {key!r} entry); {REBUILD_HINT}"
            )
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format {payload['format']}, expected {CHECKPOINT_FORMAT}; {REBUILD_HINT}"
        )
    config = {**payload["config"], "objective": payload["objective"]}
    arch = config.get("arch", "resnet")
    backbone, head = build_network(config)
    expected = f"embedded {payload['objective']} {arch}, width {config['width']}"
    load_strict(backbone, payload["backbone"], path=path, expected=expected + " (backbone)")
    load_strict(head, payload["head"], path=path, expected=expected + " (head)")
    normalize = (payload["normalize"]["mean"], payload["normalize"]["std"])
    name = payload.get("name", "embedded")
    if arch == "vit":
        from .vit import ViTSimilarityModel

        return ViTSimilarityModel(backbone, pool=config.get("pool", "cls"), normalize=normalize, name=name).eval()
    return SimilarityModel(backbone, head, normalize=normalize, name=name).eval()


def load_embedded(
    name: str, checkpoint: str | os.PathLike | None = None, sha256: str | None = None, **options
) -> SimilarityModel:
    """Load an embedded model by name from data/models, verifying the sha256 recorded in the manifest.

    `checkpoint` overrides the file (then `sha256`, if given, is the only hash checked). A missing
    file or a hash mismatch raises CheckpointError saying how to rebuild (`make models`).
    """
    if options:
        raise TypeError(f"load_embedded got unexpected options {sorted(options)}; embedded models take none")
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; available: {', '.join(EMBEDDED_MODELS)}")
    if checkpoint is None:
        folder = models_dir()
        path = folder / f"{name}.pt"
        entry = read_manifest(folder)["models"].get(name)
        if entry is None:
            raise CheckpointNotFoundError(
                f"embedded model {name!r} has no entry in {str(folder / 'manifest.json')!r}; {REBUILD_HINT}"
            )
        expected_sha = sha256 or entry.get("sha256")
    else:
        path, expected_sha = Path(checkpoint), sha256
    fix = f"the checkpoint of embedded model {name!r} is missing, modified or out of date; {REBUILD_HINT}"
    try:
        payload = read_checkpoint(path, sha256=expected_sha, fix=fix)
    except CheckpointError as error:
        if REBUILD_HINT in str(error):
            raise
        raise CheckpointError(f"{error}; {REBUILD_HINT}") from error
    model = model_from_payload(payload, path)
    model.name = name
    return model
