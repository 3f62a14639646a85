"""Tests for dntk.ledger against hand-computed closed forms of appendix §7."""

import pytest
from torch import nn

from dntk import ledger
from dntk.ledger import Sizes, UnitCosts, build_ledger

# N=100, C=3, P=1000, F=500, k=8, ipc=4 (N_d=12), m=2, N*=10, I=5, M=3 clusters, batch 4
S = Sizes(N=100, C=3, P=1000, F=500, k=8, ipc=4, m=2, N_test=10, I=5, image_numel=64,
          projector="gaussian", n_clusters=3, batch=4)
JAC = 500 * (1 + 2 * 3)  # one forward + C VJPs = 3500


def _row(led, pipeline, phase, stage):
    (r,) = [r for r in led.rows if (r.pipeline, r.phase, r.stage) == (pipeline, phase, stage)]
    return r


def test_build_totals_match_hand_computation():
    led = build_ledger(S)
    # full NTK: N·F(1+2C) + N²C²P + (NC)³/3
    assert led.total("full_ntk")["macs"] == pytest.approx(100 * JAC + 100**2 * 9 * 1000 + 300**3 / 3)
    assert led.total("full_ntk")["macs"] == pytest.approx(99_350_000)
    # class kernels: N·F(1+2C) + N²CP + C·N³/3
    assert led.total("class_kernels")["macs"] == pytest.approx(350_000 + 30_000_000 + 1_000_000)
    # JL: N > k so primal KRR C(N k² + k³/3)
    jl = 350_000 + 100 * 3 * 1000 * 8 + 100**2 * 3 * 8 + 3 * (100 * 64 + 512 / 3)
    assert led.total("jl")["macs"] == pytest.approx(jl)
    # DD + JL on N_d = 12 > k = 8: primal
    ddjl = 12 * JAC + 12 * 3 * 1000 * 8 + 144 * 3 * 8 + 3 * (12 * 64 + 512 / 3)
    assert led.total("dd_jl")["macs"] == pytest.approx(ddjl)
    # DNTK: kernel C m² k on m=2 synthetic gradients, dual KRR C m³/3
    dntk = 12 * JAC + 12 * 3 * 1000 * 8 + 3 * 4 * 8 + 3 * 8 / 3
    assert led.total("dntk")["macs"] == pytest.approx(dntk)
    assert led.reduction("dntk", "full_ntk") == pytest.approx(99_350_000 / dntk)
    assert led.reduction("dntk", "jl") == pytest.approx(jl / dntk)
    assert led.total("dntk")["jacobians"] == 12 and led.total("full_ntk")["jacobians"] == 100


def test_one_time_and_predict_rows():
    led = build_ledger(S)
    # WMDD: N·F + I·C·ipc·3F
    assert _row(led, "dntk", "one_time", "wmdd").macs == 100 * 500 + 5 * 12 * 3 * 500
    # Algorithm 1: C·(N_d·k·min(N_d,k) + Σ_j |S_j| k min(|S_j|,k)) + N_d·C·k·M with |S_j| = 4, 4, 4
    assert _row(led, "dntk", "one_time", "algorithm1").macs == 3 * (12 * 8 * 8 + 3 * 4 * 8 * 4) + 12 * 3 * 8 * 3
    assert led.total("dntk", ("build", "one_time"))["macs"] == pytest.approx(
        led.total("dntk")["macs"] + 140_000 + 4320)
    assert led.total("jl", ("one_time",))["macs"] == 0
    # predictions on N* = 10: full NTK N*·F(1+2C) + N*·N·C²·P
    assert led.total("full_ntk", ("predict",))["macs"] == pytest.approx(10 * JAC + 10 * 100 * 9 * 1000)
    # DNTK dual prediction against m synthetic gradients: N*·C·m·k; JL primal: N*·C·k
    assert _row(led, "dntk", "predict", "kernel").macs == 10 * 3 * 2 * 8
    assert _row(led, "jl", "predict", "kernel").macs == 10 * 3 * 8


def test_memory_is_storage_with_streaming_separate():
    led = build_ledger(S)
    assert led.total("full_ntk")["memory"] == 100 * 3 * 1000 * 4  # materialised Jacobians (float32)
    assert _row(led, "full_ntk", "build", "kernel").memory == 100**2 * 9 * 8  # float64 NTK
    assert led.total("dntk")["memory"] == 12 * 3 * 8 * 4  # projected features of the distilled set
    assert _row(led, "dntk", "build", "jacobians").memory == 0
    assert _row(led, "dntk", "build", "jacobians").working == 4 * 3 * 1000 * 4  # batch·C·P floats
    assert led.summary()["memory_vs_full_ntk"] == pytest.approx(1_200_000 / 1152)
    assert led.summary()["jacobians_vs_full"] == pytest.approx(100 / 12)


@pytest.mark.parametrize("kind, per_input", [
    ("gaussian", 3 * 1000 * 8),
    ("srht", 3 * 1024 * 10),                      # P' = 1024, log2 P' = 10
    ("sparse", 3 * 1000 * 1),                     # s = 1 scatter-add per coordinate (DEFAULT_SPARSE_S)
    # k = 8 = k_out·k_in with k_out = 2 (largest divisor ≤ √8), k_in = 4; 1-D params (p_vec = 5) dense
    ("kronecker", 3 * (4 * (10 * 4 + 6 * 2 + 8) + 1 * (7 * 4 + 3 * 2 + 8) + 5 * 8)),
])
def test_projection_costs(kind, per_input):
    s = Sizes(**{**S.__dict__, "projector": kind, "layers": ((4, 10, 6), (1, 7, 3)), "p_vec": 5})
    assert ledger.projection_cost(s, 5) == pytest.approx(5 * per_input)


def test_unit_costs_model_seconds_and_measured_override():
    u = UnitCosts(jacobian_s=0.01, featurize_s=0.03, forward_s=0.002, mac_rate=1e6)
    led = build_ledger(S, unit=u)
    assert _row(led, "full_ntk", "build", "kernel").seconds == pytest.approx(9e7 / 1e6)
    assert _row(led, "full_ntk", "build", "jacobians").seconds == pytest.approx(100 * 0.01)
    assert _row(led, "dntk", "build", "projection").seconds == pytest.approx(12 * 0.02)
    assert _row(led, "jl", "predict", "projection").seconds == pytest.approx(10 * 0.02)
    assert _row(led, "dntk", "one_time", "wmdd").seconds == pytest.approx(140_000 / 500 * 0.002)
    assert all(r.source == "modelled" for r in led.rows)
    led.attach_measured({("dntk", "jacobians"): 1.5, ("dntk", "predict", "kernel"): 0.1})
    assert _row(led, "dntk", "build", "jacobians").source == "measured"
    assert _row(led, "dntk", "build", "jacobians").seconds == 1.5
    assert _row(led, "dntk", "predict", "jacobians").source == "modelled"
    assert _row(led, "dntk", "predict", "kernel").seconds == 0.1
    led.attach_measured({("dntk", "projection"): (0.0, "measured, in jacobians")})
    assert _row(led, "dntk", "build", "projection").source == "measured, in jacobians"
    assert led.total("dntk", ("build",))["seconds"] == pytest.approx(
        1.5 + sum(r.seconds for r in led.rows if r.pipeline == "dntk" and r.phase == "build"
                  and r.stage in ("kernel", "krr")))
    with pytest.raises(KeyError):
        led.attach_measured({("dntk", "nonsense"): 1.0})
    assert build_ledger(S).total("dntk")["seconds"] is None  # no unit costs: counts only


def test_table_and_dict_render():
    led = build_ledger(S)
    text = led.table()
    assert "DNTK" in text and "full NTK" in text and "vs JL only" in text
    d = led.to_dict()
    assert set(d["totals"]) == set(ledger.PIPELINES)
    assert d["summary"]["build_vs_full_ntk"] == pytest.approx(led.reduction())


def test_bad_sizes():
    with pytest.raises(ValueError, match="N"):
        Sizes(**{**S.__dict__, "N": 0})
    with pytest.raises(ValueError, match="layers"):
        Sizes(**{**S.__dict__, "projector": "kronecker"})
    with pytest.raises(ValueError, match="projector"):
        Sizes(**{**S.__dict__, "projector": "fft"})
    with pytest.raises(ValueError, match="pipeline"):
        build_ledger(S).total("nope")


def test_model_stats_counts_params_macs_and_layers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    st = ledger.model_stats(model, (1, 8, 8))
    assert st["P"] == (9 * 4 + 4) + (4 * 3 + 3)
    assert st["F"] == pytest.approx(64 * 9 * 4 + 4 * 3)  # conv MACs + linear MACs
    assert st["layers"] == ((64, 9, 4), (1, 4, 3))
    assert st["p_vec"] == 4 + 3


def test_from_config_imagenette_target():
    """The ImageNette/ResNet-18 params file: DNTK build ≥ 10⁴ × cheaper than the full NTK (the orders-of-magnitude claim)."""
    from pathlib import Path

    from dntk.pipeline import load_config

    path = Path(__file__).resolve().parents[1] / "params" / "imagenette-resnet18.yaml"
    if not path.is_file():
        pytest.skip("params/imagenette-resnet18.yaml not written yet")
    cfg = load_config(path, check_paths=False)
    led = ledger.from_config(cfg)
    assert led.sizes.N == 9469 and led.sizes.P > 10_000_000
    assert led.reduction("dntk", "full_ntk") >= 1e4
    assert 10 <= led.reduction("dntk", "jl") <= 100 * 1.5


def test_measure_unit_costs_leaves_the_model_as_it_was():
    import torch

    from dntk import models, projection

    model = models.build("convnet", 10, in_channels=1, width=4, seed=0)
    model.train()
    model.features[1].eval()  # a submodule deliberately frozen in eval mode stays so
    before = {n: t.clone() for n, t in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    u = ledger.measure_unit_costs(model, torch.rand(4, 1, 8, 8), projector=projection.make("gaussian", 8), repeats=1)
    assert u.featurize_s >= u.jacobian_s > 0 and u.mac_rate > 0
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())  # BatchNorm stats untouched
    assert next(model.parameters()).device.type == "cpu"


def test_measured_times_map_onto_ledger_rows():
    led = build_ledger(S)
    t = ledger.MeasuredTimes(featurize_distilled=2.0, featurize_test=1.0, wmdd=3.0, algorithm1=0.5, krr_fit=0.25,
                             krr_predict=0.125, krr_distilled_fit=0.75)
    led.attach_times(t)
    assert _row(led, "dntk", "build", "jacobians").seconds == 2.0 == _row(led, "dd_jl", "build", "jacobians").seconds
    assert _row(led, "dntk", "build", "projection").source == "measured, in jacobians"
    assert _row(led, "dntk", "one_time", "wmdd").seconds == 3.0 == _row(led, "dd_jl", "one_time", "wmdd").seconds
    assert _row(led, "dntk", "predict", "kernel").seconds == 0.125
    assert _row(led, "jl", "build", "jacobians").source != "measured"  # not run: stays modelled / counted
