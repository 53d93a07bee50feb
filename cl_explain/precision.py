"""The precision policy: where bfloat16 may run, and which methods and metrics accept it.

Two rules decide whether `precision="bf16"` is accepted:

* Hardware: bf16 runs only where the device computes it natively (an x86 CPU with AVX512-BF16 or
  AMX, an Arm CPU with the BF16 extension, a GPU with native bf16). Elsewhere it would be emulated,
  slower than fp32 (1.6x slower than fp32 on an AVX512 Ice Lake without AVX512-BF16, measured), so it
  is refused with the reason.
* Fidelity: under bf16 only the backbone runs in bfloat16 (`SimilarityModel.bf16_backbone`); its
  feature map is cast to float32, and pooling, head, cosines, score differences and every gradient
  taken from the features stay float32. A method or metric whose result still changes its ranking
  under that (Spearman < 0.99 to the fp32 map, or an AUC moved by more than 0.01, measured by
  scripts/bf16_fidelity.py; numbers in the README) refuses bf16 with the measured reason below.
"""

from __future__ import annotations

import contextlib
import platform
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:
    from .models.similarity import SimilarityModel

from .params import PRECISIONS, check_precision_name  # noqa: F401 (PRECISIONS re-exported)

#: What runs in bf16 for the methods (by name) and metric families ("insertion", "deletion", "drop")
#: that accept it. Anything not listed here refuses bf16 (with the reason in BF16_REFUSED, if measured).
BF16_ACCEPTED: dict[str, str] = {
    "context_agnostic_occlusion": "the occluded batches' backbone; embeddings, their differences, cosines and "
    "the min-max in fp32 (min Spearman 0.9994 embedded default, 0.9991 ResNet-50; "
    "AUCs of its maps moved by at most 0.0064)",
    "pairwise_occlusion": "the erased batches' backbone; drops, softmax weights, norms and credit in fp32 "
    "(min Spearman 0.9978 embedded default, 0.9990 ResNet-50; AUCs moved by at most 0.0036)",
}

#: Why the others refuse it: the measured fidelity under the backbone-only bf16 above (scripts/bf16_fidelity.py:
#: embedded default on 10 scene pairs at 64 px, 30 for the metrics; random-weight ResNet-50 on 2 photo pairs at
#: 112 px). A method's "AUCs" are its maps' insertion/deletion AUCs, scored in fp32, bf16 map against fp32 map.
#: Methods refused in bf16 because their fidelity has not been measured yet (the ViT-only methods).
BF16_UNMEASURED: dict[str, str] = {
    "token_occlusion": "its bf16 fidelity on Vision Transformers has not been measured yet",
    "attention_rollout": "its bf16 fidelity on Vision Transformers has not been measured yet",
}

BF16_REFUSED: dict[str, str] = {
    "occlusion": "its map is a difference of two nearly equal similarities, which bf16 features move as much as "
    "a window does (min Spearman 0.983 on a random-weight ResNet-50, 0.998 on the embedded default)",
    "gradcam": "its ranking moved on a random-weight ResNet-50 at 112 px (min Spearman 0.988 on the 4 x 4 feature "
    "map; 0.999 at 224 px) and the AUCs of its maps by up to 0.013 on the embedded default; it runs "
    "one forward pass, so bf16 would save next to nothing",
    "interaction_cam": "its ranking moved on the embedded default (min Spearman 0.985 over 10 scene pairs at 96 px; "
    "it held on a random-weight ResNet-50: 0.9941 at 112 px, 0.9997 at 224 px); the joint channel weight "
    "multiplies two bf16 feature maps, so their rounding errors compound",
    "input_x_gradient": "its map is the input gradient, which flows back through the bf16 backbone "
    "(min Spearman 0.864 on a random-weight ResNet-50, 0.897 on the embedded default)",
    "smoothgrad": "its map is an average of input gradients through the bf16 backbone "
    "(min Spearman 0.890 on a random-weight ResNet-50, 0.9905 on the embedded default)",
    "averaged_transforms": "its map is an average of input gradients through the bf16 backbone "
    "(min Spearman 0.864 on a random-weight ResNet-50, 0.951 on the embedded default)",
    "pixel_invariance": "its surrogate is fitted to similarities that bf16 moves as much as the augmentations do "
    "(min Spearman 0.53 on a random-weight ResNet-50, 0.972 on the embedded default)",
    "insertion": "insertion AUCs moved by up to 0.0125 on the embedded default (limit 0.01)",
    "deletion": "deletion AUCs moved by up to 0.01004 on the embedded default (limit 0.01)",
    "drop": "average drops moved by up to 0.016 on the embedded default: a relative drop magnifies the bf16 "
    "error where S(x1, x2) is small",
}

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_measuring = False


def bf16_supported(device: torch.device | str) -> bool:
    """Whether `device` computes bfloat16 natively (AVX512-BF16/AMX or Arm BF16 CPUs, bf16 GPUs)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    if platform.machine().lower() in _X86:
        # torch.ops.mkldnn._is_mkldnn_bf16_supported() is also True on plain AVX512, where oneDNN
        # converts to float32 and back: slower than fp32, so it is not what "native" means here.
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_status(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(supported, reason): whether bf16 runs natively on `device`; the reason names what is missing."""
    device = torch.device(device)
    if bf16_supported(device):
        return True, f"native bfloat16 on this {device.type}"
    if device.type == "cuda":
        return False, "unsupported on this GPU (torch.cuda.is_bf16_supported(including_emulation=False) is False)"
    if device.type != "cpu":
        return False, f"unsupported on device type {device.type!r}"
    return False, (
        "unsupported on this CPU (no AVX512-BF16/AMX or Arm BF16: bfloat16 would be emulated, slower than "
        f"fp32; CPU capability {torch.backends.cpu.get_cpu_capability()})"
    )


def bf16_refusal(name: str | None) -> str | None:
    """Why method or metric family `name` refuses bf16, or None when it accepts it (None: no name, no rule)."""
    if name is None or name in BF16_ACCEPTED:
        return None
    return BF16_REFUSED.get(name, BF16_UNMEASURED.get(name, "no bf16 fidelity has been measured for it"))


def check_precision(precision: str, device: torch.device | str, name: str | None = None) -> None:
    """Raise unless `precision` may run for method or metric family `name` on `device` (policy, then hardware)."""
    check_precision_name(precision)
    if precision == "fp32" or _measuring:
        return
    reason = bf16_refusal(name)
    if reason is not None:
        raise ValueError(f"{name} refuses precision='bf16': {reason}. Use precision='fp32'")
    supported, reason = bf16_status(device)
    if not supported:
        raise RuntimeError(f"precision='bf16' needs native bfloat16, but bf16 is {reason}. Use precision='fp32' here")


def precision_context(
    precision: str, model: "SimilarityModel", name: str | None = None
) -> contextlib.AbstractContextManager:
    """Check `precision` for `name` on the model's device; for bf16, run the model's backbone in bfloat16."""
    check_precision(precision, model.device, name)
    return model.bf16_backbone() if precision == "bf16" else contextlib.nullcontext()


@contextlib.contextmanager
def measuring_bf16() -> Iterator[None]:
    """For fidelity measurements only (scripts/bf16_fidelity.py): inside the block bf16 also runs where
    it is emulated and for the methods and metrics the policy refuses, so their fidelity can be measured."""
    global _measuring
    previous, _measuring = _measuring, True
    try:
        yield
    finally:
        _measuring = previous
