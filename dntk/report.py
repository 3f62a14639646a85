"""What a pipeline run reports: its metrics, the results table, ``result.json`` and the figures.

:func:`role_metrics` turns one model's stage artifacts into the numbers of ``result.json``;
:func:`table` prints a :class:`dntk.pipeline.RunResult`; :func:`figures` draws accuracy/fidelity per
predictor and the cost ledger (appendix §7); :func:`write_outputs` writes ``config.yaml``,
``result.json`` and the figures into the run directory, atomically.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

__all__ = ["role_metrics", "table", "figures", "write_outputs", "save_json", "PREDICTORS"]

log = logging.getLogger("dntk")

#: The kernel predictors of a run, in table order: key in ``metrics[role]``, row label, colour.
PREDICTORS = (("full", "KRR, whole training set (JL only)", "C0"),
              ("distilled", "KRR, all distilled gradients (DD+JL)", "C1"),
              ("dntk", "DNTK (Algorithm 1 synthetic)", "C2"))


def role_metrics(feats_distilled, net_logits_test, y_test, gd: dict, krr: dict, n_train=None) -> dict:
    """The metrics of one model (teacher or student) for ``result.json``.

    Parameters
    ----------
    feats_distilled : Tensor ``(N_d, C, k)``
        Projected class gradients of the distilled set (for coverage and Nyström error, appendix §4.3).
    net_logits_test : Tensor ``(N*, C)``
        The network's test logits (fidelity and logit R² compare the kernel predictions with them).
    y_test : Tensor ``(N*,)``
        Test labels.
    gd : dict
        The gradient-distillation artifact: per class ``G_syn (m_c, k)``, ``m``, ``n_local``, ``n_gap``.
    krr : dict
        The KRR artifact: test predictions ``pred``, ``pred_distilled`` and optionally ``pred_full``
        ``(N*, C)``.
    n_train : int, optional
        Training points of the whole-training-set reference (when ``pred_full`` exists).

    Returns
    -------
    dict
        ``network_accuracy`` and, per predictor (``dntk``, ``distilled``, ``full``), ``accuracy``,
        ``fidelity``, ``logit_r2``, ``relative_logit_error`` and ``gradients_per_class``; the DNTK also
        ``m_per_class``, ``n_local``, ``n_gap``, mean ``coverage`` and ``nystrom_error``.
    """
    from . import metrics as M

    C = len(gd["G_syn"])

    def scores(pred) -> dict:
        return M.report(pred, y_test, net_logits_test).as_dict()

    out = {"network_accuracy": M.accuracy(net_logits_test, y_test),
           "dntk": {**scores(krr["pred"]), "gradients_per_class": sum(gd["m"]) / C, "m_per_class": list(gd["m"]),
                    "n_local": int(sum(gd["n_local"])), "n_gap": int(sum(gd["n_gap"])),
                    "coverage": float(M.coverage(feats_distilled, gd["G_syn"]).mean()),
                    "nystrom_error": float(M.nystrom_error(feats_distilled, gd["G_syn"]).mean())},
           "distilled": {**scores(krr["pred_distilled"]), "gradients_per_class": len(feats_distilled)}}
    if "pred_full" in krr:
        out["full"] = {**scores(krr["pred_full"]), "gradients_per_class": int(n_train)}
    return out


def table(result) -> str:
    """The plain-text results table of a :class:`dntk.pipeline.RunResult`: accuracy, fidelity and logit R²
    per model and predictor, the stage statuses, and the ledger's headline reduction factors."""
    c = result.config
    lines = [f"DNTK run {c.name!r}: {c.data.name}, {c.teacher.arch}, WMDD ipc {c.distill.ipc} ({c.distill.method}), "
             f"k={c.projection.k} ({c.projection.kind}), {c.gradient_distillation.method} "
             f"budget {c.gradient_distillation.budget}", "",
             f"{'model':<9}{'predictor':<38}{'grads/class':>13}{'accuracy':>10}{'fidelity':>10}{'logit R²':>10}"]
    for role, m in result.metrics.items():
        lines.append(f"{role:<9}{'network':<38}{'':>13}{m['network_accuracy']:>10.4f}{1.0:>10.4f}{'':>10}")
        for name, label, _ in PREDICTORS:
            if name in m:
                r = m[name]
                r2 = "—" if r["logit_r2"] is None else f"{r['logit_r2']:.4f}"
                lines.append(f"{'':<9}{label:<38}{r['gradients_per_class']:>13.4g}{r['accuracy']:>10.4f}"
                             f"{r['fidelity']:>10.4f}{r2:>10}")
    st = " ".join(f"{r['stage']}{'[' + r['role'] + ']' if r['role'] else ''}:{r['status']}" for r in result.stages)
    lines += ["", "stages: " + st]
    if result.info.get("world_size", 1) > 1:
        lines.append(f"ranks: {result.info['world_size']} (who computed what: info.work in result.json)")
    if result.ledger is not None:
        sm = result.ledger.summary()
        lines += ["", f"ledger: DNTK build {sm['build_vs_full_ntk']:.3g}× cheaper than the full NTK, "
                      f"{sm['build_vs_jl']:.3g}× than JL only (one-time WMDD + Algorithm 1 excluded; "
                      f"included: {sm['build+one_time_vs_full_ntk']:.3g}× / {sm['build+one_time_vs_jl']:.3g}×)"]
    return "\n".join(lines)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def save_json(obj, path) -> Path:
    """Write `obj` as indented JSON to `path` atomically (paths and tuples as strings and lists)."""
    from .store import atomic_write_text

    return atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default))


def write_outputs(result) -> None:
    """Write the run's ``figures/``, ``config.yaml`` and ``result.json`` (last) into its run directory.

    A plotting problem is logged and does not lose the numbers. Sets ``result.figures`` and ``result.path``.
    """
    from .store import atomic_write_text

    cfg = result.config
    rd = cfg.run_path
    rd.mkdir(parents=True, exist_ok=True)
    figs = []
    if cfg.figures:
        try:
            figs = figures(result, rd / "figures")
        except Exception as e:  # noqa: BLE001 - a plotting problem must not lose the run's numbers
            log.warning("dntk: figures not written (%s)", e)
    result.figures = figs
    atomic_write_text(rd / "config.yaml", cfg.to_yaml())
    result.path = result.save(rd / "result.json")


def figures(result, out: Path) -> list:
    """Draw ``accuracy_fidelity.png`` (per model and predictor) and ``ledger.png`` (multiply–adds per
    pipeline, build and one-time, appendix §7) into `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from . import ledger as L
    from .store import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(atomic_write_bytes(out / name, buf.getvalue()))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, metric in zip(axes, ("accuracy", "fidelity")):
        labels, vals, colors = [], [], []
        for role, m in result.metrics.items():
            if metric == "accuracy":
                labels.append(f"{role}\nnetwork")
                vals.append(m["network_accuracy"])
                colors.append("0.6")
            for name, label, col in PREDICTORS:
                if name in m:
                    labels.append(f"{role}\n{label.split(',')[0] if name != 'dntk' else 'DNTK'}")
                    vals.append(m[name][metric])
                    colors.append(col)
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)), labels, fontsize=9, rotation=30, ha="right")
        ax.set_title(f"test {metric}", fontsize=11)
        ax.set_ylim(0, 1.02)
    save(fig, "accuracy_fidelity.png")

    led = result.ledger
    if led is not None:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        names = [L.PIPELINE_NAMES[p] for p in L.PIPELINES]
        b = [led.total(p, ("build",))["macs"] for p in L.PIPELINES]
        o = [led.total(p, ("one_time",))["macs"] for p in L.PIPELINES]
        x = list(range(len(names)))
        ax.bar(x, b, label="build")
        ax.bar(x, o, bottom=b, label="one-time (WMDD, Algorithm 1)")
        ax.set_yscale("log")
        ax.set_xticks(x, names, fontsize=9)
        ax.set_ylabel("multiply-adds", fontsize=10)
        ax.set_title("cost ledger (appendix §7)", fontsize=11)
        ax.legend(fontsize=9)
        save(fig, "ledger.png")
    return paths
