"""What a reader of a notebook sees: figures shown inline and saved (`show_and_save`), and notebooks stored
in the form JupyterLab writes, so that opening one does not mark it modified (`cl_explain.notebook_files`)."""

from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import nbformat
import pytest

import cl_explain.notebook as notebook
from cl_explain.notebook_files import lab_form, lab_metadata, render, stored_notebooks, tidy, untidy
from cl_explain.utils import repo_root


def _figure():
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    return fig


@pytest.fixture
def shown(monkeypatch):
    """What show_and_save displays, as if it ran in a Jupyter kernel."""
    import IPython.display

    displayed = []
    monkeypatch.setattr(notebook, "in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj: displayed.append(obj))
    return displayed


def test_show_and_save_shows_the_saved_png_and_returns_none(tmp_path, shown):
    import IPython.display

    fig = _figure()
    assert notebook.show_and_save(fig, tmp_path / "a.png") is None  # no <Figure ...> text after the image
    saved = (tmp_path / "a.png").read_bytes()
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.Image)
    assert shown[0].format == "png" and shown[0].data == saved  # shown as an image/png output: the file itself
    assert not plt.fignum_exists(fig.number), "the figure is closed (the inline backend would show it twice)"
    assert not list(tmp_path.glob("*.partial"))


def test_show_and_save_is_deterministic_and_writes_no_software_tag(tmp_path, shown):
    notebook.show_and_save(_figure(), tmp_path / "a.png")
    notebook.show_and_save(_figure(), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (
        b"Software" not in (tmp_path / "a.png").read_bytes() and b"matplotlib" not in (tmp_path / "a.png").read_bytes()
    )


def test_show_without_a_path_only_shows(tmp_path, shown, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notebook.show_and_save(_figure())
    assert len(shown) == 1 and list(tmp_path.iterdir()) == []


def test_outside_a_kernel_nothing_is_shown(tmp_path, monkeypatch):
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj: pytest.fail("displayed outside a kernel"))
    assert not notebook.in_kernel()
    notebook.show_and_save(_figure(), tmp_path / "a.pdf")
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")


def test_a_failed_save_still_closes_the_figure(tmp_path):
    fig = _figure()
    (tmp_path / "taken").write_text("a file where a folder is needed")
    with pytest.raises(OSError):
        notebook.show_and_save(fig, tmp_path / "taken" / "a.png")
    assert not plt.fignum_exists(fig.number)


def test_lab_form_adds_kernel_metadata_and_ids_and_drops_outputs():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1"), nbformat.v4.new_markdown_cell("# x")])
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nb.cells[0].execution_count = 1
    del nb.cells[1]["id"]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "old", "language": "python"}}
    formed = lab_form(nb)
    metadata = lab_metadata()
    assert (
        formed.metadata.kernelspec == metadata["kernelspec"]
        and formed.metadata.language_info == metadata["language_info"]
    )
    assert metadata["language_info"]["name"] == "python" and metadata["language_info"]["version"]
    assert formed.cells[0].outputs == [] and formed.cells[0].execution_count is None
    assert formed.cells[1].id and formed.cells[0].id == nb.cells[0].id
    assert nb.cells[0].outputs, "the input is not changed"
    nbformat.validate(formed)
    assert lab_form(formed) == formed


def test_tidy_rewrites_only_what_differs(tmp_path):
    source = stored_notebooks()[0]
    clean, messy = tmp_path / "clean.ipynb", tmp_path / "messy.ipynb"
    clean.write_text(source.read_text())
    nb = nbformat.read(source, as_version=4)
    nb.metadata["language_info"] = {"name": "python"}  # what the notebooks held before: JupyterLab filled in the rest
    nbformat.write(copy.deepcopy(nb), messy)
    assert untidy([clean, messy]) == [messy]
    assert tidy([clean, messy]) == [messy] and untidy([clean, messy]) == []
    assert messy.read_text() == render(messy) == clean.read_text()


def test_every_stored_notebook_is_in_lab_form():
    student = sorted((repo_root() / "notebooks" / "exercises" / "student").glob("*.ipynb"))
    stale = untidy(stored_notebooks() + student)
    assert stale == [], (
        f"JupyterLab would mark {[p.name for p in stale]} modified on opening: run `make tidy exercises`"
    )


@pytest.mark.slow
def test_a_real_kernel_gets_an_image_output_even_with_the_agg_backend(tmp_path, monkeypatch):
    """MPLBACKEND=Agg stops the inline backend from sending figures; show_and_save sends the PNG itself."""
    from nbclient import NotebookClient

    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import matplotlib.pyplot as plt\n"
                "from cl_explain.notebook import show_and_save\n"
                "fig, ax = plt.subplots()\n"
                "ax.plot([0, 1])\n"
                f"show_and_save(fig, {str(tmp_path / 'f.png')!r})"
            )
        ]
    )
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data"], outputs
    assert "image/png" in outputs[0].data and (tmp_path / "f.png").is_file()
