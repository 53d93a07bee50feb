"""Classroom exercises: checkers that compare a student's function with the package's, and student copies.

Instructor notebooks (notebooks/exercises/) mark solution code `# BEGIN SOLUTION` ... `# END SOLUTION`
(a `NotImplementedError` stub in the student copy) and tag solution cells `solution` (left out).
`make exercises` writes the student copies (notebooks/exercises/student/), `... check` finds stale ones.
`check(name, function)` compares a student's function with the package's and hints at common mistakes.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .models.backbones import StagedBackbone
from .models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel, cosine
from .utils import cpu_generator, repo_root

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
SOLUTION_TAG = "solution"
STUB_MESSAGE = "write your solution here, then run the check cell below"
STUDENT_HEADER = (
    "**Student copy**, generated from the instructor notebook `../{name}` by `make exercises` "
    "(regenerating overwrites this file). Replace each `raise NotImplementedError(...)` with your "
    "code, then run the check cell."
)
TOLERANCE = 1e-4


# ------------------------------------------------------------------------------------- inputs


def tiny_model(seed: int = 0) -> SimilarityModel:
    """A small random CNN (two stages, 6x6 map at 24 px), a centred linear head and ImageNet normalisation.

    ImageNet normalisation makes "zero in model input space" the mean colour, not black, so a
    checker can tell the two apart.
    """
    torch.manual_seed(seed)
    stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
    layer1 = nn.Sequential(nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU())
    backbone = StagedBackbone(OrderedDict(stem=stem, layer1=layer1))
    head = nn.Linear(12, 6)
    model = SimilarityModel(backbone, head, normalize=(IMAGENET_MEAN, IMAGENET_STD), name="tiny-exercise-model")
    with torch.no_grad():  # centre the embeddings of random images so similarities spread over [-1, 1]
        pooled = model.features(torch.rand(32, 3, 24, 24)).mean(dim=(0, 2, 3))
        head.bias.copy_(-head.weight @ pooled)
    return model


def tiny_pair(seed: int = 0, side: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded random images 1x3xside x side in [0, 1]."""
    generator = cpu_generator(seed)
    return torch.rand(1, 3, side, side, generator=generator), torch.rand(1, 3, side, side, generator=generator)


# ----------------------------------------------------------------------------------- results


@dataclass
class CheckResult:
    """Outcome of one check: passed, a message for the student, and the largest difference seen."""

    exercise: str
    passed: bool
    message: str
    max_difference: float | None = None

    def __str__(self) -> str:
        status = "PASSED" if self.passed else "NOT YET"
        return f"[{self.exercise}] {status}: {self.message}"

    def _repr_markdown_(self) -> str:
        icon = "✅" if self.passed else "❌"
        return f"{icon} **{self.exercise}**: {self.message}"


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise _Mistake(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    return value.detach().float().cpu()


class _Mistake(Exception):
    """A recognised problem with the student's answer (the message is the hint)."""


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOLERANCE) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol, rtol=tol))


def _diagnose(answer: torch.Tensor, expected: torch.Tensor, mistakes: dict[str, torch.Tensor], what: str) -> str:
    """Name the first known mistake the answer matches, else describe the largest difference."""
    for hint, wrong in mistakes.items():
        if _close(answer, wrong.float().cpu()):
            return hint
    difference = (answer - expected).abs()
    where = (
        tuple(int(i) for i in torch.unravel_index(difference.argmax(), difference.shape)) if difference.dim() else ()
    )
    return (
        f"{what} differs from the package's by up to {float(difference.max()):.3g} (at index {where}); "
        "compare your steps with the formula in the exercise text"
    )


# ---------------------------------------------------------------------------------- exercises


def _occlusion_reference(model: SimilarityModel, x1, x2, window: int, stride: int, zero: torch.Tensor | None = None):
    """The package's conditional occlusion maps, or the same with another fill colour (for diagnosis)."""
    from .explainers import explain

    if zero is None:
        result = explain(model, x1, x2, "occlusion", window=window, stride=stride)
        return result.map1, result.map2
    from .explainers.occlusion import occlusion_grid, rectangle_masks

    with torch.no_grad():
        f1, f2 = model.embed(x1), model.embed(x2)
        base = cosine(f1, f2)
        maps = []
        for x, other in ((x1, f2), (x2, f1)):
            grid = occlusion_grid(x.shape[-2], x.shape[-1], window, stride)
            tops, lefts = grid.corners(0, len(grid))
            masks = rectangle_masks(tops, lefts, window, window, tuple(x.shape[-2:]))
            maps.append((base - cosine(model.embed(torch.where(masks, zero, x)), other)).view(grid.shape))
    return maps[0], maps[1]


def _check_occlusion(function: Callable) -> tuple[bool, str, float | None]:
    model = tiny_model()
    x1, x2 = tiny_pair()
    window, stride = 8, 4
    expected = torch.stack(_occlusion_reference(model, x1, x2, window, stride))
    output = function(model, x1.clone(), x2.clone(), window, stride)
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise _Mistake("return a tuple (map1, map2): one map for x1 and one for x2")
    answer = [_as_tensor(m, f"map{i}") for i, m in enumerate(output, start=1)]
    shape = tuple(expected.shape[1:])
    for i, m in enumerate(answer, start=1):
        if tuple(m.shape) != shape:
            raise _Mistake(
                f"map{i} has shape {tuple(m.shape)}, expected {shape}: one value per window position, "
                f"(H - window) // stride + 1 rows and columns ({x1.shape[-1]} px, window {window}, stride {stride})"
            )
    answer = torch.stack(answer)
    if _close(answer, expected):
        return True, "your maps match the package's conditional occlusion", float((answer - expected).abs().max())
    base = model.score(x1, x2)
    mistakes = {
        "the signs are flipped: importance is the DROP S(x1, x2) - S(occluded, other), not the reverse": -expected,
        "you return the occluded similarity; the map is the drop S(x1, x2) - S(occluded, other)": base - expected,
        "map1 and map2 are swapped: map1 belongs to x1 (occluded while x2 stays intact)": expected.flip(0),
        "the maps are transposed: window k covers rows k // cols and columns k % cols (row-major)": expected.transpose(
            -1, -2
        ),
        "the window is set to black (pixel 0); 'zero' means zero in MODEL INPUT space, i.e. "
        "model.zero_pixel (the mean colour for a normalised model)": torch.stack(
            _occlusion_reference(model, x1, x2, window, stride, torch.zeros(1, 3, 1, 1))
        ),
    }
    return False, _diagnose(answer, expected, mistakes, "your map"), float((answer - expected).abs().max())


def _check_joint_weight(function: Callable) -> tuple[bool, str, float | None]:
    from .explainers import cam

    generator = cpu_generator(1)
    f1 = torch.rand(1, 5, 4, 3, generator=generator) * 2
    f2 = torch.rand(1, 5, 4, 3, generator=generator) * 2
    worst = 0.0
    for reduction in ("mean", "max", "attn"):

        def pool(feat: torch.Tensor) -> torch.Tensor:
            return cam.channel_pool(feat, reduction)

        expected = cam.joint_channel_weight(f1, f2, reduction).flatten()
        output = _as_tensor(function(f1.clone(), f2.clone(), reduction), f"alpha for reduction={reduction!r}")
        if output.numel() != expected.numel():
            raise _Mistake(
                f"reduction={reduction!r}: alpha has {output.numel()} values (shape {tuple(output.shape)}), "
                "expected one "
                f"per channel ({expected.numel()}): pool each feature map over its h x w positions"
            )
        answer = output.flatten()
        worst = max(worst, float((answer - expected).abs().max()))
        if _close(answer, expected):
            continue
        flat1, flat2 = f1.flatten(2), f2.flatten(2)
        query = flat1.mean(dim=2)
        scaled = torch.softmax(torch.einsum("bd,bdp->bp", query, flat1) / flat1.shape[1] ** 0.5, dim=1)
        mistakes = {
            "you pooled the product F1 * F2; pool each map first, then multiply: alpha = r(F1) * r(F2)": pool(
                f1 * f2
            ).flatten(),
            "you summed over positions; global average pooling is the MEAN over the h x w positions": (
                flat1.sum(2) * flat2.sum(2)
            ).flatten(),
            "you returned r(F1) + r(F2); the joint weight is the PRODUCT r(F1) * r(F2)": (
                pool(f1) + pool(f2)
            ).flatten(),
            "you returned only r(F1); the joint weight combines both images: r(F1) * r(F2)": pool(f1).flatten(),
            "attention pooling uses the UNSCALED dot products q . F_j (no 1/sqrt(D)) in the softmax": (
                torch.einsum("bp,bdp->bd", scaled, flat1) * cam.attention_pool(f2)
            ).flatten(),
            "the attention softmax runs over the h*w positions, not over the channels": (
                torch.einsum("bdp,bd->bd", flat1, torch.softmax(query, dim=1))
                * torch.einsum("bdp,bd->bd", flat2, torch.softmax(flat2.mean(2), dim=1))
            ).flatten(),
        }
        hint = _diagnose(answer, expected, mistakes, f"alpha (reduction={reduction!r})")
        return False, f"reduction={reduction!r}: {hint}", worst
    return True, "alpha matches Interaction-CAM's joint channel weight for mean, max and attn", worst


def _check_deletion_auc(function: Callable) -> tuple[bool, str, float | None]:
    from .metrics.perturbation import perturbation_curves, simultaneous_curve

    model = tiny_model()
    x1, x2 = tiny_pair(seed=2, side=16)
    generator = cpu_generator(3)
    map1, map2 = torch.rand(16, 16, generator=generator), torch.rand(16, 16, generator=generator)
    step = 16
    curve = simultaneous_curve(model, x1, x2, map1, map2, "deletion", step=step)
    expected = torch.tensor(curve.auc)
    output = function(model, x1.clone(), x2.clone(), map1.clone(), map2.clone(), step)
    try:
        answer = torch.tensor(float(output))
    except (TypeError, ValueError):
        raise _Mistake(f"return the AUC as one number (a float), got {type(output).__name__}") from None
    difference = float((answer - expected).abs())
    if _close(answer, expected):
        return True, f"AUC {float(answer):.4f} matches the package's simultaneous deletion AUC", difference
    scores = curve.scores
    n = scores.numel() - 1
    conditional = perturbation_curves(
        model, x1, x2, map1, map2, "deletion", ("conditional_1", "conditional_2"), step=step
    )
    mistakes = {
        "you averaged the curve points; use the trapezoid rule: (sum s_i - s_0/2 - s_N/2) / N": scores.mean(),
        "you summed the points without dividing by N (the number of steps)": scores.sum()
        - (scores[0] + scores[-1]) / 2,
        "you deleted the LEAST salient pixels first; rank pixels by decreasing saliency": torch.tensor(
            simultaneous_curve(model, x1, x2, -map1, -map2, "deletion", step=step).auc
        ),
        "you perturbed one image at a time (that is the conditional metric); simultaneous deletion "
        "perturbs BOTH images at every step, each by its own map": torch.tensor(
            (conditional["conditional_1"].auc + conditional["conditional_2"].auc) / 2
        ),
        "deleted pixels were set to black; the substrate is zero in MODEL INPUT space (model.zero_pixel)": torch.tensor(
            simultaneous_curve(model, x1, x2, map1, map2, "deletion", step=step, substrate="black").auc
        ),
        f"the curve should have N + 1 = {n + 1} points (0, {step}, 2*{step}, ... pixels deleted); "
        "check that you include both the intact start and the fully deleted end": torch.tensor(
            float(torch.trapezoid(scores[:-1], dx=1.0 / (n - 1)))
        ),
    }
    return False, _diagnose(answer, expected, mistakes, "your AUC"), difference


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function the student writes, its signature, and its checker."""

    name: str
    signature: str
    checker: Callable[[Callable], tuple[bool, str, float | None]]


EXERCISES: dict[str, Exercise] = {
    e.name: e
    for e in [
        Exercise(
            "conditional_occlusion",
            "conditional_occlusion(model, x1, x2, window, stride) -> (map1, map2)",
            _check_occlusion,
        ),
        Exercise(
            "joint_channel_weight", "joint_channel_weight(f1, f2, reduction) -> alpha (D values)", _check_joint_weight
        ),
        Exercise(
            "simultaneous_deletion_auc",
            "simultaneous_deletion_auc(model, x1, x2, map1, map2, step) -> float",
            _check_deletion_auc,
        ),
    ]
}


def check(exercise: str, function: Callable) -> CheckResult:
    """Run `function` on small inputs, compare with the package, and return a result with a hint."""
    if exercise not in EXERCISES:
        raise ValueError(f"unknown exercise {exercise!r}; exercises: {', '.join(EXERCISES)}")
    if not callable(function):
        return CheckResult(exercise, False, f"pass your function itself, e.g. check({exercise!r}, {exercise})")
    try:
        passed, message, difference = EXERCISES[exercise].checker(function)
    except NotImplementedError:
        return CheckResult(
            exercise,
            False,
            "not written yet: replace the `raise NotImplementedError(...)` line "
            f"with your code ({EXERCISES[exercise].signature})",
        )
    except _Mistake as mistake:
        return CheckResult(exercise, False, str(mistake))
    except Exception as error:  # the student's code failed: say where, keep the notebook running
        return CheckResult(
            exercise,
            False,
            f"your function raised {type(error).__name__}: {error}. "
            f"Expected signature: {EXERCISES[exercise].signature}",
        )
    return CheckResult(exercise, passed, message, difference)


# ---------------------------------------------------------------------------- student copies


def exercises_dir() -> Path:
    return repo_root() / "notebooks" / "exercises"


def strip_solution(source: str) -> str:
    """Replace every BEGIN/END SOLUTION block by a NotImplementedError stub at the marker's indentation."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"nested {BEGIN!r} marker")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("{STUB_MESSAGE}")')
        elif stripped == END:
            if not inside:
                raise ValueError(f"{END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without {END!r}")
    return "\n".join(out)


def student_notebook(instructor, name: str):
    """The student version of an instructor notebook (nbformat node): solutions stripped, outputs cleared."""
    import nbformat

    nb = copy.deepcopy(instructor)
    cells = [nbformat.v4.new_markdown_cell(STUDENT_HEADER.format(name=name))]
    for cell in nb.cells:
        if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        if cell.cell_type == "code":
            cell.source = strip_solution(cell.source)
            cell.outputs, cell.execution_count = [], None
        cell.pop("id", None)
        cells.append(cell)
    nb.cells = cells
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"student-{index:02d}"
    return nb


def _pairs(source: Path, target: Path) -> list[tuple[Path, Path]]:
    notebooks = sorted(source.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no instructor notebooks in {source}")
    return [(path, target / path.name) for path in notebooks]


def _render(path: Path) -> str:
    import nbformat

    return nbformat.writes(student_notebook(nbformat.read(path, as_version=4), path.name)) + "\n"


def generate(source: str | Path | None = None, target: str | Path | None = None) -> list[Path]:
    """Write the student copy of every instructor notebook in `source` to `target`; returns the paths."""
    from .utils import write_text_atomic

    source = Path(source or exercises_dir())
    target = Path(target or source / "student")
    written = []
    for instructor, student in _pairs(source, target):
        write_text_atomic(student, _render(instructor))
        written.append(student)
    stale = sorted(set(target.glob("*.ipynb")) - set(written))
    for orphan in stale:  # a removed instructor notebook leaves no student copy behind
        orphan.unlink()
    return written


def stale_copies(source: str | Path | None = None, target: str | Path | None = None) -> list[str]:
    """Student copies that are missing or differ from what `generate` would write now (empty = current)."""
    source = Path(source or exercises_dir())
    target = Path(target or source / "student")
    problems = [
        str(student)
        for instructor, student in _pairs(source, target)
        if not student.is_file() or student.read_text() != _render(instructor)
    ]
    known = {student for _, student in _pairs(source, target)}
    problems += [f"{orphan} (no instructor version)" for orphan in sorted(set(target.glob("*.ipynb")) - known)]
    return problems


def leaked_solutions(target: str | Path | None = None) -> list[str]:
    """Student-copy cells that still contain a solution marker or a `solution` tag (empty = clean)."""
    import nbformat

    target = Path(target or exercises_dir() / "student")
    found = []
    for path in sorted(target.glob("*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []) or re.search(
                r"(BEGIN|END) SOLUTION", cell.source
            ):
                found.append(f"{path.name} cell {index}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cl_explain.exercises", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["generate", "check"], help="write the student copies, or verify them")
    args = parser.parse_args(argv)
    if args.command == "generate":
        for path in generate():
            print(f"wrote {path}")
        return 0
    problems = stale_copies() + [f"solution left in {where}" for where in leaked_solutions()]
    for problem in problems:
        print(f"stale or leaking: {problem}", file=sys.stderr)
    if problems:
        print("run `make exercises` to regenerate the student copies", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
