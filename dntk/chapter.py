"""What the book's chapters share: their common setup, one figure style, and gluing into the page.

:func:`projected_setup` builds the setup most chapters start from — the trained teacher, a seeded
training subset and the test split, their projected class gradients and the network's logits — and
returns it as one frozen :class:`ProjectedSetup`, so chapters differ only in the parameters they pass.

The chapters (``notebooks/*.py``) draw with matplotlib and insert figures and numbers into their
prose with myst-nb's ``glue`` (so nothing on a page is typed by hand). :func:`use_book_style` sizes
fonts for a figure shown at page width (at most two panels per row, about 7 inches wide, every
label at 10 pt or more once scaled to the page); :func:`glue_figure` stores a figure for a
``{glue:figure}`` directive and closes it, so it is shown once, with its caption, where the text
places it; :func:`glue_number` and :func:`glue_math` do the same for numbers in the prose
(``{glue:text}`name:.3f``` and ``{glue:md}`name:myst```).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ProjectedSetup", "projected_setup", "use_book_style", "glue_figure", "glue_number", "glue_math",
           "glue_power", "repo_root", "PAGE_WIDTH_IN"]

#: Width in inches of a full-width figure: at the book's text width (about 690 px) a 10 pt label on a
#: 7-inch figure is shown at about 10 pt.
PAGE_WIDTH_IN = 7.0


def repo_root():
    """The project folder, where ``params/`` and ``notebooks/`` live.

    The package's parent in a source checkout (``pip install -e .``); otherwise the nearest of the
    current directory and its parents that holds ``params/`` and ``dntk/`` (a chapter executed from
    ``notebooks/`` or from the book's build folder); otherwise the current directory.

    Returns
    -------
    pathlib.Path
    """
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent
    if (here / "notebooks").is_dir() and (here / "params").is_dir():
        return here
    for p in [Path.cwd(), *Path.cwd().parents]:
        if (p / "params").is_dir() and (p / "dntk").is_dir():
            return p
    return Path.cwd()


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
    """Store a number for ``{glue:text}`name:fmt```; ``value`` must be a finite real number.

    Integers (Python, NumPy or one-element integer tensors) stay integers, so ``:d`` formats work.
    """
    import math
    import numbers

    from myst_nb import glue

    if hasattr(value, "item"):  # numpy scalars and one-element tensors
        value = value.item()
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"glue_number({name!r}): the value {value!r} is not finite; fix the computation "
                         "instead of printing it")
    glue(name, int(value) if isinstance(value, numbers.Integral) else v, display=False)


def _power_of_ten(name: str, value: float, digits: int) -> tuple[str, int | None]:
    """``(mantissa, exponent)`` of a finite ``value`` rounded to `digits` decimals; exponent ``None`` when
    the number is written plainly (``|value|`` from 1 to 999, or 0)."""
    import math

    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"glue of {name!r}: the value {value!r} is not finite; fix the computation")
    if v == 0:
        return "0", None
    e = int(math.floor(math.log10(abs(v))))
    m = v / 10**e
    if round(m, digits) >= 10:
        m, e = m / 10, e + 1
    return (f"{v:.{digits}f}", None) if e in (0, 1, 2) else (f"{m:.{digits}f}", e)


def glue_math(name: str, value: float, digits: int = 1) -> None:
    """Store ``value`` as inline maths in powers-of-ten notation (``6.0\\times10^{12}``) for
    ``{glue:md}`name:myst``` on the same page."""
    from IPython.display import Markdown
    from myst_nb import glue

    m, e = _power_of_ten(name, value, digits)
    glue(name, Markdown(f"${m}\\times10^{{{e}}}$" if e is not None else f"${m}$"), display=False)


def glue_power(name: str, value: float, digits: int = 1) -> None:
    """Store ``value`` as plain text in powers-of-ten notation with Unicode superscripts (``6.0×10¹²``) for
    ``{glue:text}`name:s```, which, unlike maths, other pages can also quote (``{glue:text}`path::name:s```)."""
    from myst_nb import glue

    m, e = _power_of_ten(name, value, digits)
    sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    glue(name, m if e is None else f"{m}×10{str(e).translate(sup)}", display=False)


@dataclass(frozen=True)
class ProjectedSetup:
    """A trained network with the projected class gradients of a training subset and a test set.

    Attributes
    ----------
    model : nn.Module
        The trained network, in eval mode.
    projector : object
        The JL projector (appendix §4.2) that maps every gradient to ``k`` dimensions.
    X_train, y_train : Tensor ``(N, ...)``, ``(N,)``
        Training inputs and labels.
    X_test, y_test : Tensor ``(N*, ...)``, ``(N*,)``
        Test inputs and labels.
    G_train, G_test : Tensor ``(N, C, k)``, ``(N*, C, k)``
        Projected class gradients ``G̃_c = G_c R`` (appendix §0).
    f_train, f_test : Tensor ``(N, C)``, ``(N*, C)``
        The network's logits, the regression targets ``t_c`` (appendix §0).
    """

    model: Any
    projector: Any
    X_train: Any
    y_train: Any
    X_test: Any
    y_test: Any
    G_train: Any
    G_test: Any
    f_train: Any
    f_test: Any

    @property
    def shape(self) -> tuple:
        """``(N, C, k)`` of the training gradients."""
        return tuple(self.G_train.shape)


def projected_setup(proj_kind: str, proj_dim: int, *, per_class: int | None = None, seed: int = 0,
                    model_name: str = "convnet", dataset: str = "digits", device: str = "cpu",
                    progress: bool = False) -> ProjectedSetup:
    """The common start of a chapter: teacher, data, projected class gradients and logits.

    Parameters
    ----------
    proj_kind, proj_dim : str, int
        Projector kind and width ``k`` for :func:`dntk.projection.make` (seeded with ``seed``).
    per_class : int, optional
        Training images per class (a seeded balanced subset, :func:`dntk.data.as_tensors`); ``None``
        keeps the whole training split.
    seed : int
        Seeds the subset and the projector.
    model_name, dataset, device, progress
        Passed to :func:`dntk.models.trained`, :func:`dntk.data.load` and
        :func:`dntk.tangent.class_gradients`.

    Returns
    -------
    ProjectedSetup
        Training gradients ``(N, C, k)``, test gradients ``(N*, C, k)`` (the whole test split) and logits.
    """
    from . import data, models, projection, tangent

    if not isinstance(proj_dim, int) or isinstance(proj_dim, bool) or proj_dim < 1:
        raise ValueError(f"proj_dim must be a positive int, got {proj_dim!r}")
    model = models.trained(model_name, dataset=dataset, progress=progress)
    X_tr, y_tr = data.as_tensors(data.load(dataset, "train"), per_class=per_class, seed=seed)
    X_te, y_te = data.as_tensors(data.load(dataset, "test"))
    proj = projection.make(proj_kind, proj_dim, seed=seed)
    G_tr = tangent.class_gradients(model, X_tr, projector=proj, device=device, progress=progress)
    G_te = tangent.class_gradients(model, X_te, projector=proj, device=device, progress=progress)
    return ProjectedSetup(model=model, projector=proj, X_train=X_tr, y_train=y_tr, X_test=X_te, y_test=y_te,
                          G_train=G_tr, G_test=G_te, f_train=tangent.logits(model, X_tr),
                          f_test=tangent.logits(model, X_te))
