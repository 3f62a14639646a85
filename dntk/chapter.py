"""What the book's chapters share when they show results: one figure style and gluing into the page.

The chapters (``notebooks/*.py``) draw with matplotlib and insert figures and numbers into their
prose with myst-nb's ``glue`` (so nothing on a page is typed by hand). :func:`use_book_style` sizes
fonts for a figure shown at page width (at most two panels per row, about 7 inches wide, every
label at 10 pt or more once scaled to the page); :func:`glue_figure` stores a figure for a
``{glue:figure}`` directive and closes it, so it is shown once, with its caption, where the text
places it; :func:`glue_number` and :func:`glue_math` do the same for numbers in the prose
(``{glue:text}`name:.3f``` and ``{glue:md}`name:myst```).
"""
from __future__ import annotations

__all__ = ["use_book_style", "glue_figure", "glue_number", "glue_math", "PAGE_WIDTH_IN"]

#: Width in inches of a full-width figure: at the book's text width (about 690 px) a 10 pt label on a
#: 7-inch figure is shown at about 10 pt.
PAGE_WIDTH_IN = 7.0


def use_book_style() -> None:
    """Set matplotlib's defaults for the book: 7-inch wide figures, 10–11 pt text, constrained layout."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.figsize": (PAGE_WIDTH_IN, 3.2),
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "figure.constrained_layout.use": True,
        "font.size": 11,
        "axes.titlesize": 11,
        "axes.labelsize": 11,
        "xtick.labelsize": 10,
        "ytick.labelsize": 10,
        "legend.fontsize": 10,
        "legend.framealpha": 0.85,
    })


def glue_figure(name: str, fig) -> None:
    """Store ``fig`` under ``name`` for a ``{glue:figure}`` directive and close it (no inline copy).

    Parameters
    ----------
    name : str
        The glue key; the chapter's markdown shows it with ``{glue:figure} name`` plus ``:name:``
        (the figure's label), ``:alt:`` and a caption.
    fig : matplotlib.figure.Figure
        The finished figure.
    """
    import matplotlib.pyplot as plt
    from myst_nb import glue

    if not isinstance(name, str) or not name:
        raise ValueError(f"glue_figure needs a non-empty string name, got {name!r}")
    glue(name, fig, display=False)
    plt.close(fig)


def glue_number(name: str, value) -> None:
    """Store a number for ``{glue:text}`name:fmt```; ``value`` must be a finite real number."""
    import math

    from myst_nb import glue

    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"glue_number({name!r}): the value {value!r} is not finite; fix the computation "
                         "instead of printing it")
    glue(name, value if isinstance(value, int) else v, display=False)


def glue_math(name: str, value: float, digits: int = 1) -> None:
    """Store ``value`` as inline maths in powers-of-ten notation (``6.0\\times10^{12}``) for
    ``{glue:md}`name:myst```."""
    import math

    from IPython.display import Markdown
    from myst_nb import glue

    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"glue_math({name!r}): the value {value!r} is not finite")
    if v == 0:
        text = "0"
    else:
        e = int(math.floor(math.log10(abs(v))))
        m = v / 10**e
        if round(m, digits) >= 10:
            m, e = m / 10, e + 1
        text = f"{m:.{digits}f}\\times10^{{{e}}}" if e not in (0, 1, 2) else f"{v:.{digits}f}"
    glue(name, Markdown(f"${text}$"), display=False)
