"""dntk.chapter: the chapters' shared setup and glue helpers, against direct calls and closed forms."""
import dataclasses
import math

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dntk import chapter, data, models, projection, tangent  # noqa: E402


def _glued(monkeypatch):
    """Capture what myst_nb.glue receives instead of displaying it."""
    store = {}

    def fake_glue(name, value, display=True):
        store[name] = (value, display)

    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", fake_glue)
    return store


@pytest.mark.parametrize("value, text", [(6.04e12, "$6.0\\times10^{12}$"), (2.4e5, "$2.4\\times10^{5}$"),
                                         (9.96e3, "$1.0\\times10^{4}$"), (37.25, "$37.2$"), (0, "$0$"),
                                         (-3.2e-4, "$-3.2\\times10^{-4}$")])
def test_glue_math_powers_of_ten(monkeypatch, value, text):
    store = _glued(monkeypatch)
    chapter.glue_math("x", value)
    md, display = store["x"]
    assert md.data == text and display is False


@pytest.mark.parametrize("value, text", [(6.04e12, "6.0×10¹²"), (9.96e3, "1.0×10⁴"), (1.96e11, "2.0×10¹¹"),
                                         (836.4, "836.4"), (-3.2e-4, "-3.2×10⁻⁴")])
def test_glue_power_is_plain_text_with_superscripts(monkeypatch, value, text):
    store = _glued(monkeypatch)
    chapter.glue_power("x", value)
    assert store["x"] == (text, False)
    with pytest.raises(ValueError, match="not finite"):
        chapter.glue_power("bad", math.nan)


def test_glue_number_keeps_ints_and_rejects_non_finite(monkeypatch):
    store = _glued(monkeypatch)
    chapter.glue_number("n", 1437)
    chapter.glue_number("r", torch.tensor(0.25))
    chapter.glue_number("i64", np.int64(21))
    assert store["n"][0] == 1437 and isinstance(store["n"][0], int)
    assert store["i64"][0] == 21 and isinstance(store["i64"][0], int)
    assert store["r"][0] == 0.25 and isinstance(store["r"][0], float)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="not finite"):
            chapter.glue_number("bad", bad)
    with pytest.raises(ValueError, match="not finite"):
        chapter.glue_math("bad", math.inf)


def test_glue_figure_stores_and_closes(monkeypatch):
    store = _glued(monkeypatch)
    fig, _ = plt.subplots()
    chapter.glue_figure("fig", fig)
    assert store["fig"] == (fig, False)
    assert not plt.fignum_exists(fig.number)
    with pytest.raises(ValueError, match="name"):
        chapter.glue_figure("", plt.figure())
    plt.close("all")


def test_use_book_style_sizes_fonts_for_the_page():
    chapter.use_book_style()
    rc = matplotlib.rcParams
    assert rc["figure.figsize"][0] == chapter.PAGE_WIDTH_IN
    # at least 10 pt once a full-width figure is scaled to the page
    assert min(rc["xtick.labelsize"], rc["ytick.labelsize"], rc["legend.fontsize"]) >= 10
    matplotlib.rcdefaults()


def test_projected_setup_equals_direct_calls():
    s = chapter.projected_setup("gaussian", 32, per_class=2, seed=3)
    model = models.trained("convnet", dataset="digits")
    X, y = data.as_tensors(data.load("digits", "train"), per_class=2, seed=3)
    X_te, y_te = data.as_tensors(data.load("digits", "test"))
    R = projection.make("gaussian", 32, seed=3)
    assert torch.equal(s.X_train, X) and torch.equal(s.y_train, y) and torch.equal(s.y_test, y_te)
    assert s.shape == (20, 10, 32)
    assert torch.allclose(s.G_train, tangent.class_gradients(model, X, projector=R), rtol=1e-5, atol=1e-6)
    assert torch.allclose(s.f_test, tangent.logits(model, X_te))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.G_train = None


@pytest.mark.parametrize("dim", [0, -4, 2.5, True])
def test_projected_setup_rejects_bad_width(dim):
    with pytest.raises(ValueError, match="proj_dim"):
        chapter.projected_setup("gaussian", dim)


def test_repo_root_is_the_checkout_from_any_working_directory(tmp_path, monkeypatch):
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent  # tests/ sits in the project folder
    monkeypatch.chdir(tmp_path)
    assert chapter.repo_root() == checkout
    assert (chapter.repo_root() / "params" / "fashion-mnist.yaml").is_file()
