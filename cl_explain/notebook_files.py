"""Stored notebooks in the form JupyterLab writes, so that opening one does not mark it modified.

On opening a notebook and starting its kernel, JupyterLab copies the kernel's `language_info` and
the kernel spec's `display_name` into the notebook metadata (and gives cells ids, nbformat 4.5). When
the stored file lacks any of these, the notebook shows as modified before the reader has done
anything, and saving it adds metadata churn to the diff. `lab_form` writes these fields as the
project's kernel reports them and clears outputs; `python -m cl_explain.notebook_files tidy`
(`make tidy`) rewrites the notebooks, `... check` lists the ones that differ.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Iterable

from .utils import repo_root, write_text_atomic

#: The kernel every notebook names (the Makefile installs it into the environment under this name).
KERNEL_NAME = "python3"


def lab_metadata(kernel_name: str = KERNEL_NAME) -> dict[str, Any]:
    """`kernelspec` and `language_info` as JupyterLab would write them after starting `kernel_name` here."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as error:
        raise RuntimeError(
            f"no Jupyter kernel named {kernel_name!r} in this environment; `make env` installs it"
        ) from error
    return {
        "kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": kernel_name},
        "language_info": copy.deepcopy(IPythonKernel.language_info),
    }


def lab_form(nb, metadata: dict[str, Any] | None = None):
    """A copy of notebook `nb` (nbformat node) with JupyterLab's kernel metadata, cell ids, no outputs."""
    from nbformat.v4.nbbase import random_cell_id

    nb = copy.deepcopy(nb)
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    nb.metadata.update(copy.deepcopy(metadata or lab_metadata()))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if not cell.get("id"):
            cell["id"] = random_cell_id()
    return nb


def render(path: str | Path, metadata: dict[str, Any] | None = None) -> str:
    """The text `tidy` would store for the notebook at `path` (nbformat's JSON, as Jupyter saves it)."""
    import nbformat

    return nbformat.writes(lab_form(nbformat.read(path, as_version=4), metadata)) + "\n"


def stored_notebooks(root: str | Path | None = None) -> list[Path]:
    """The notebooks kept in git: the numbered sequence and the instructor exercises (not student copies)."""
    folder = Path(root or repo_root()) / "notebooks"
    return sorted(folder.glob("[0-9][0-9]-*.ipynb")) + sorted((folder / "exercises").glob("*.ipynb"))


def untidy(paths: Iterable[str | Path] | None = None) -> list[Path]:
    """Notebooks whose stored text differs from their lab form (empty: all open unmodified)."""
    metadata = lab_metadata()
    return [Path(p) for p in (paths or stored_notebooks()) if Path(p).read_text() != render(p, metadata)]


def tidy(paths: Iterable[str | Path] | None = None) -> list[Path]:
    """Rewrite every notebook that is not in lab form; returns the rewritten paths."""
    metadata = lab_metadata()
    changed = []
    for path in paths or stored_notebooks():
        text = render(path, metadata)
        if Path(path).read_text() != text:
            write_text_atomic(path, text)
            changed.append(Path(path))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cl_explain.notebook_files", description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", choices=["tidy", "check"], help="rewrite the stored notebooks, or list those to rewrite"
    )
    args = parser.parse_args(argv)
    if args.command == "tidy":
        for path in tidy():
            print(f"rewrote {path}")
        return 0
    stale = untidy()
    for path in stale:
        print(f"not in the form JupyterLab writes: {path}", file=sys.stderr)
    if stale:
        print("run `make tidy` (then `make exercises`)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
