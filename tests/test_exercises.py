"""Classroom exercises: the checkers accept the instructor solutions, reject known mistakes with the
right hint, and the student copies are current, solution-free and fail the check with a helpful hint."""

from __future__ import annotations

import dataclasses

import nbformat
import pytest
import torch

from cl_explain import exercises
from cl_explain.exercises import check, exercises_dir, stale_copies, strip_solution, tiny_model
from cl_explain.models.similarity import cosine

INSTRUCTOR = sorted(exercises_dir().glob("*.ipynb"))
NAMES = {
    "01-conditional-occlusion": "conditional_occlusion",
    "02-interaction-cam-weight": "joint_channel_weight",
    "03-simultaneous-deletion": "simultaneous_deletion_auc",
}


def _function_from(path, name):
    """Execute the notebook's imports and its `exercise` cell; return the function the student writes."""
    nb = nbformat.read(path, as_version=4)
    namespace: dict = {}
    setup = next(c for c in nb.cells if c.cell_type == "code" and "import cl_explain" in c.source)
    exec("\n".join(line for line in setup.source.splitlines() if not line.startswith("%")), namespace)
    cells = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name} must have exactly one cell tagged 'exercise'"
    exec(cells[0].source, namespace)
    return namespace[name]


def test_every_exercise_has_an_instructor_notebook():
    assert {p.stem for p in INSTRUCTOR} == set(NAMES)
    assert set(NAMES.values()) == set(exercises.EXERCISES)


@pytest.mark.parametrize("path", INSTRUCTOR, ids=lambda p: p.stem)
def test_instructor_solution_passes_its_checker(path):
    result = check(NAMES[path.stem], _function_from(path, NAMES[path.stem]))
    assert result.passed, result.message


@pytest.mark.parametrize("path", INSTRUCTOR, ids=lambda p: p.stem)
def test_student_copy_fails_with_a_helpful_hint(path):
    student = exercises_dir() / "student" / path.name
    result = check(NAMES[path.stem], _function_from(student, NAMES[path.stem]))
    assert not result.passed
    assert "not written yet" in result.message and "NotImplementedError" in result.message


def test_stale_copy_is_detected(tmp_path):
    source, target = tmp_path / "src", tmp_path / "src" / "student"
    source.mkdir()
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION")]
    )
    nbformat.write(nb, source / "a.ipynb")
    assert stale_copies(source, target) == [str(target / "a.ipynb")]
    exercises.generate(source, target)
    assert stale_copies(source, target) == []
    nb.cells[0].source += "\n# changed"
    nbformat.write(nb, source / "a.ipynb")
    assert stale_copies(source, target) == [str(target / "a.ipynb")]


def test_strip_solution_keeps_indentation_and_signature():
    source = 'def f(x):\n    """doc"""\n    # BEGIN SOLUTION\n    y = x + 1\n    return y\n    # END SOLUTION\nprint(1)'
    stripped = strip_solution(source)
    assert stripped.splitlines() == [
        "def f(x):",
        '    """doc"""',
        f'    raise NotImplementedError("{exercises.STUB_MESSAGE}")',
        "print(1)",
    ]
    namespace: dict = {}
    exec(stripped.replace("print(1)", ""), namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)


@pytest.mark.parametrize(
    "source", ["# BEGIN SOLUTION\nx = 1", "x = 1\n# END SOLUTION", "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION"]
)
def test_strip_solution_rejects_unbalanced_markers(source):
    with pytest.raises(ValueError, match="SOLUTION"):
        strip_solution(source)


# ------------------------------------------------------------------ hints for common mistakes


def _occlusion(model, x1, x2, window, stride, sign=1.0, fill=None, swap=False):
    """An independent loop implementation of conditional occlusion, with switchable mistakes."""
    fill = model.zero_pixel if fill is None else fill
    with torch.no_grad():
        f1, f2 = model.embed(x1), model.embed(x2)
        base = cosine(f1, f2)
        maps = []
        for x, other in ((x1, f2), (x2, f1)):
            rows = (x.shape[-2] - window) // stride + 1
            cols = (x.shape[-1] - window) // stride + 1
            heat = torch.zeros(rows, cols)
            for i in range(rows):
                for j in range(cols):
                    occluded = x.clone()
                    occluded[..., i * stride : i * stride + window, j * stride : j * stride + window] = fill
                    heat[i, j] = base - cosine(model.embed(occluded), other)
            maps.append(sign * heat)
    return (maps[1], maps[0]) if swap else (maps[0], maps[1])


@pytest.mark.parametrize(
    "mistake, hint",
    [
        ({}, None),
        ({"sign": -1.0}, "signs are flipped"),
        ({"fill": torch.zeros(1, 3, 1, 1)}, "model.zero_pixel"),
        ({"swap": True}, "swapped"),
    ],
)
def test_occlusion_checker_recognises_mistakes(mistake, hint):
    result = check("conditional_occlusion", lambda *args: _occlusion(*args, **mistake))
    assert result.passed == (hint is None), result.message
    if hint:
        assert hint in result.message


def test_occlusion_checker_explains_wrong_shape_and_type():
    wrong_shape = check("conditional_occlusion", lambda m, a, b, w, s: (torch.zeros(3, 3), torch.zeros(3, 3)))
    assert not wrong_shape.passed and "shape" in wrong_shape.message and "stride" in wrong_shape.message
    single = check("conditional_occlusion", lambda m, a, b, w, s: torch.zeros(5, 5))
    assert not single.passed and "tuple (map1, map2)" in single.message
    crash = check("conditional_occlusion", lambda m, a, b, w, s: 1 / 0)
    assert not crash.passed and "ZeroDivisionError" in crash.message


def _pool(f, reduction):
    flat = f.flatten(2)[0]
    if reduction == "mean":
        return flat.mean(1)
    if reduction == "max":
        return flat.max(1).values
    weights = torch.softmax(flat.mean(1) @ flat, dim=0)
    return flat @ weights


@pytest.mark.parametrize(
    "function, hint",
    [
        (lambda f1, f2, r: _pool(f1, r) * _pool(f2, r), None),
        (lambda f1, f2, r: _pool(f1 * f2, r), "pool each map first"),
        (
            lambda f1, f2, r: f1.sum((2, 3))[0] * f2.sum((2, 3))[0] if r == "mean" else _pool(f1, r) * _pool(f2, r),
            "MEAN",
        ),
        (lambda f1, f2, r: _pool(f1, r) + _pool(f2, r), "PRODUCT"),
        (lambda f1, f2, r: _pool(f1, r), "only r(F1)"),
        (lambda f1, f2, r: f1.flatten(), "one per channel"),
    ],
)
def test_joint_weight_checker_recognises_mistakes(function, hint):
    result = check("joint_channel_weight", function)
    assert result.passed == (hint is None), result.message
    if hint:
        assert hint in result.message


def test_attention_scaling_mistake_is_named():
    def scaled(f1, f2, reduction):
        if reduction != "attn":
            return _pool(f1, reduction) * _pool(f2, reduction)
        flat = f1.flatten(2)[0]
        weights = torch.softmax(flat.mean(1) @ flat / flat.shape[0] ** 0.5, dim=0)
        return (flat @ weights) * _pool(f2, "attn")

    result = check("joint_channel_weight", scaled)
    assert not result.passed and "UNSCALED" in result.message


def _deletion_auc(model, x1, x2, map1, map2, step, order=1.0, fill=None, average=False):
    """Independent loop implementation of the simultaneous deletion AUC, with switchable mistakes."""
    fill = (model.zero_pixel if fill is None else fill).flatten()
    ranks = [torch.argsort(order * m.flatten(), descending=True) for m in (map1, map2)]
    scores = []
    with torch.no_grad():
        for count in range(0, x1.shape[-1] * x1.shape[-2] + 1, step):
            images = []
            for x, rank in zip((x1, x2), ranks):
                flat = x.clone().flatten(2)
                flat[0, :, rank[:count]] = fill[:, None]
                images.append(flat.view_as(x))
            scores.append(float(cosine(model.embed(images[0]), model.embed(images[1]))))
    scores = torch.tensor(scores)
    if average:
        return float(scores.mean())
    return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1))


@pytest.mark.parametrize(
    "mistake, hint",
    [
        ({}, None),
        ({"order": -1.0}, "LEAST salient"),
        ({"fill": torch.zeros(1, 3, 1, 1)}, "model.zero_pixel"),
        ({"average": True}, "trapezoid"),
    ],
)
def test_deletion_checker_recognises_mistakes(mistake, hint):
    result = check("simultaneous_deletion_auc", lambda *args: _deletion_auc(*args, **mistake))
    assert result.passed == (hint is None), result.message
    if hint:
        assert hint in result.message


def test_check_rejects_unknown_exercise_and_non_callables():
    with pytest.raises(ValueError, match="unknown exercise"):
        check("nope", lambda: None)
    assert not check("conditional_occlusion", 3).passed


def test_tiny_model_spreads_similarities_and_is_deterministic():
    a, b = tiny_model(), tiny_model()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    x = torch.rand(8, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        sims = cosine(a.embed(x[:4]), a.embed(x[4:]))
    assert float(sims.min()) < 0.8  # a discriminative model: mistakes change the answers visibly


def test_check_result_renders():
    result = dataclasses.replace(
        check("conditional_occlusion", lambda *a: (_ for _ in ()).throw(NotImplementedError()))
    )
    assert "❌" in result._repr_markdown_() and "NOT YET" in str(result)
