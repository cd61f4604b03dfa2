"""Bad input: each malformed input exits with code 2 and one line naming the field; never a
traceback. Library calls raise ScenarioError with the same message."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from sdsim import ScenarioError, load_scenario, simulate
from sdsim.cli import main
from tests.conftest import ROOT

DEFAULT = str(ROOT / "scenarios/default.yaml")


def write(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


def trace(tmp: Path, rows: str) -> str:
    return write(tmp, "trace.csv", "arrival,prompt_tokens,output_tokens\n" + rows)


UNSORTED = "0.5,10,10\n0.2,10,10\n"
NEGATIVE = "-1,10,10\n0.2,10,10\n"
NOCOL = "arrival,prompt\n1,2\n"

# (id, builder of argv given tmp_path, text expected in the message)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("negative rate", lambda t: ["--set", "workload.rate=-1"], "workload.rate"),
    ("zero rate", lambda t: ["--set", "workload.rate=0"], "workload.rate"),
    ("alpha above 1", lambda t: ["--set", "acceptance.alpha=1.2"], "acceptance.alpha"),
    ("alpha below 0", lambda t: ["--set", "acceptance.alpha=-0.1"], "acceptance.alpha"),
    ("negative k", lambda t: ["--set", "spec.k=-1"], "spec.k"),
    ("k above max", lambda t: ["--set", "spec.k=33"], "spec.k"),
    ("typo field", lambda t: ["--set", "workload.rte=3"], "workload.rte"),
    ("typo section", lambda t: ["--set", "wrkload.rate=3"], "wrkload"),
    ("output zero", lambda t: ["--set", "workload.output_tokens=0"], "workload.output_tokens"),
    ("prompt zero", lambda t: ["--set", "workload.prompt_tokens=0"], "workload.prompt_tokens"),
    ("wrong type", lambda t: ["--set", "workload.rate=fast"], "workload.rate"),
    ("nan", lambda t: ["--set", "workload.rate=.nan"], "workload.rate"),
    ("infinity", lambda t: ["--set", "workload.rate=.inf"], "workload.rate"),
    ("float requests", lambda t: ["--set", "workload.num_requests=10.5"], "workload.num_requests"),
    ("max_num_seqs 0", lambda t: ["--set", "server.max_num_seqs=0"], "server.max_num_seqs"),
    (
        "uniform high<low",
        lambda t: ["--set", "workload.output_tokens={dist: uniform, low: 9, high: 3}"],
        "workload.output_tokens",
    ),
    (
        "lognormal cv<0",
        lambda t: ["--set", "workload.prompt_tokens={dist: lognormal, mean: 9, cv: -1}"],
        "workload.prompt_tokens",
    ),
    (
        "unknown length law",
        lambda t: ["--set", "workload.prompt_tokens={dist: zipf, a: 2}"],
        "workload.prompt_tokens",
    ),
    (
        "beta mean 1",
        lambda t: ["--set", "acceptance.alpha={dist: beta, mean: 1.0, concentration: 5}"],
        "acceptance.alpha",
    ),
    (
        "per-position too short",
        lambda t: ["--set", "acceptance.alpha=[0.9, 0.8]"],
        "acceptance.alpha",
    ),
    ("drafter model missing", lambda t: ["--set", "drafter.kind=model"], "drafter"),
    ("warmup too large", lambda t: ["--set", "warmup_requests=5000"], "warmup_requests"),
    ("set without =", lambda t: ["--set", "workload.rate"], "--set"),
    ("negative seed", lambda t: ["--seed", "-3"], "seed"),
    (
        "trace unsorted",
        lambda t: [
            "--set",
            "workload.arrival=trace",
            "--set",
            "workload.trace=" + trace(t, UNSORTED),
        ],
        "workload.trace",
    ),
    (
        "trace negative",
        lambda t: [
            "--set",
            "workload.arrival=trace",
            "--set",
            "workload.trace=" + trace(t, NEGATIVE),
        ],
        "workload.trace",
    ),
    (
        "trace missing column",
        lambda t: [
            "--set",
            "workload.arrival=trace",
            "--set",
            "workload.trace=" + write(t, "x.csv", NOCOL),
        ],
        "workload.trace",
    ),
    (
        "trace missing file",
        lambda t: ["--set", "workload.arrival=trace", "--set", "workload.trace=/no/such.csv"],
        "workload.trace",
    ),
    ("trace without path", lambda t: ["--set", "workload.arrival=trace"], "workload"),
    # prefix caching, shared prompts, sessions
    (
        "prefix caching not a bool",
        lambda t: ["--set", "server.prefix_caching=sometimes"],
        "server.prefix_caching",
    ),
    (
        "no shared prompts",
        lambda t: ["--set", "workload.shared_prefix={prompts: 0, tokens: 100}"],
        "workload.shared_prefix.prompts",
    ),
    (
        "negative zipf exponent",
        lambda t: ["--set", "workload.shared_prefix={prompts: 4, tokens: 100, zipf_s: -1}"],
        "workload.shared_prefix.zipf_s",
    ),
    (
        "share above one",
        lambda t: ["--set", "workload.shared_prefix={prompts: 4, tokens: 100, share: 1.5}"],
        "workload.shared_prefix.share",
    ),
    (
        "no turns",
        lambda t: ["--set", "workload.sessions={turns: 0}"],
        "workload.sessions.turns",
    ),
    (
        "negative think time",
        lambda t: ["--set", "workload.sessions={turns: 3, think_time_s: {mean: -1}}"],
        "workload.sessions.think_time_s",
    ),
    (
        "sessions on a trace",
        lambda t: [
            "--set",
            "workload.arrival=trace",
            "--set",
            "workload.trace=" + trace(t, "0.1,10,10\n0.2,10,10\n"),
            "--set",
            "workload.sessions={turns: 3}",
        ],
        "workload",
    ),
    (
        "context too small for a first turn",
        lambda t: ["--set", "workload.sessions={turns: 3, max_context: 100}"],
        "workload.sessions",
    ),
    (
        "trace length law missing file",
        lambda t: [
            "--set",
            "workload.prompt_tokens={dist: trace, path: /no/such.csv, column: prompt_tokens}",
        ],
        "workload.prompt_tokens",
    ),
    (
        "hit rate above one",
        lambda t: ["--set", "analytic.prefix_hit_rate=1.5"],
        "analytic.prefix_hit_rate",
    ),
    ("out dir not writable", lambda t: ["--out", write(t, "afile", "x") + "/sub"], "--out"),
]


def scenario_files(tmp: Path) -> list[tuple[str, str, str]]:
    return [
        ("empty file", write(tmp, "empty.yaml", ""), "empty"),
        ("invalid yaml", write(tmp, "bad.yaml", "workload: {rate: [1, 2\n"), "invalid YAML"),
        ("not a mapping", write(tmp, "list.yaml", "- 1\n- 2\n"), "mapping"),
        ("missing file", str(tmp / "nope.yaml"), "not found"),
        ("directory", str(tmp), "directory"),
    ]


@pytest.mark.parametrize(("name", "build", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_option_exit_2_one_line(
    name: str,
    build: Callable[[Path], list[str]],
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "run",
        DEFAULT,
        "--set",
        "workload.num_requests=50",
        "--set",
        "warmup_requests=5",
        *build(tmp_path),
    ]
    if name == "warmup too large":
        argv = ["run", DEFAULT, "--set", "workload.num_requests=50", *build(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


def test_bad_scenario_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = scenario_files(tmp_path)
    assert len(CASES) + len(cases) >= 25
    for name, path, needle in cases:
        with pytest.raises(SystemExit) as exc:
            main(["run", path])
        assert exc.value.code == 2, name
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], (name, err)
        # the library raises the same message
        with pytest.raises(ScenarioError) as lib:
            load_scenario(path)
        assert str(lib.value) in lines[0]


# Every command, given a missing file, a bad --set, an unknown option or a missing required
# argument/option, exits 2 with one line on stderr (never a traceback). Each argv fails before any
# simulation, so the table runs in well under a second per case.
REPORT = str(ROOT / "tests/fixtures/guidellm_small.json")
SWEEP = str(ROOT / "scenarios/sweeps/k-vs-load.yaml")
COMMAND_CASES: list[tuple[str, list[str], str]] = [
    ("run unknown option", ["run", DEFAULT, "--bogus"], "--bogus"),
    ("run missing argument", ["run"], "scenario"),
    ("schema unknown option", ["schema", "--bogus"], "--bogus"),
    ("unknown command", ["nosuchcommand"], "nosuchcommand"),
    ("costs missing file", ["costs", "/no/such.yaml"], "not found"),
    ("costs bad set", ["costs", DEFAULT, "--set", "spec.k=abc"], "spec.k"),
    ("costs bad context", ["costs", DEFAULT, "--context", "-5"], "--context"),
    ("bench missing model", ["bench", "--out", "/tmp/x"], "--model"),
    ("bench unknown model", ["bench", "--model", "nope", "--out", "/tmp/x"], "--model"),
    ("predict missing file", ["predict", "/no/such.yaml"], "not found"),
    ("predict bad rates", ["predict", DEFAULT, "--rates", "x"], "--rates"),
    ("advise bad set", ["advise", DEFAULT, "--set", "spec.k_max=0"], "spec.k_max"),
    ("validate bad reps", ["validate", DEFAULT, "--reps", "0"], "--reps"),
    ("validate bad half-width", ["validate", DEFAULT, "--half-width", "2"], "--half-width"),
    ("validate bad target line", ["validate", DEFAULT, "--target", "e2e_p99"], "--target"),
    ("sweep missing out", ["sweep", SWEEP], "--out"),
    ("sweep missing file", ["sweep", "/no/such.yaml", "--out", "/tmp/x"], "not found"),
    ("sweep bad set", ["sweep", SWEEP, "--out", "/tmp/x", "--set", "nokey"], "--set"),
    ("plot not a sweep dir", ["plot", "/no/such/dir"], "sweep"),
    ("fit missing report", ["fit", "/no/such.json"], "not found"),
    ("fit bad form", ["fit", REPORT, "--form", "weird"], "--form"),
    ("fit k per report", ["fit", REPORT, "--k", "1", "--k", "2"], "--k"),
    ("compare missing scenario", ["compare", REPORT, "--scenario", "/no/such.yaml"], "not found"),
    ("compare not a report", ["compare", DEFAULT], "report"),
    ("serve bad port", ["serve", DEFAULT, "--port", "70000"], "--port"),
    ("serve bad set", ["serve", DEFAULT, "--set", "nokey"], "--set"),
    (
        "KV smaller than a request",
        ["run", DEFAULT, "--set", "server.num_gpu_blocks=10"],
        "server.num_gpu_blocks",
    ),
    (
        "weights exceed the GPU",
        ["costs", str(ROOT / "scenarios/llama70b-tp4-a100.yaml"), "--set", "server.tp=1"],
        "hardware",
    ),
    (
        "no memory left for KV",
        ["predict", DEFAULT, "--set", "server.activation_reserve_gb=60"],
        "server.num_gpu_blocks",
    ),
    (
        "bad num_gpu_blocks",
        ["run", DEFAULT, "--set", "server.num_gpu_blocks=lots"],
        "server.num_gpu_blocks",
    ),
]


@pytest.mark.parametrize(
    ("name", "argv", "needle"), COMMAND_CASES, ids=[c[0] for c in COMMAND_CASES]
)
def test_every_command_bad_input_exit_2_one_line(
    name: str, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2, name
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]


def test_unwritable_out_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["costs", DEFAULT, "--plot", str(blocker / "sub" / "p.png")])
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "file" in lines[0]


# --------------------------------------------------------------------------- every command
#
# The same malformed inputs through `sdsim run`, `predict`, `costs`, `validate` and `sweep`: each
# exits 2 with one line naming the field, and the library call behind the command raises
# ScenarioError with that very line (see sdsim/errors.py for the contract).

PROFILE = ROOT / "profiles/cpu-numpy-llama-3.2-1b"
COMMANDS = ["run", "predict", "costs", "validate", "sweep"]


def bundle(tmp: Path, name: str, edit: Callable[[pd.DataFrame], pd.DataFrame] | None) -> str:
    """A copy of the committed profile bundle with dense.csv edited (or meta.yaml removed)."""
    d = tmp / name
    shutil.copytree(PROFILE, d)
    if edit is None:
        (d / "meta.yaml").unlink()
    else:
        edit(pd.read_csv(d / "dense.csv")).to_csv(d / "dense.csv", index=False)
    return str(d)


def _falling(df: pd.DataFrame) -> pd.DataFrame:
    # times that fall as work grows: 1 s at 1 token down to ~2 ms at 512 (units mixed up)
    return df.assign(median_us=1e6 / df["tokens"])


def profiled(path: str) -> dict[str, Any]:
    return {"costs.source": "profile", "costs.profile": path, "target": "llama-3.2-1b"}


# (id, overrides given tmp_path, the field the message must name)
SCENARIO_CASES: list[tuple[str, Callable[[Path], dict[str, Any]], str]] = [
    ("unknown gpu", lambda t: {"hardware": "h1000"}, "hardware"),
    ("unknown model", lambda t: {"target": "llama-9"}, "target"),
    (
        "unknown drafter model",
        lambda t: {"drafter.kind": "model", "drafter.model": "tiny-llama"},
        "drafter.model",
    ),
    (
        "prompt beyond context",
        lambda t: {"workload.prompt_tokens": 200_000},
        "workload.prompt_tokens",
    ),
    ("missing profile bundle", lambda t: profiled(str(t / "no-such-bundle")), "costs.profile"),
    ("not a profile bundle", lambda t: profiled(bundle(t, "nometa", None)), "costs.profile"),
    (
        "profile csv missing columns",
        lambda t: profiled(bundle(t, "nocol", lambda df: df.drop(columns=["tokens"]))),
        "costs.profile",
    ),
    (
        "profile csv non-monotone",
        lambda t: profiled(bundle(t, "falling", _falling)),
        "costs.profile",
    ),
    (
        "profile csv sizes not numbers",
        lambda t: profiled(bundle(t, "nan", lambda df: df.assign(tokens="many"))),
        "costs.profile",
    ),
    (
        "kv smaller than one request",
        lambda t: {"server.num_gpu_blocks": 3},
        "server.num_gpu_blocks",
    ),
]

SMALL_RUN = {"workload.num_requests": 50, "warmup_requests": 5}


def _sets(over: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in over.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    return out


def _sweep_file(tmp: Path, over: dict[str, Any], grid: dict[str, Any] | None = None) -> Path:
    path = tmp / "sweep.yaml"
    spec = {"base": DEFAULT, "set": {**SMALL_RUN, **over}, "grid": grid or {"spec.k": [1, 2]}}
    path.write_text(yaml.safe_dump(spec))
    return path


def command(cmd: str, tmp: Path, over: dict[str, Any]) -> tuple[list[str], Callable[[], Any]]:
    """argv of the CLI command and the library call it makes."""
    from sdsim.analytic import predict
    from sdsim.analytic.validation import validate
    from sdsim.costs.build import build_cost_model
    from sdsim.sweep import load_sweep, plan_sweep

    if cmd == "sweep":
        path = _sweep_file(tmp, over)
        argv = ["sweep", str(path), "--out", str(tmp / "s"), "--workers", "1", "--quiet"]
        return argv, lambda: plan_sweep(load_sweep(path), path)
    if cmd == "run":
        full = {**SMALL_RUN, **over}
        return ["run", DEFAULT, *_sets(full)], lambda: simulate(load_scenario(DEFAULT, full))
    if cmd == "predict":
        return ["predict", DEFAULT, *_sets(over)], lambda: predict(load_scenario(DEFAULT, over))
    if cmd == "costs":
        argv = ["costs", DEFAULT, *_sets(over)]
        return argv, lambda: build_cost_model(load_scenario(DEFAULT, over))
    full = {**SMALL_RUN, **over}
    argv = ["validate", DEFAULT, "--rates", "5", "--reps", "1", "--jobs", "1", "--initial", "50",
            "--max-requests", "50", "--out", str(tmp / "v"), *_sets(full)]
    return argv, lambda: validate(
        load_scenario(DEFAULT, full), rates=[5.0], reps=1, jobs=1, initial=50, max_requests=50
    )


def one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize(
    ("name", "build", "field"), SCENARIO_CASES, ids=[c[0] for c in SCENARIO_CASES]
)
def test_every_command_refuses_bad_input(
    cmd: str,
    name: str,
    build: Callable[[Path], dict[str, Any]],
    field: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, library = command(cmd, tmp_path, build(tmp_path))
    line = one_error_line(argv, capsys)
    assert line.startswith(f"error: {field}: "), line
    with pytest.raises(ScenarioError) as lib:
        library()
    assert lib.value.field == field
    assert str(lib.value) in line
    assert "\n" not in str(lib.value)


def test_sweep_over_a_field_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdsim.sweep import load_sweep, plan_sweep

    for bad in ("server.max_num_seq", "servr.max_num_seqs"):
        path = _sweep_file(tmp_path, {}, grid={bad: [1, 2]})
        line = one_error_line(["sweep", str(path), "--out", str(tmp_path / "o")], capsys)
        assert bad.split(".")[0] in line and "unknown field" in line
        with pytest.raises(ScenarioError) as lib:
            plan_sweep(load_sweep(path), path)
        assert str(lib.value) in line
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_drawn_request_too_long_for_kv_is_exit_2_from_worker_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The shortest request fits 100 blocks, so the scenario loads; the drawn workload's longest
    # does not, and the engine refuses it inside validate's worker processes. The ScenarioError
    # must survive the trip back (it pickles by field and message) and still end as exit 2.
    over = {**SMALL_RUN, "server.num_gpu_blocks": 100,
            "workload.output_tokens": {"dist": "uniform", "low": 1, "high": 3000}}
    argv = ["validate", DEFAULT, "--rates", "5", "--reps", "2", "--jobs", "2", "--initial", "50",
            "--max-requests", "100", "--out", str(tmp_path / "v"), *_sets(over)]
    line = one_error_line(argv, capsys)
    assert "server.num_gpu_blocks" in line and "longest request" in line
    err = ScenarioError("server.num_gpu_blocks", "x")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.field, str(back)) == (ScenarioError, err.field, str(err))


def _through_a_file(tmp: Path) -> Path:
    f = tmp / "a-file"
    f.write_text("x")
    return f / "sub"


def _read_only(tmp: Path) -> Path:
    d = tmp / "ro"
    d.mkdir()
    d.chmod(0o500)
    return d / "sub"


OUT_CASES = [
    ("run", lambda o, t: ["run", DEFAULT, *_sets(SMALL_RUN), "--out", str(o)], "--out"),
    (
        "validate",
        lambda o, t: ["validate", DEFAULT, "--rates", "5", "--out", str(o)],
        "--out",
    ),
    (
        "sweep",
        lambda o, t: ["sweep", str(_sweep_file(t, {})), "--out", str(o)],
        "--out",
    ),
    ("costs", lambda o, t: ["costs", DEFAULT, "--plot", str(o / "steps.png")], "--plot"),
]


@pytest.mark.parametrize("where", ["through a file", "read-only directory"])
@pytest.mark.parametrize(("cmd", "argv", "option"), OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_unwritable_output_is_exit_2(
    cmd: str,
    argv: Callable[[Path, Path], list[str]],
    option: str,
    where: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if where == "read-only directory" and os.geteuid() == 0:
        pytest.skip("root writes through directory permissions")
    out = _through_a_file(tmp_path) if where == "through a file" else _read_only(tmp_path)
    line = one_error_line(argv(out, tmp_path), capsys)
    assert line.startswith(f"error: {option}: "), line
    assert "directory" in line
