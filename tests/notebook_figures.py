"""A matplotlib backend for executing the notebooks in tests: draws nothing, checks every figure.

`make nbtest` and `make nbfull` run the notebooks with ``MPLBACKEND=module://tests.notebook_figures``.
Each ``plt.show()`` then checks every open figure and closes it; a figure that breaks a rule fails
the cell that showed it, naming the figure, the panel and what is missing:

* every panel has an x and a y label (a panel sharing an axis with a labelled neighbour is
  exempt for that axis);
* every line, marker set, bar set, error-bar set and scatter drawn on a panel has a label, and
  the panel's legend lists it (reference lines included: a dashed analytic curve, a target, a
  saturation rate).

Units and integer ticks need a reader's judgement and are reviewed by eye; these two rules are
what a reader cannot do without.
"""

from __future__ import annotations

__all__ = ["FigureCanvas", "figure_problems", "show"]

from typing import Any

from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.container import Container
from matplotlib.figure import Figure

FigureCanvas = FigureCanvasAgg


def _shared_label(ax: Axes, which: str) -> bool:
    """Whether a panel sharing this panel's x (or y) axis carries the label."""
    group = ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()
    for other in group.get_siblings(ax):
        if other is not ax and (other.get_xlabel() if which == "x" else other.get_ylabel()):
            return True
    return False


def _drawn(ax: Axes) -> list[tuple[str, Any]]:
    """What a legend should list: (label, artist) for containers (bars, error bars) and for the
    lines and scatters that belong to none."""
    items: list[tuple[str, Any]] = []
    inside: set[int] = set()
    for c in ax.containers:
        label = str(c.get_label())
        if label.startswith("_") and len(c) and hasattr(c[0], "get_label"):
            label = str(c[0].get_label())  # `hist` labels its first bar, not the container
        items.append((label, c))
        for child in c.get_children() if isinstance(c, Container) else []:
            inside.add(id(child))
            if isinstance(child, tuple | list):
                inside.update(id(x) for x in child)
    for line in ax.get_lines():
        if id(line) not in inside and line.get_visible() and len(line.get_xdata()) > 0:
            items.append((str(line.get_label()), line))
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and id(coll) not in inside:
            items.append((str(coll.get_label()), coll))
    return items


def figure_problems(fig: Figure, name: str = "figure") -> list[str]:
    """What the figure lacks, one line per problem (empty when it is fully labelled)."""
    problems: list[str] = []
    panels = [a for a in fig.axes if a.get_visible() and a.get_label() != "<colorbar>"]
    for i, ax in enumerate(panels):
        where = f"{name}, panel {i + 1}" + (f" ({ax.get_title()!r})" if ax.get_title() else "")
        if not ax.get_xlabel() and not _shared_label(ax, "x"):
            problems.append(f"{where}: no x-axis label")
        if not ax.get_ylabel() and not _shared_label(ax, "y"):
            problems.append(f"{where}: no y-axis label")
        legend = ax.get_legend()
        listed = {t.get_text() for t in legend.get_texts()} if legend is not None else set()
        for label, artist in _drawn(ax):
            kind = type(artist).__name__
            if not label or label.startswith("_"):
                problems.append(f"{where}: a {kind} without a label (it cannot be in the legend)")
            elif label not in listed:
                problems.append(f"{where}: {label!r} is not in the legend")
    return problems


def show(*args: Any, **kwargs: Any) -> None:
    """Check every open figure, close them all, and fail on the first unlabelled one."""
    problems: list[str] = []
    for num in plt.get_fignums():
        fig = plt.figure(num)
        title = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
        problems += figure_problems(fig, f"figure {num}" + (f" ({title!r})" if title else ""))
    plt.close("all")
    if problems:
        raise AssertionError("unlabelled figure:\n  " + "\n  ".join(problems))
