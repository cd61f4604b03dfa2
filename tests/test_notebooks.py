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


def test_the_seven_notebooks_of_the_course_exist() -> None:
    assert [p.stem[:2] for p in SOURCES] == ["01", "02", "03", "04", "05", "06", "07"]
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


# --------------------------------------------------------------------------- figure rules


def _fig(**kw: bool):  # a two-panel figure, fully labelled unless told otherwise
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots(1, 2, sharey=True)
    ax[0].plot([1, 2], [3, 4], label="model")
    ax[0].axhline(3.5, ls="--", label=None if kw.get("unlabelled_ref") else "target")
    ax[0].errorbar([1, 2], [3, 4], yerr=[0.1, 0.1], label="simulated (95% CI)")
    ax[1].hist([1, 2, 2, 3], label="runs")
    if kw.get("scatter"):
        ax[1].scatter([1], [2])
    for a in ax:
        a.set_xlabel("arrival rate (req/s)")
        a.legend()
    if not kw.get("no_ylabel"):
        ax[0].set_ylabel("e2e p99 (s)")  # the right panel shares it
    if kw.get("not_in_legend"):
        ax[1].plot([1, 2], [1, 1], label="late line")
    return fig


def test_figure_rules_pass_a_labelled_figure() -> None:
    from tests.notebook_figures import figure_problems

    assert figure_problems(_fig()) == []


@pytest.mark.parametrize(
    ("kw", "problem"),
    [
        ({"unlabelled_ref": True}, "panel 1: a Line2D without a label"),
        ({"no_ylabel": True}, "panel 1: no y-axis label"),
        ({"scatter": True}, "panel 2: a PathCollection without a label"),
        ({"not_in_legend": True}, "panel 2: 'late line' is not in the legend"),
    ],
)
def test_figure_rules_name_what_is_missing(kw: dict[str, bool], problem: str) -> None:
    from tests.notebook_figures import figure_problems

    problems = figure_problems(_fig(**kw))
    assert any(problem in p for p in problems), problems


def test_notebook_runs_check_their_figures() -> None:
    make = (ROOT / "Makefile").read_text()
    assert "MPLBACKEND=module://tests.notebook_figures" in make
    assert "nbfull:" in make  # the full-size run, documented in the README
    assert "make nbfull" in (ROOT / "README.md").read_text()


def test_notebooks_extra_covers_what_the_notebooks_import() -> None:
    # `pip install -e .[notebooks]` then opening a notebook must work: every package a notebook
    # imports is a core dependency or in the extra, with Jupyter to open them and nbconvert to run
    # them headless (checked by hand in a fresh venv; see the README's Notebooks section)
    import ast
    import re
    import sys
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[\[<>=~! ;]", r, maxsplit=1)[0].lower().replace("_", "-")
                for r in reqs}

    extra = names(project["optional-dependencies"]["notebooks"])
    allowed = names(project["dependencies"]) | extra
    assert {"jupyterlab", "nbconvert", "ipykernel"} <= extra
    assert "pyarrow" in extra  # notebook 05 runs a sweep, which writes parquet
    dists = packages_distributions()
    for src in SOURCES:
        for node in ast.walk(ast.parse(src.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            for mod in mods:
                top = mod.split(".")[0]
                if top in sys.stdlib_module_names or top == "sdsim":
                    continue
                dist = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                assert dist & allowed, f"{src.name} imports {top}: not in the notebooks extra"
