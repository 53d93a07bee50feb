"""Loaders for the checkpoints the paper explains: SimCLRv2, Barlow Twins, SimSiam, DINO and supervised ResNet-50s.

Files are supplied by the user.

Each loader rebuilds the released architecture with the parameter names of the official file,
reads the file safely (`checkpoint_io.read_checkpoint`), matches its keys strictly and wraps the
result as a SimilarityModel: preprocessing + staged backbone (stem, layer1..layer4) + pooling + the
head whose output is explained. Networks are built on the meta device and receive the file's
tensors directly, so nothing is initialised or allocated twice.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .backbones import StagedBackbone
from .checkpoint_io import CheckpointError, describe_keys, load_strict, read_checkpoint, strip_prefix
from .similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel
from .simclr_v2 import SIMCLR_EPS, SimCLRv2ResNet, WrappedHead

#: ImageNet mean/std normalisation used by every released model except SimCLRv2.
IMAGENET: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD)

StateDict = Mapping[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Shared building blocks
# ----------------------------------------------------------------------------------------------
def _mlp(
    sizes: Sequence[int],
    *,
    hidden_bias: bool = False,
    activation: Callable[[], nn.Module] = nn.ReLU,
    last_bias: bool = False,
    last_norm: nn.Module | None = None,
    eps: float = 1e-5,
) -> nn.Sequential:
    """[Linear, BatchNorm1d, activation] per hidden size, then Linear (+ `last_norm`).

    One flat Sequential, so the layer indices are those of the official state dicts.
    """
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(d_in, d_out, bias=hidden_bias), nn.BatchNorm1d(d_out, eps=eps), activation()]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=last_bias))
    if last_norm is not None:
        layers.append(last_norm)
    return nn.Sequential(*layers)


def _resnet50(fc: nn.Module | None = None) -> torchvision.models.ResNet:
    """torchvision ResNet-50 whose `fc` is replaced (Identity when the release dropped it)."""
    net = torchvision.models.resnet50()
    net.fc = fc if fc is not None else nn.Identity()
    return net


def _imagenet_model(resnet: torchvision.models.ResNet, head: nn.Module, name: str) -> SimilarityModel:
    """A loaded torchvision ResNet (cut before pooling) + explained head, on ImageNet-normalised input."""
    return SimilarityModel(StagedBackbone.from_torchvision_resnet(resnet), head, normalize=IMAGENET, name=name)


def _section(content: Mapping, key: str, path: Path, expected: str) -> Mapping:
    """content[key] as a state dict, or an error listing what the file holds instead."""
    section = content.get(key)
    if not isinstance(section, Mapping):
        raise CheckpointError(
            f"{str(path)!r} has no {key!r} entry holding a state dict (top-level keys: "
            f"{describe_keys(map(str, content))}); expected {expected}"
        )
    return section


def _check_tensor_dict(content: Mapping, path: Path, expected: str) -> None:
    """A plain state dict has tensors as values; a training checkpoint has named sections."""
    if not all(isinstance(value, torch.Tensor) for value in content.values()):
        sections = [str(key) for key, value in content.items() if not isinstance(value, torch.Tensor)]
        raise CheckpointError(
            f"{str(path)!r} is not a plain state dict: entries {describe_keys(sections)} are not tensors; "
            f"expected {expected}"
        )


# ----------------------------------------------------------------------------------------------
# SimCLRv2 (architecture in simclr_v2.py)
# ----------------------------------------------------------------------------------------------
def _simclr_v2(content: Mapping, path: Path, name: str, width: int) -> SimilarityModel:
    expected = (
        f"a SimCLRv2 R50-{width}x SK0 conversion: a dict with 'resnet' (net.0.0.weight, "
        "net.1.blocks.0.projection.shortcut.weight, ..., fc.weight) and 'head' (layers.0.weight, ..., layers.7.*)"
    )
    resnet_state = _section(content, "resnet", path, expected)
    head_state = _section(content, "head", path, expected)
    stem = resnet_state.get("net.0.0.weight")
    if isinstance(stem, torch.Tensor) and stem.dim() == 4:
        if stem.shape[-1] != 7:
            raise CheckpointError(
                f"{str(path)!r} starts with a {stem.shape[-1]}x{stem.shape[-1]} stem convolution: it is a "
                "selective-kernel (sk1) SimCLRv2 release; only the sk0 files (r50_1x_sk0, r50_2x_sk0) are supported"
            )
        file_width = stem.shape[0] // 64
        if file_width != width:
            raise CheckpointError(
                f"{str(path)!r} holds a width-{file_width}x SimCLRv2 ResNet, but {name!r} expects width {width}x; "
                f"load it as 'simclr-v2-r50-{file_width}x'"
            )
    with torch.device("meta"):
        resnet = SimCLRv2ResNet(width)
        channels = resnet.out_channels
        head = WrappedHead(
            _mlp(
                (channels, channels, channels, 128),
                last_norm=nn.BatchNorm1d(128, eps=SIMCLR_EPS),
                eps=SIMCLR_EPS,
            )
        )
    load_strict(resnet, resnet_state, path=path, expected=expected)
    load_strict(head, head_state, path=path, expected=expected)
    return SimilarityModel(resnet.staged(), head.layers, normalize=None, name=name)


# ----------------------------------------------------------------------------------------------
# torchvision ResNet-50 based releases
# ----------------------------------------------------------------------------------------------
class _BarlowTwins(nn.Module):
    """Attribute names of facebookresearch/barlowtwins' model (backbone, projector, loss BN)."""

    def __init__(self, sizes: Sequence[int] = (2048, 8192, 8192, 8192)) -> None:
        super().__init__()
        self.backbone = _resnet50()
        self.projector = _mlp(sizes)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)  # normalises the loss's cross-correlation only


def _barlow_twins(content: Mapping, path: Path, name: str) -> SimilarityModel:
    expected = (
        "the Barlow Twins full checkpoint: {'model': state dict with keys module.backbone.* "
        "(torchvision ResNet-50 without fc), module.projector.{0,1,3,4,6}.*, module.bn.*}"
    )
    state = strip_prefix(_section(content, "model", path, expected), "module.")
    with torch.device("meta"):
        model = _BarlowTwins()
    load_strict(model, state, path=path, expected=expected)
    return _imagenet_model(model.backbone, model.projector, name)


class _SimSiam(nn.Module):
    """Attribute names of facebookresearch/simsiam's model: encoder (fc = projector) and predictor."""

    def __init__(self, dim: int = 2048, predictor_dim: int = 512) -> None:
        super().__init__()
        projector = _mlp((2048, 2048, 2048, dim), last_bias=True, last_norm=nn.BatchNorm1d(dim, affine=False))
        self.encoder = _resnet50(projector)
        self.predictor = _mlp((dim, predictor_dim, dim), last_bias=True)


def _simsiam(content: Mapping, path: Path, name: str) -> SimilarityModel:
    expected = (
        "the SimSiam checkpoint checkpoint_0099.pth.tar: {'state_dict': state dict with keys "
        "module.encoder.* (torchvision ResNet-50 whose fc.0-fc.7 is the projector), module.predictor.{0,1,3}.*}"
    )
    state = strip_prefix(_section(content, "state_dict", path, expected), "module.")
    with torch.device("meta"):
        model = _SimSiam()
    load_strict(model, state, path=path, expected=expected)
    head = nn.Sequential(OrderedDict(projector=model.encoder.fc, predictor=model.predictor))
    return _imagenet_model(model.encoder, head, name)


class DinoHead(nn.Module):
    """DINO's projection head: MLP to a bottleneck, L2 normalisation, then a bias-free linear layer."""

    def __init__(
        self, in_dim: int = 2048, hidden_dim: int = 2048, bottleneck_dim: int = 256, out_dim: int = 60000
    ) -> None:
        super().__init__()
        self.mlp = _mlp(
            (in_dim, hidden_dim, hidden_dim, bottleneck_dim), hidden_bias=True, activation=nn.GELU, last_bias=True
        )
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class _Dino(nn.Module):
    def __init__(self, hidden_dim: int, bottleneck_dim: int, out_dim: int) -> None:
        super().__init__()
        self.backbone = _resnet50()
        self.head = DinoHead(2048, hidden_dim, bottleneck_dim, out_dim)


#: Names under which weight normalisation stores magnitude g and direction v (old hook, parametrization).
_WEIGHT_NORM_NAMES = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def fold_weight_norm(state: Mapping[str, torch.Tensor], layer: str) -> dict[str, torch.Tensor]:
    """Replace a weight-normalised layer's (g, v) entries by the plain weight g * v / ||v|| (rows)."""
    state = dict(state)
    for g_name, v_name in _WEIGHT_NORM_NAMES:
        g_key, v_key = f"{layer}.{g_name}", f"{layer}.{v_name}"
        if g_key in state and v_key in state:
            g, v = state.pop(g_key), state.pop(v_key)
            norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
            state[f"{layer}.weight"] = v * (g / norm)
    return state


def _dino(content: Mapping, path: Path, name: str) -> SimilarityModel:
    expected = (
        "the DINO ResNet-50 full checkpoint: {'teacher': state dict with keys module.backbone.* (torchvision "
        "ResNet-50 without fc), module.head.mlp.{0,1,3,4,6}.*, module.head.last_layer.weight_g/weight_v "
        "(or .weight)}, plus 'student', 'optimizer', 'args', ..."
    )
    state = strip_prefix(_section(content, "teacher", path, expected), "module.")
    state = fold_weight_norm(state, "head.last_layer")

    def size(key: str, dim: int, default: int) -> int:
        tensor = state.get(key)
        return int(tensor.shape[dim]) if isinstance(tensor, torch.Tensor) and tensor.dim() == 2 else default

    with torch.device("meta"):
        model = _Dino(
            hidden_dim=size("head.mlp.0.weight", 0, 2048),
            bottleneck_dim=size("head.last_layer.weight", 1, 256),
            out_dim=size("head.last_layer.weight", 0, 60000),
        )
    load_strict(model, state, path=path, expected=expected)
    return _imagenet_model(model.backbone, model.head, name)


_RESNET50_FORMAT = "a torchvision ResNet-50 state dict (conv1.weight, bn1.*, layer1.* ... layer4.*, optional fc.*)"


def _resnet50_model(
    state: Mapping,
    path: Path,
    *,
    classes: int | None,
    head: nn.Module | None,
    normalize: tuple[Sequence[float], Sequence[float]] | None,
    name: str,
    expected: str,
) -> SimilarityModel:
    """torchvision ResNet-50 (with a `classes`-way fc, or none) from a plain state dict.

    The embedding is `head`, else the fc layer, else the pooled feature.
    """
    _check_tensor_dict(state, path, expected)
    with torch.device("meta"):
        net = _resnet50(nn.Linear(2048, classes) if classes else None)
    load_strict(net, state, path=path, expected=expected)
    embedding = head if head is not None else net.fc
    return SimilarityModel(StagedBackbone.from_torchvision_resnet(net), embedding, normalize=normalize, name=name)


def resnet50_from_state_dict(
    checkpoint_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    head: nn.Module | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = IMAGENET,
    prefix: str | None = None,
    name: str = "resnet50",
    sha256: str | None = None,
) -> SimilarityModel:
    """A SimilarityModel from any torchvision ResNet-50 state dict (or a file holding one).

    `prefix` (e.g. 'module.encoder_q.') keeps only the keys starting with it and removes it. The
    explained embedding is `head(pooled layer4)`; with `head=None` it is the state dict's `fc` layer
    when it has one (e.g. ImageNet logits), else the pooled feature itself. With a `head` given,
    `fc.*` entries are ignored. `normalize` = (mean, std) of the model's input, or None.
    """
    if isinstance(checkpoint_or_state_dict, Mapping):
        state, path = dict(checkpoint_or_state_dict), Path("<state dict>")
    else:
        path = Path(checkpoint_or_state_dict)
        state = read_checkpoint(path, sha256=sha256, release=_RESNET50_FORMAT)
    if prefix is not None:
        state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{str(path)!r} has no keys starting with {prefix!r}; expected {_RESNET50_FORMAT}")
    weight = state.get("fc.weight")
    if head is not None:
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    classes = int(weight.shape[0]) if head is None and isinstance(weight, torch.Tensor) else None
    model = _resnet50_model(
        state, path, classes=classes, head=head, normalize=normalize, name=name, expected=_RESNET50_FORMAT
    )
    return model.eval()


def _supervised(content: Mapping, path: Path, name: str) -> SimilarityModel:
    expected = (
        "torchvision's ImageNet ResNet-50 weights file: a plain state dict "
        "(conv1.weight, ..., fc.weight of shape (1000, 2048), fc.bias)"
    )
    return _resnet50_model(content, path, classes=1000, head=None, normalize=IMAGENET, name=name, expected=expected)


# ----------------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperModel:
    """A released checkpoint the paper explains: how to get it and how to load it."""

    name: str
    description: str
    release: str
    build: Callable[[Mapping, Path, str], SimilarityModel]

    def load(self, checkpoint: str | os.PathLike | None, sha256: str | None = None, **options) -> SimilarityModel:
        """Read the user-supplied `checkpoint` file (verified against `sha256` if given) into an eval-mode model."""
        if options:
            raise TypeError(
                f"{self.name!r} takes no loading options, got {sorted(options)}; pass only checkpoint=, sha256= "
                "(and device= to load_model)"
            )
        content = read_checkpoint(checkpoint, sha256=sha256, release=f"the official release {self.release}")
        return self.build(content, Path(checkpoint), self.name).eval()


def _simclr_release(width: int) -> str:
    return (
        f"SimCLRv2 ResNet-50 {width}x SK0 (google-research/simclr, simclrv2/pretrained/r50_{width}x_sk0) converted to "
        f"PyTorch with the simclrv2-pytorch converter (`python convert.py r50_{width}x_sk0/model.ckpt-<step> --ema`), "
        f"file r50_{width}x_sk0_ema.pth"
    )


PAPER_MODELS: dict[str, PaperModel] = {
    entry.name: entry
    for entry in (
        PaperModel(
            "simclr-v2-r50-1x",
            "SimCLRv2 ResNet-50 1x (SK0) + 3-layer projection head, raw-pixel input (paper; needs r50_1x_sk0_ema.pth)",
            _simclr_release(1),
            partial(_simclr_v2, width=1),
        ),
        PaperModel(
            "simclr-v2-r50-2x",
            "SimCLRv2 ResNet-50 2x (SK0) + 3-layer projection head, raw-pixel input (paper; needs r50_2x_sk0_ema.pth)",
            _simclr_release(2),
            partial(_simclr_v2, width=2),
        ),
        PaperModel(
            "barlow-twins-r50",
            "Barlow Twins ResNet-50 + 8192-d projector (paper; needs the full checkpoint.pth)",
            "Barlow Twins ResNet-50 full checkpoint (facebookresearch/barlowtwins, "
            "https://dl.fbaipublicfiles.com/barlowtwins/ljng/checkpoint.pth; not the backbone-only resnet50.pth)",
            _barlow_twins,
        ),
        PaperModel(
            "simsiam-r50",
            "SimSiam ResNet-50 (100 epochs) projector + predictor (paper; needs checkpoint_0099.pth.tar)",
            "SimSiam ResNet-50 pre-trained checkpoint, 100 epochs, batch size 256 (facebookresearch/simsiam, "
            "checkpoint_0099.pth.tar)",
            _simsiam,
        ),
        PaperModel(
            "dino-r50",
            "DINO ResNet-50 teacher + projection head (paper; needs dino_resnet50_pretrain_full_checkpoint.pth)",
            "DINO ResNet-50 full checkpoint (facebookresearch/dino, dino_resnet50_pretrain_full_checkpoint.pth; "
            "not the backbone-only dino_resnet50_pretrain.pth)",
            _dino,
        ),
        PaperModel(
            "supervised-r50",
            "supervised ImageNet ResNet-50, embedding = the 1000 class logits (needs torchvision's weights file)",
            "torchvision ResNet-50 ImageNet weights (ResNet50_Weights.IMAGENET1K_V1, "
            "https://download.pytorch.org/models/resnet50-0676ba61.pth)",
            _supervised,
        ),
    )
}
