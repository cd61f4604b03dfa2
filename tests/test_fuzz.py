"""Property-based fuzzing of every input a user hands sdsim: the scenario schema (values derived
from the pydantic models plus adversarial ones, YAML aliases and deep nesting), the GuideLLM and
vLLM report readers, the ``config.json`` loader, and the request bodies of `sdsim serve`.

For every generated input the contract must hold: **exit code 2 and one line naming the field
that was broken** (or a field the broken one is checked against), or **a valid run whose summary
is strict JSON with finite numbers** (a NaN only where ``sdsim run`` explains it), within bounded
time (a hard alarm per example) and memory (the process's peak resident size). For the server:
**HTTP 400 with one line naming the field** (``param`` the same), or a valid response (usage
counting the tokens sent), and the server still answering.

Size: the CI profile (the default, ``make test``) runs a fixed, derandomized set of examples
(120 scenario mutations, 40 YAML-level attacks, 120 report mutations, 80 config.json mutations,
120 request bodies); ``HYPOTHESIS_PROFILE=thorough`` (``make fuzz``) runs 25 times as many,
randomly (``SDSIM_FUZZ_SCALE=N`` sets the multiple).
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sdsim import ScenarioError, load_scenario
from sdsim.cli import main
from sdsim.cli.app import summary_notes
from sdsim.scenario import Scenario
from tests.conftest import ROOT

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
SCALE = int(os.environ.get("SDSIM_FUZZ_SCALE", 25 if THOROUGH else 1))
EXAMPLE_TIMEOUT_S = 90  # hard bound of one example (a hang fails the test)
MAX_RSS_GB = 6.0  # peak resident size of the test process

BASE: dict[str, Any] = yaml.safe_load((ROOT / "scenarios/default.yaml").read_text())
BASE["workload"]["num_requests"] = 60
BASE["warmup_requests"] = 5


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        derandomize=not THOROUGH,
        suppress_health_check=list(HealthCheck),
        database=None,
    )


@contextmanager
def bounded(seconds: int = EXAMPLE_TIMEOUT_S) -> Iterator[None]:
    """Fail an example that runs longer than ``seconds`` or pushes the peak RSS past the cap."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"example ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak_gb < MAX_RSS_GB, f"peak RSS {peak_gb:.1f} GB"


# --------------------------------------------------------------------------- schema walk


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _bounds(meta: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in meta:
        for k in ("ge", "gt", "le", "lt", "min_length"):
            v = getattr(m, k, None)
            if v is not None:
                out[k] = v
    return out


def leaves(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Every field of the scenario schema: (dotted path, annotation, numeric bounds)."""
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        tp = _unwrap(f.annotation)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            yield from leaves(tp, path + ".")
            continue
        yield path, f.annotation, _bounds(list(f.metadata))


LEAVES = list(leaves(Scenario))


def valid_values(tp: Any, b: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a field's type and bounds allow (from the pydantic annotation)."""
    meta: list[Any] = []
    while get_origin(tp) is Annotated:
        args = get_args(tp)
        tp, meta = args[0], meta + list(args[1:])
    b = {**_bounds(meta), **b}
    origin = get_origin(tp)
    if origin in (Union, UnionType):
        return st.one_of([valid_values(a, {}) for a in get_args(tp)])
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        return st.lists(valid_values(item, {}), min_size=b.get("min_length", 0), max_size=6)
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo = b.get("ge", b["gt"] + 1 if "gt" in b else -(2**63))
        hi = b.get("le", b["lt"] - 1 if "lt" in b else 2**63)
        return st.integers(lo, hi) | st.sampled_from([lo, hi])
    if tp is float:
        lo = b.get("ge", b.get("gt", -1e308))
        hi = b.get("le", b.get("lt", 1e308))
        ends = [v for v, open_ in ((lo, "gt" in b), (hi, "lt" in b)) if not open_]
        inner = st.floats(lo, hi, exclude_min="gt" in b, exclude_max="lt" in b, allow_nan=False)
        return inner | st.sampled_from(ends) if ends else inner
    if tp is str:
        return st.text(max_size=20) | st.sampled_from(["llama-3.1-8b", "h100-sxm", "/no/file"])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = {n: valid_values(f.annotation, _bounds(list(f.metadata)))
                  for n, f in tp.model_fields.items()}
        return st.fixed_dictionaries({}, optional=fields)
    return st.none()


ADVERSARIAL = st.sampled_from(
    [
        0, -1, 1, 2**31, 2**63, 2**64, -(2**63), 10**30, 0.0, -0.0, 5e-324, 1e-300, 1e308,
        -1e308, math.inf, -math.inf, math.nan, True, False, None, "", "x" * 10_000, "nan",
        "1e400", [], [[]], [1, [2, [3]]], {}, {"a": 1}, {"dist": "zipf"}, [0.5] * 1000,
    ]
)


# Fields a broken field is checked against: an error may name any of them.
RELATED: dict[str, tuple[str, ...]] = {
    "workload": ("workload", "warmup_requests", "server.num_gpu_blocks", "server.tp"),
    "warmup_requests": ("warmup_requests", "workload.num_requests"),
    "spec": ("spec", "acceptance.alpha", "server.max_num_batched_tokens", "server.num_gpu_blocks"),
    "acceptance": ("acceptance",),
    "server": ("server", "hardware", "workload", "spec"),
    "target": ("target", "server", "hardware", "workload"),
    "drafter": ("drafter", "server", "hardware"),
    "hardware": ("hardware", "server.num_gpu_blocks", "server.tp"),
    "costs": ("costs", "server.num_gpu_blocks", "hardware"),
    "limits": ("limits",),
    "seed": ("seed",),
    "name": ("name",),
    "description": ("description",),
}


def related(broken: str, named: str) -> bool:
    if named.startswith(broken) or broken.startswith(named.split("[")[0]):
        return True
    return any(named.startswith(r) for r in RELATED.get(broken.split(".")[0], ()))


def apply(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value
    return out


def finite_summary(text: str) -> dict[str, Any]:
    def refuse(name: str) -> Any:
        raise AssertionError(f"summary.json holds {name}")

    summary: dict[str, Any] = json.loads(text, parse_constant=refuse)
    return summary


def check_run(path: Path, broken: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Run ``sdsim run`` on a scenario file; check the contract either way."""
    out = path.parent / "out"
    with bounded():
        try:
            main(["run", str(path), "--out", str(out), "--json"])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert "Traceback" not in captured.err
    if code == 2:
        assert len(lines) == 1, captured.err
        named = lines[0].removeprefix("error: ").split(": ")[0]
        assert any(related(b, named) for b in broken), (broken, lines[0])
        return
    assert code == 0, captured.err
    summary = finite_summary((out / "summary.json").read_text())
    for k, v in summary.items():
        assert not (isinstance(v, float) and math.isinf(v)), k
    nulls = [k for k, v in summary.items() if v is None and k not in ("stable", "kv_blocks_total")]
    if nulls:
        # every undefined number is explained on stderr
        notes = " ".join(summary_notes({k: (math.nan if v is None else v)
                                        for k, v in summary.items()}))
        assert all(k in notes or k in ("stability_p",) for k in nulls), (nulls, notes)
    assert summary["completed"] >= 1 or summary["stop_reason"] != "completed"
    assert summary["e2e_mean"] is None or summary["e2e_mean"] >= 0


def runnable(data: dict[str, Any]) -> bool:
    """Whether a mutated scenario is small enough to simulate within the example's time bound
    (the fuzz checks validation on every example, the simulation on the small ones)."""
    wl = data.get("workload") or {}
    n = wl.get("num_requests", 2000)
    out = wl.get("output_tokens", 256)
    longest = out if isinstance(out, int) else 4096
    return isinstance(n, int) and n <= 400 and isinstance(longest, int) and n * longest <= 200_000


@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    one = st.sampled_from(LEAVES)
    picks = draw(st.lists(one, min_size=1, max_size=2, unique_by=lambda x: x[0]))
    out = []
    for path, tp, b in picks:
        value = draw(st.one_of(valid_values(tp, b), ADVERSARIAL))
        out.append((path, value))
    return out


@fuzz_settings(120)
@given(muts=mutations())
def test_fuzz_scenario_fields(
    muts: list[tuple[str, Any]], tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = BASE
    for path, value in muts:
        data = apply(data, path, value)
    d = tmp_path_factory.mktemp("scn")
    p = d / "s.yaml"
    try:
        p.write_text(yaml.safe_dump(data))
    except (ValueError, OverflowError):
        return  # not representable as YAML
    if not runnable(data):
        with bounded():
            try:
                load_scenario(p)
            except ScenarioError as exc:
                assert "\n" not in str(exc)
                assert any(related(path, exc.field) for path, _ in muts), (muts, str(exc))
        return
    check_run(p, [m[0] for m in muts], capsys)


def _bomb(depth: int, width: int) -> str:
    nested = f"&a0 [{', '.join(['1'] * width)}]"
    for i in range(1, depth):
        nested = f"&a{i} [" + ", ".join([nested] + [f"*a{i - 1}"] * (width - 1)) + "]"
    return nested


@fuzz_settings(40)
@given(
    path=st.sampled_from([p for p, _, _ in LEAVES]),
    attack=st.sampled_from(["bomb", "deep", "wide-bomb"]),
    size=st.integers(3, 12),
)
def test_fuzz_yaml_aliases_and_nesting(
    path: str, attack: str, size: int, tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = yaml.safe_dump(apply(BASE, path, "@@"))
    value = {
        "bomb": _bomb(size, 10),
        "wide-bomb": _bomb(4, size * 10),
        "deep": "[" * (size * 20) + "]" * (size * 20),
    }[attack]
    p = tmp_path_factory.mktemp("yaml") / "s.yaml"
    p.write_text(text.replace("'@@'", value))
    t0 = time.monotonic()
    check_run(p, [path, str(p)], capsys)
    assert time.monotonic() - t0 < 60


# --------------------------------------------------------------------------- reports

GUIDELLM = json.loads((ROOT / "tests/fixtures/guidellm_small.json").read_text())
VLLM = json.loads((ROOT / "tests/fixtures/vllm_small.json").read_text())


def tree_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from tree_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            yield from tree_paths(v, (*prefix, i))


def set_at(data: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    out = json.loads(json.dumps(data))
    if not path:
        return value
    node = out
    for p in path[:-1]:
        node = node[p]
    if delete and isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return out


def dotted(path: tuple[Any, ...]) -> str:
    s = "report"
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else f".{p}"
    return s


REPORT_PATHS = [("guidellm", p) for p in tree_paths(GUIDELLM)] + [
    ("vllm", p) for p in tree_paths(VLLM)
]


@fuzz_settings(120)
@given(
    target=st.sampled_from(REPORT_PATHS),
    value=ADVERSARIAL | st.floats() | st.integers(),
    delete=st.booleans(),
)
def test_fuzz_report_readers(
    target: tuple[str, tuple[Any, ...]], value: Any, delete: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from sdsim.report_formats import load_report

    kind, path = target
    data = set_at(GUIDELLM if kind == "guidellm" else VLLM, path, value, delete)
    f = tmp_path_factory.mktemp("rep") / "r.json"
    f.write_text(json.dumps(data))
    with bounded():
        try:
            rep = load_report(f)
        except ScenarioError as exc:
            assert "\n" not in str(exc)
            named = exc.field
            assert named.startswith("report"), str(exc)
            # the error names the broken field, a field inside it, the structure holding it, or
            # a sibling it is checked against (timings must run forward)
            broken = dotted(path)
            parent = dotted(path[:-1])
            assert named.startswith((broken, parent)) or broken.startswith(named), (broken, exc)
            return
    req = rep.requests
    for c in ("ttft", "e2e", "tpot", "start", "end"):
        x = req[c].to_numpy(dtype=float)
        assert not (x[~(x != x)] == math.inf).any(), c
        assert (x[x == x] >= -1e-3).all(), (c, x)
    assert (req["output_tokens"] >= 0).all() and (req["prompt_tokens"] >= 0).all()
    num = rep.benchmarks.select_dtypes("number").to_numpy(dtype=float)
    assert not (abs(num[num == num]) == math.inf).any()


# --------------------------------------------------------------------------- config.json

CONFIG = {
    "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256,
    "max_position_embeddings": 131072, "model_type": "llama", "tie_word_embeddings": True,
    "num_experts": 0, "num_experts_per_tok": 0, "sliding_window": None, "layer_types": [],
}

NUMBERS = st.sampled_from(["Infinity", "-Infinity", "NaN", "1e400", "-128", "0", "1.5", "1e30",
                           '"abc"', "null", "[]", "{}", "true", "3", "7", "100000000"])


@fuzz_settings(80)
@given(keys=st.lists(st.sampled_from(sorted(CONFIG)), min_size=1, max_size=3, unique=True),
       values=st.lists(NUMBERS, min_size=3, max_size=3))
def test_fuzz_config_json(
    keys: list[str], values: list[str], tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = json.dumps({**CONFIG, **{k: f"@{k}@" for k in keys}})
    for k, v in zip(keys, values, strict=False):
        text = text.replace(f'"@{k}@"', v)
    d = tmp_path_factory.mktemp("cfg")
    (d / "config.json").write_text(text)
    argv = ["costs", str(ROOT / "scenarios/default.yaml"), "--json"]
    argv += ["--set", f"target={d / 'config.json'}"]
    with bounded():
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == 2:
        lines = [ln for ln in captured.err.splitlines() if ln.strip()]
        assert len(lines) == 1, captured.err
        named = lines[0].removeprefix("error: ").split(": ")[0]
        # the model file, or what the model is checked against (TP, context, GPU memory)
        assert named in ("target", "server.tp", "workload.prompt_tokens", "workload.output_tokens",
                         "hardware", "server.num_gpu_blocks"), lines[0]
        if named == "target":
            assert any(k in lines[0] for k in keys) or "config.json" in lines[0], (keys, lines[0])
        return
    assert code == 0, captured.err
    table = json.loads(captured.out, parse_constant=lambda c: pytest.fail(f"{c} in costs"))
    for row in table["rows"]:
        assert all(math.isfinite(v) and v >= 0 for v in row.values())


# --------------------------------------------------------------------------- server request bodies

SERVE_BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "completion": ("/v1/completions", {"model": "m", "prompt": "hello world", "max_tokens": 4}),
    "completion-ids": (
        "/v1/completions",
        {"prompt": [1, 2, 3], "max_tokens": 4, "stream": True,
         "stream_options": {"include_usage": True}},
    ),
    "chat": (
        "/v1/chat/completions",
        {"messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
         "max_completion_tokens": 4, "stream": True,
         "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    ),
}
SERVE_PATHS = [(k, p) for k, (_, body) in SERVE_BODIES.items() for p in tree_paths(body)]
SERVE_MAX_BODY = 2**20
# A request field a broken one is checked against: an error may name it.
SERVE_RELATED = {
    "prompt": ("max_tokens",),  # a longer prompt leaves less context for the output
    "messages": ("max_completion_tokens",),
    "stream": ("stream_options",),  # stream options need stream: true
}


def field_name(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@pytest.fixture(scope="module")
def serve_client() -> Iterator[Any]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's TestClient: the httpx deprecation notice
        from starlette.testclient import TestClient

    from sdsim.serve import create_app
    from tests.conftest import small

    # 1,000 times faster than real time, so valid requests finish at once
    app = create_app(small(), time_scale=1e-3, default_max_tokens=8, max_body_bytes=SERVE_MAX_BODY)
    with TestClient(app) as client:
        yield client


def check_served(r: Any, stream: bool, broken: str) -> None:
    """A refusal naming the broken field (or one it is checked against), or a valid response."""
    if r.status_code == 400:
        err = r.json()["error"]
        msg = err["message"]
        assert "\n" not in msg and ": " in msg, msg
        named = msg.split(": ")[0]
        assert err["param"] == (None if named == "request body" else named), err
        related = SERVE_RELATED.get(broken.split("[")[0].split(".")[0], ())
        assert (
            named.startswith(broken) or broken.startswith(named) or named in related
            or (named == "request body" and broken == "")
        ), (broken, msg)
        return
    assert r.status_code == 200, r.text
    if not stream:
        body = r.json()
        usage = body["usage"]
        text = body["choices"][0].get("text") or body["choices"][0]["message"]["content"]
        assert len(text.split()) == usage["completion_tokens"] >= 1
        return
    lines = [ln for ln in r.text.splitlines() if ln]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    msgs = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    done = sum(
        len((m["choices"][0].get("text") or m["choices"][0]["delta"].get("content", "")).split())
        for m in msgs if m["choices"]
    )
    usage = [m["usage"] for m in msgs if m.get("usage")]
    if usage:
        assert usage[-1]["completion_tokens"] == done >= 1


@fuzz_settings(120)
@given(
    target=st.sampled_from(SERVE_PATHS),
    value=ADVERSARIAL | st.integers() | st.floats() | st.text(max_size=30),
    delete=st.booleans(),
    attack=st.sampled_from(["value"] * 6 + ["deep", "raw", "huge"]),
    raw=st.binary(max_size=64),
)
def test_fuzz_server_request_bodies(
    target: tuple[str, tuple[Any, ...]], value: Any, delete: bool, attack: str, raw: bytes,
    serve_client: Any,
) -> None:
    kind, path = target
    url, base = SERVE_BODIES[kind]
    broken = field_name(path)
    if attack == "value":
        content = json.dumps(set_at(base, path, value, delete)).encode()
    elif attack == "deep":
        # within the parser's limit (200 levels; the paths add at most 5) or past it
        depth = 150 + len(raw) * 20
        content = json.dumps(set_at(base, path, "@@", False)).encode()
        content = content.replace(b'"@@"', b"[" * depth + b"]" * depth)
        broken = "request body" if depth > 200 else broken
    elif attack == "raw":
        content, broken = raw, ""  # anything may be named (random bytes may be valid JSON)
    else:  # a body over the size limit
        content, broken = b'{"prompt": "' + b"x" * SERVE_MAX_BODY + b'"}', "request body"
    sent = json.loads(content) if attack == "value" else None
    stream = isinstance(sent, dict) and sent.get("stream") is True
    t0 = time.monotonic()
    with bounded(30):
        r = serve_client.post(url, content=content, headers={"content-type": "application/json"})
        check_served(r, stream, broken)
    assert time.monotonic() - t0 < 20
    assert serve_client.get("/health").status_code == 200
