"""The teaching notebooks: each jupytext py:percent source and its committed .ipynb agree.

Execution itself is `make nbtest` (nbmake over notebooks/*.ipynb with SDSIM_NOTEBOOK_SMALL=1);
these checks are static and fast: the pairs exist, their cells are the same, the .ipynb carry no
outputs (so nothing stale can disagree with the sources), and the README links every notebook.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
SOURCES = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_the_six_notebooks_of_the_course_exist() -> None:
    assert [p.stem[:2] for p in SOURCES] == ["01", "02", "03", "04", "05", "06"]
    assert sorted(p.stem for p in NB_DIR.glob("*.ipynb")) == [p.stem for p in SOURCES]


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_ipynb_matches_its_py_source(src: Path) -> None:
    ipynb = src.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `make notebooks`"
    from_py = jupytext.read(src)
    committed = nbformat.read(ipynb, as_version=4)
    assert _cells(committed) == _cells(from_py), (
        f"{ipynb.name} is out of sync with {src.name}: run `make notebooks`"
    )
    assert len(from_py.cells) >= 8, "a notebook is prose between code cells, not one script"
    kinds = {c.cell_type for c in from_py.cells}
    assert kinds == {"markdown", "code"}


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_committed_ipynb_has_no_outputs(src: Path) -> None:
    nb = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{src.stem}.ipynb carries outputs: run `make notebooks`"
            )


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_uses_the_small_switch_and_says_so(src: Path) -> None:
    text = src.read_text()
    assert 'os.environ.get("SDSIM_NOTEBOOK_SMALL"' in text
    assert "## Exercises" in text


def test_readme_links_every_notebook() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Notebooks" in readme
    for src in SOURCES:
        assert f"notebooks/{src.stem}.ipynb" in readme, f"README does not link {src.stem}"
