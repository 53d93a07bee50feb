"""Notebook contracts (layer 4) and the papermill smoke run with the ci profile (layer 3).

Contracts: the twelve stems exist; the classroom student copies are current and solution-free; every figure goes
through show_and_save (shown inline and saved); each notebook has exactly one `parameters` cell whose every line is a
typed, commented literal papermill can parse; kernelspec python3; no stored outputs; the setup cell
uses the inline backend and no notebook reads the environment; every key of params/<profile>/<stem>.yaml
is a parameter of its notebook with a value of the annotated type, and figure_dir follows the profile.
The smoke run executes every notebook with params/ci and checks that its figures and tables exist and that
every saved figure was also shown as an image/png output.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import shutil

import nbformat
import papermill
import pytest
import yaml

from cl_explain import list_models
from cl_explain.utils import repo_root

ROOT = repo_root()
NOTEBOOK_DIR = ROOT / "notebooks"
STEMS = [
    "00-quickstart",
    "01-explain-perturbation",
    "02-explain-gradients",
    "03-explain-pixel-invariance",
    "04-compare-cams",
    "05-evaluate-metrics",
    "06-correlate-accuracy",
    "07-compare-supervised",
    "08-visualize-features",
    "09-explore-pairs",
    "10-embedded-data",
    "11-evaluate-on-a-cluster",
]
PROFILES = {"ci": "../build/ci/figures/{stem}", "full": "../figures/{stem}"}
#: What each notebook must write into its figure_dir (any profile).
EXPECTED = {
    "00-quickstart": ["methods.png", "pair.png", "timings.csv", "timings.md"],
    "01-explain-perturbation": [
        "perturbation_methods.png",
        "occlusion_windows.png",
        "perturbation_scores.csv",
        "perturbation_scores.md",
    ],
    "02-explain-gradients": [
        "gradient_methods.png",
        "averaged_transforms_families.png",
        "gradient_scores.csv",
        "gradient_scores.md",
    ],
    "03-explain-pixel-invariance": [
        "pixel_invariance.png",
        "pixel_invariance_scores.csv",
        "pixel_invariance_scores.md",
    ],
    "04-compare-cams": ["cams.png", "cam_scores.csv", "cam_scores.md"],
    "05-evaluate-metrics": [
        "metric_table.csv",
        "metric_table.md",
        "metric_means.csv",
        "metric_means.md",
        "metric_ranks.png",
        "curves.png",
        "paper_orderings.csv",
        "paper_orderings.md",
        "paper_comparisons.csv",
        "paper_comparisons.md",
        "published_comparison.csv",
        "published_comparison.md",
        "rank_agreement.csv",
        "rank_agreement.md",
        "published.png",
    ],
    "06-correlate-accuracy": [
        "correlation.csv",
        "correlation.md",
        "per_model_means.csv",
        "per_model_means.md",
        "metric_vs_accuracy.png",
    ],
    "07-compare-supervised": [
        "feature_inversion.png",
        "inversion_errors.csv",
        "inversion_errors.md",
        "supervised_vs_ssl.csv",
        "supervised_vs_ssl.md",
    ],
    "08-visualize-features": ["feature_visualisation.png", "visualisation_scores.csv", "visualisation_scores.md"],
    "09-explore-pairs": ["explorer_default.png", "strength_sweep.png", "strength_sweep.csv", "strength_sweep.md"],
    "10-embedded-data": [
        "scenes.png",
        "pair_modes.png",
        "diagnostics.csv",
        "diagnostics.md",
        "pointing_baselines.csv",
        "pointing_baselines.md",
    ]
    + [f"swap_embedded-{m}.png" for m in ("simclr", "barlow-twins", "simsiam", "supervised")],
    "11-evaluate-on-a-cluster": ["timings.csv", "timings.md"],
}
TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict}


def _read(stem: str):
    return nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)


def _parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected exactly one cell tagged 'parameters', found {len(cells)}"
    return cells[0]


def test_the_sequence_is_complete():
    found = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb"))
    assert found == STEMS


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_is_stored_clean_with_python3_kernel(stem):
    nb = _read(stem)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "store notebooks without outputs"


@pytest.mark.parametrize("stem", STEMS)
def test_parameters_cell_is_typed_commented_literals(stem):
    cell = _parameters_cell(_read(stem))
    lines = [line for line in cell.source.splitlines() if line.strip()]
    for statement, line in zip(ast.parse(cell.source).body, lines, strict=True):
        assert isinstance(statement, ast.AnnAssign), f"not an annotated assignment: {line!r}"
        ast.literal_eval(statement.value)  # literals only: derived values belong in a later cell
        assert "  # " in line and line.split("  # ", 1)[1].strip(), f"no comment on {line!r}"
    inspected = papermill.inspect_notebook(NOTEBOOK_DIR / f"{stem}.ipynb")
    assert len(inspected) == len(lines), "papermill could not parse every parameter line (no '=' in comments)"
    assert all(p["help"] and p["inferred_type_name"] != "None" for p in inspected.values())
    # Defaults write under build/ so that nbval (make test) never overwrites the committed figures.
    assert inspected["figure_dir"]["default"] == f'"../build/figures/{stem}"'


@pytest.mark.parametrize("stem", STEMS)
def test_setup_is_inline_and_environment_free(stem):
    nb = _read(stem)
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any(s.startswith("%matplotlib inline") for s in sources)
    everything = "\n".join(sources)
    assert "MPLBACKEND" not in everything and "os.environ" not in everything and "getenv" not in everything
    assert "assert " in everything, "assert cells are the notebook's tests under nbval"
    assert "findings(" in sources[-1], "the last cell renders what this run found from computed numbers"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("stem", STEMS)
def test_params_files_name_only_parameters(profile, stem):
    path = ROOT / "params" / profile / f"{stem}.yaml"
    assert path.is_file(), f"missing {path.relative_to(ROOT)}"
    values = yaml.safe_load(path.read_text())
    inspected = papermill.inspect_notebook(NOTEBOOK_DIR / f"{stem}.ipynb")
    unknown = sorted(set(values) - set(inspected))
    assert not unknown, f"{path.name}: {unknown} are not parameters of {stem} (papermill would only warn)"
    for key, value in values.items():
        expected = TYPES[inspected[key]["inferred_type_name"]]
        assert isinstance(value, expected), (
            f"{path.name}: {key}={value!r} is not {inspected[key]['inferred_type_name']}"
        )
    assert values["figure_dir"] == PROFILES[profile].format(stem=stem)
    # Model names are strings nothing else checks before a long run reaches them.
    named = [
        v for key, value in values.items() if "model" in key for v in ([value] if isinstance(value, str) else value)
    ]
    unknown_models = sorted(set(named) - set(list_models()))
    assert not unknown_models, f"{path.name}: {unknown_models} are not models (cl_explain.list_models())"


@pytest.mark.parametrize("stem", STEMS)
def test_every_figure_is_shown_and_saved_by_one_helper(stem):
    """A figure that is only saved never reaches the reader: each one goes through show_and_save."""
    code = "\n".join(c.source for c in _read(stem).cells if c.cell_type == "code")
    assert "save_figure" not in code and "savefig" not in code and "plt.show" not in code
    tree = ast.parse("\n".join(line for line in code.splitlines() if not line.startswith("%")))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "show_and_save"
    ]
    written = {n.value for call in calls for n in ast.walk(call) if isinstance(n, ast.Constant)}
    # f-string names (one figure per model, say) count as patterns: their formatted parts match anything
    patterns = {
        "".join(part.value if isinstance(part, ast.Constant) else "*" for part in n.values)
        for call in calls
        for n in ast.walk(call)
        if isinstance(n, ast.JoinedStr)
    }
    for name in (n for n in EXPECTED[stem] if n.endswith(".png")):
        assert name in written or any(fnmatch.fnmatch(name, p) for p in patterns), (
            f"{name} is not written by show_and_save"
        )


def test_exercise_figures_are_shown_by_the_same_helper():
    for path in sorted((NOTEBOOK_DIR / "exercises").rglob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "save_figure" not in code and "plt.show" not in code, path.name
        if "viz." in code:
            assert "show_and_save(viz." in code, f"{path.name} makes a figure without show_and_save"


def test_student_copies_are_current_and_solution_free():
    from cl_explain.exercises import exercises_dir, leaked_solutions, stale_copies

    assert stale_copies() == [], "run `make exercises` to regenerate the student copies"
    assert leaked_solutions() == []
    for path in (exercises_dir() / "student").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.outputs for c in nb.cells if c.cell_type == "code")
        assert "assert result.passed" not in nbformat.writes(nb)  # the instructor's solution-tagged cells


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_ci_profile_run_writes_every_figure(stem, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))  # for the kernel
    monkeypatch.delenv("MPLBACKEND", raising=False)
    parameters = yaml.safe_load((ROOT / "params" / "ci" / f"{stem}.yaml").read_text())
    out = (NOTEBOOK_DIR / parameters["figure_dir"]).resolve()
    shutil.rmtree(out, ignore_errors=True)  # a stale file must not pass for a fresh one
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / f"{stem}.ipynb"),
        str(tmp_path / f"{stem}.ipynb"),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOK_DIR),
        progress_bar=False,
        execution_timeout=600,
    )
    missing = [name for name in EXPECTED[stem] if not (out / name).is_file()]
    assert not missing, f"{stem} did not write {missing} into {out}"
    assert not list(out.glob("*.partial")), "a .partial file was left behind"
    executed = nbformat.read(tmp_path / f"{stem}.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= len(list(out.glob("*.png"))), (
        f"{stem}: {images} figures shown inline for {len(list(out.glob('*.png')))} saved"
    )
    assert not any("<Figure size" in str(o.get("data", {}).get("text/plain", "")) for o in outputs), (
        "a Figure repr was printed"
    )


@pytest.mark.parametrize("stem", STEMS)
def test_analysis_notebooks_define_no_functions_or_classes(stem):
    """Logic lives in the package (with unit tests); a notebook only calls it."""
    for cell in _read(stem).cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.startswith("%")))
        defined = [node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, f"{stem} defines {defined}: move them into cl_explain with a unit test"
