"""`sdsim explore`: the JSON API in process (controls, model panels, bad input, files, jobs).

The page itself is driven in a real browser by tests/test_explore_browser.py.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
import warnings
from typing import Any

import pytest
import yaml

pytest.importorskip(
    "plotly", reason="the explorer needs the explore extra: pip install 'sdsim[explore]'"
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient warns about its httpx backend
    from starlette.testclient import TestClient

import sdsim
from sdsim.explore import create_app
from sdsim.explore.controls import controls_of, scenario_with_controls
from sdsim.explore.panels import RATE_FRACTIONS, break_even
from sdsim.scenario import BetaAlpha, UniformLength
from tests.conftest import ROOT, small

DEFAULT = ROOT / "scenarios/default.yaml"
CLI = "import sys; from sdsim.cli import main; main(sys.argv[1:])"  # the `sdsim` entry point


@pytest.fixture(scope="module")
def default() -> sdsim.Scenario:
    return sdsim.load_scenario(DEFAULT)


@pytest.fixture(scope="module")
def client(default: sdsim.Scenario) -> Any:
    with TestClient(create_app(default)) as c:
        yield c


def _shown(scn: sdsim.Scenario) -> dict[str, Any]:
    """The control values as the page sends them (text fields as strings)."""
    return {k: v if isinstance(v, bool) else str(v) for k, v in controls_of(scn).items()}


def _view(client: Any, scn: sdsim.Scenario, **controls: Any) -> Any:
    return client.post(
        "/api/view", json={"base": scn.to_dict(), "controls": {**_shown(scn), **controls}}
    )


# --------------------------------------------------------------------------- options


def test_options_come_from_the_registries_and_the_schema(
    client: Any, default: sdsim.Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typing import get_args

    from sdsim.hardware import GPUS, GPUSpec
    from sdsim.models import model_names
    from sdsim.scenario import CostsSpec, DrafterSpec

    o = client.get("/api/options").json()
    assert o["choices"]["gpu"] == sorted(GPUS)
    assert (
        o["choices"]["target"] == model_names() and o["choices"]["drafter_model"] == model_names()
    )
    assert o["choices"]["drafter"] == list(get_args(DrafterSpec.model_fields["kind"].annotation))
    assert o["choices"]["cost_source"] == list(
        get_args(CostsSpec.model_fields["source"].annotation)
    )
    assert o["base"] == default.to_dict()
    assert o["controls"]["k"] == default.spec.k and o["controls"]["gpu"] == "h100-sxm"
    # a new registry entry appears without any change to the page or the app
    monkeypatch.setitem(GPUS, "x999", GPUSpec("x999", 1000.0, None, 96.0, 4.0, 900.0))
    assert "x999" in client.get("/api/options").json()["choices"]["gpu"]
    r = _view(client, default, gpu="x999")
    assert r.status_code == 200 and r.json()["scenario"]["hardware"] == "x999"


# --------------------------------------------------------------------------- the model's panels


def test_view_is_the_analytic_model(client: Any, default: sdsim.Scenario) -> None:
    """Every drawn number is sdsim.predict / step_time of the page's scenario (k moved to 3)."""
    r = _view(client, default, k="3")
    assert r.status_code == 200, r.text
    v = r.json()
    scn = default.with_overrides({"spec.k": 3})
    assert v["scenario"] == scn.to_dict()
    p = sdsim.predict(scn, rates=[], k_values=[3])
    assert v["point"]["e2e_mean"] == p.summary["e2e_mean"]
    assert v["point"]["ttft_p99"] == p.summary["ttft_p99"]
    assert v["point"]["saturation_rate"] == p.saturation_rate
    c = v["curve"]
    assert c["rate"] == [f * p.saturation_rate for f in RATE_FRACTIONS]
    for i in (0, 8, len(c["rate"]) - 3):  # light load, mid, near saturation
        q = sdsim.predict(
            scn.with_overrides({"workload.rate": c["rate"][i]}), rates=[], k_values=[3]
        )
        for key in ("e2e_mean", "e2e_p99", "ttft_mean", "tpot_p99"):
            assert c[key][i] == q.summary[key], (i, key)
        assert c["speedup"][i] == q.speedup
    be = c["break_even_rate"]
    assert be is None or c["rate"][0] < be < c["rate"][-1]
    # the step-time panel: the cost model at the mean KV length of a running request
    st = v["steps"]
    ctx = int(512 + 256 / 2)
    assert st["context"] == ctx and st["k"] == 3 and st["batch"][0] == 1
    assert st["batch"][-1] == default.server.max_num_seqs
    for i in (0, len(st["batch"]) - 1):
        b = st["batch"][i]
        t = sdsim.step_time(scn, b, ctx, k=3)
        assert st["total"][i] == pytest.approx(t.total, rel=1e-12)
        assert st["draft"][i] + st["verify"][i] + st["overhead"][i] == pytest.approx(
            t.total, rel=1e-12
        )
        assert st["plain"][i] == pytest.approx(sdsim.step_time(scn, b, ctx, k=0).total, rel=1e-12)
    # the batch-size law: a probability law whose mean is the model's mean batch
    law = v["batch_law"]
    assert sum(law["p"]) == pytest.approx(1.0, abs=1e-6)
    assert law["mean"] == pytest.approx(p.summary["batch_mean"], rel=1e-6)
    assert law["cap"] == default.server.max_num_seqs


@pytest.mark.parametrize(
    ("controls", "check"),
    [
        ({"adaptive": True}, lambda s: s.spec.policy == "adaptive"),
        ({"alpha_mode": "beta", "alpha": "0.6", "alpha_concentration": "4"},
         lambda s: s.acceptance.alpha == BetaAlpha(mean=0.6, concentration=4.0)),
        ({"drafter": "ngram", "cost_source": "linear"},
         lambda s: s.drafter.kind == "ngram" and s.costs.source == "linear"),
    ],
)
def test_view_other_settings(
    client: Any, default: sdsim.Scenario, controls: dict[str, Any], check: Any
) -> None:
    r = _view(client, default, **controls)
    assert r.status_code == 200, r.text
    v = r.json()
    scn = sdsim.scenario.scenario_from_dict(v["scenario"])
    assert check(scn)
    p = sdsim.predict(scn, rates=[], k_values=[scn.spec.k])
    assert v["point"]["e2e_p99"] == p.summary["e2e_p99"]
    assert v["steps"]["k"] == p.summary["k_effective"]


def test_view_past_saturation_has_no_batch_law(client: Any, default: sdsim.Scenario) -> None:
    v = _view(client, default, rate="500").json()
    assert v["point"]["stable"] is False
    assert v["point"]["e2e_mean"] is None  # JSON has no infinity: the page shows it as such
    assert v["batch_law"] is None
    assert v["point"]["outside_model"].startswith("past the saturation rate")


def test_break_even_interpolates_the_crossing() -> None:
    assert break_even([1.0, 2.0, 3.0], [1.5, 1.2, 0.8]) == pytest.approx(2.5)
    assert math.isnan(break_even([1.0, 2.0], [1.5, 1.2]))  # helps everywhere
    assert math.isnan(break_even([1.0, 2.0], [0.9, 0.5]))  # hurts everywhere


# --------------------------------------------------------------------------- controls


def test_untouched_controls_keep_the_base_scenario() -> None:
    """A uniform length law, a beta acceptance law and an explicit KV size survive every request
    that does not move their controls; moving one rewrites only its field."""
    base = small(
        **{
            "workload.prompt_tokens": {"dist": "uniform", "low": 64, "high": 192},
            "acceptance.alpha": {"dist": "beta", "mean": 0.7, "concentration": 8},
            "server.num_gpu_blocks": 4000,
        }
    )
    same, over = scenario_with_controls(base.to_dict(), _shown(base))
    assert over == {} and same == base
    moved, over = scenario_with_controls(base.to_dict(), {**_shown(base), "k": "2"})
    assert over == {"spec.k": 2}
    assert isinstance(moved.workload.prompt_tokens, UniformLength)
    assert isinstance(moved.acceptance.alpha, BetaAlpha)
    assert moved.server.num_gpu_blocks == 4000
    # a spread on the output turns its law lognormal, clipped at 16 means (and half the context)
    spread, over = scenario_with_controls(base.to_dict(), {**_shown(base), "output_cv": "1.5"})
    law = spread.workload.output_tokens
    assert (law.dist, law.mean, law.cv, law.max) == ("lognormal", 64.0, 1.5, 16 * 64)
    # per-position acceptance typed as text
    per, _ = scenario_with_controls(
        base.to_dict(),
        {**_shown(base), "alpha_mode": "per-position", "alpha_list": "0.9, 0.8 0.7;0.6"},
    )
    assert per.acceptance.alpha == [0.9, 0.8, 0.7, 0.6]
    draft, _ = scenario_with_controls(
        base.to_dict(), {**_shown(base), "drafter": "model", "drafter_model": "llama-3.2-1b"}
    )
    assert draft.drafter.kind == "model" and draft.drafter.model == "llama-3.2-1b"


BAD = [
    ({"rate": "abc"}, "workload.rate", "rate", "must be a number"),
    ({"rate": "-3"}, "workload.rate", "rate", "greater than 0"),
    ({"rate": "nan"}, "workload.rate", "rate", "finite"),
    ({"k": "2.5"}, "spec.k", "k", "whole number"),
    ({"k": "99"}, "spec.k", "k", "less than or equal to 32"),
    ({"gpu": "h900"}, "hardware", "gpu", "unknown GPU 'h900'; known: a100-80gb"),
    ({"target": "llama-9"}, "target", "target", "unknown model 'llama-9'"),
    ({"alpha": "1.5"}, "acceptance.alpha", "alpha", "less than or equal to 1"),
    ({"alpha_mode": "per-position", "alpha_list": "0.9, 0.8"}, "acceptance.alpha", "alpha_list",
     "per-position list has 2 entries, needs >= spec.k"),
    ({"alpha_mode": "per-position", "alpha_list": "0.9, x"}, "acceptance.alpha", "alpha_list",
     "must be a number"),
    ({"prompt_mean": "12.5"}, "workload.prompt_tokens", "prompt_mean", "whole number"),
    ({"output_cv": "-1"}, "workload.output_tokens.cv", "output_cv", ">= 0"),
    ({"tp": "0"}, "server.tp", "tp", "greater than or equal to 1"),
    ({"max_num_seqs": "lots"}, "server.max_num_seqs", "max_num_seqs", "must be a number"),
    # a missing companion value is named where it goes (the field the validator names)
    ({"cost_source": "profile"}, "costs.profile", "profile", "needs `profile:`"),
    ({"cost_source": "guess"}, "costs.source", "cost_source", "'auto', 'linear'"),
    ({"drafter": "model", "drafter_model": ""}, "drafter.model", "drafter_model",
     "needs `model:`"),
    ({"requests": "10"}, "warmup_requests", "requests", "must be < workload.num_requests (10)"),
]


@pytest.mark.parametrize(("controls", "field", "control", "says"), BAD)
def test_bad_input_is_400_naming_the_field(
    client: Any,
    default: sdsim.Scenario,
    controls: dict[str, str],
    field: str,
    control: str,
    says: str,
) -> None:
    r = _view(client, default, **controls)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"] == field and body["control"] == control, body
    assert body["error"].startswith(f"{field}: ") and says in body["error"], body
    assert "\n" not in body["error"] and "Traceback" not in r.text


def test_malformed_requests_are_400(client: Any, default: sdsim.Scenario) -> None:
    r = client.post("/api/view", content=b"{not json")
    assert r.status_code == 400 and r.json()["field"] == "request"
    r = client.post("/api/view", json=[1, 2])
    assert r.status_code == 400 and r.json()["field"] == "request"
    r = client.post("/api/view", json={"base": "x"})
    assert r.status_code == 400 and r.json()["field"] == "base"
    r = client.post("/api/view", json={"base": default.to_dict(), "controls": {"colour": "red"}})
    assert r.status_code == 400 and r.json()["field"] == "controls"
    assert "unknown control 'colour'" in r.json()["error"]
    bad_base = {**default.to_dict(), "serverr": {}}
    r = client.post("/api/view", json={"base": bad_base, "controls": {}})
    assert r.status_code == 400 and r.json()["field"] == "serverr"


# --------------------------------------------------------------------------- scenario files


def test_download_and_load_round_trip(client: Any, default: sdsim.Scenario) -> None:
    controls = {**_shown(default), "k": "2", "rate": "12.5"}
    r = client.post("/api/scenario", json={"base": default.to_dict(), "controls": controls})
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'attachment; filename="default.yaml"'
    data = yaml.safe_load(r.text)
    assert data["spec"]["k"] == 2 and data["workload"]["rate"] == 12.5
    assert sdsim.scenario.scenario_from_dict(data) == default.with_overrides(
        {"spec.k": 2, "workload.rate": 12.5}
    )
    back = client.post("/api/load", content=r.content, headers={"content-type": "application/yaml"})
    assert back.status_code == 200
    assert back.json()["controls"]["k"] == 2 and back.json()["base"] == data


def test_load_refuses_bad_files(client: Any) -> None:
    r = client.post("/api/load", content=b"spec: {k: [unclosed")
    assert r.status_code == 400 and r.json()["field"] == "file"
    assert "not a valid YAML scenario" in r.json()["error"]
    r = client.post("/api/load", content=b"workload: {rate: -2}")
    assert r.status_code == 400 and r.json()["field"] == "workload.rate"
    r = client.post("/api/load", content=b"hardware: tpu9")
    assert r.status_code == 400 and r.json()["field"] == "hardware"


# --------------------------------------------------------------------------- simulate here


def test_simulate_here_job(default: sdsim.Scenario) -> None:
    """A job runs the page's scenario for each seed (and at k = 0 for the paired speedup), and
    reports the runs' mean with its t interval: the same numbers as simulating here."""
    from sdsim.metrics import t_confidence_interval

    scn = small(**{"workload.num_requests": 200, "warmup_requests": 20})
    with TestClient(create_app(scn)) as c:
        r = c.post(
            "/api/simulate", json={"base": scn.to_dict(), "controls": _shown(scn), "runs": 2}
        )
        assert r.status_code == 200, r.text
        job = r.json()["job"]
        deadline = time.monotonic() + 120
        while True:
            st = c.get(f"/api/jobs/{job}").json()
            assert 0.0 <= st["progress"] <= 1.0
            if st["state"] in ("done", "error") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert st["state"] == "done", st
        res = st["result"]
        assert res["seeds"] == [1, 2] and res["runs"] == 2 and st["progress"] == 1.0
        runs = [sdsim.simulate(scn, seed=s).summary for s in (1, 2)]
        want = t_confidence_interval([x["e2e_p99"] for x in runs])
        assert res["stats"]["e2e_p99"] == pytest.approx(list(want), rel=1e-12)
        plain = scn.with_overrides({"spec.k": 0})
        ratios = [sdsim.simulate(plain, seed=s).summary["e2e_mean"] / x["e2e_mean"]
                  for s, x in zip((1, 2), runs, strict=True)]
        assert res["speedup"] == pytest.approx(list(t_confidence_interval(ratios)), rel=1e-12)
        law = res["batch_law"]
        assert sum(law["p"]) == pytest.approx(1.0) and law["batch"][0] == 0
        # bad replications and oversize runs are refused before anything runs
        r = c.post("/api/simulate", json={"base": scn.to_dict(), "controls": {}, "runs": "many"})
        assert r.status_code == 400 and r.json()["control"] == "runs"
        r = c.post("/api/simulate", json={"base": scn.to_dict(), "controls": {}, "runs": 50})
        assert r.status_code == 400 and "1..20" in r.json()["error"]
        r = c.post(
            "/api/simulate", json={"base": scn.to_dict(), "controls": {"requests": "5000000"}}
        )
        assert r.status_code == 400 and r.json()["control"] == "requests"
        assert c.get("/api/jobs/nope").status_code == 404


# --------------------------------------------------------------------------- offline and CLI


def test_everything_is_served_locally(client: Any) -> None:
    """The page and its own files name no other host; plotly.js comes from the plotly package; a
    Content-Security-Policy limits the page to this server."""
    external = re.compile(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.I)
    for path in ("/", "/static/explore.js", "/static/explore.css", "/static/icon.svg"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert not external.findall(r.text.replace("http://www.w3.org/2000/svg", "")), path
        assert "default-src 'self'" in r.headers["content-security-policy"]
    html = client.get("/").text
    assert set(re.findall(r'(?:src|href)="([^"]+)"', html)) == {
        "/static/icon.svg", "/static/explore.css", "/vendor/plotly.js", "/static/explore.js"
    }
    js = client.get("/vendor/plotly.js")
    assert js.headers["content-type"].startswith("text/javascript")
    from plotly.offline import get_plotlyjs

    assert js.text == get_plotlyjs()


def test_cli_bad_port_exits_2() -> None:
    """(The scenario argument and --set go through load_scenario: tests/test_bad_input.py.)"""
    args = ["explore", str(DEFAULT), "--port", "70000"]
    r = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: --port: must be in 0..65535 (got 70000)"


def test_cli_without_plotly_says_what_to_install() -> None:
    """Without the explore extra the command exits 2 with one line naming it."""
    code = (
        "import sys; sys.modules['plotly'] = None; sys.modules['plotly.offline'] = None\n"
        "from sdsim.cli import main\n"
        f"main(['explore', {str(DEFAULT)!r}, '--port', '0'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert (
        r.stderr.strip() == "error: explore: needs the plotly package: pip install 'sdsim[explore]'"
    )
