"""Vectorised step costs: ``steps`` over arrays of shapes (what the analytic model and the
engine's price cache call) equals ``step`` bit for bit, and the scalar ``step`` gives the pinned
floats.

Equality is tested with ``==`` (no tolerance): both paths do the same IEEE float64 operations in
the same order (table reads for the pass costs), so any difference is a bug.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sdsim
from sdsim.costs import StepShape, StepTimes, build_cost_model, step_times
from sdsim.costs.kernel import KernelStepCost
from sdsim.costs.profile import GridInterpolator, MonotoneCurve, ProfileExtrapolationWarning
from sdsim.costs.step import LinearStepCost, StepCostModel

ROOT = Path(__file__).resolve().parents[1]
CPU_BUNDLE = ROOT / "profiles/cpu-numpy-llama-3.2-1b"

# (scenario file, overrides): the shipped cost sources and the operator paths they exercise
# (tensor parallelism, MoE experts, n-gram CPU drafting, sliding-window attention, a measured
# profile with its own attention grids, the linear model with and without drafter prefill)
ROOF = {"costs.source": "roofline"}
CAL = {"costs.source": "calibrated"}
SOURCES: dict[str, tuple[str, dict[str, object]]] = {
    "default": ("default.yaml", ROOF),
    "gpt-oss": ("default.yaml", {"target": "gpt-oss-20b", "drafter.kind": "eagle", **ROOF}),
    "tp4": ("llama70b-tp4-a100.yaml", ROOF),
    "moe": ("moe-qwen3-30b-a3b.yaml", ROOF),
    "ngram": ("ngram-summarization.yaml", ROOF),
    # the calibrated model (the default): its floats move when the calibration is refitted, so
    # only step == steps is checked, not a hash
    "calibrated": ("default.yaml", CAL),
    "calibrated-eagle3": ("default.yaml", {"drafter.kind": "eagle3", **CAL}),
    "calibrated-model-tp2": ("llama70b-tp4-a100.yaml", {"drafter.tp": 2, **CAL}),
    "calibrated-moe": ("moe-qwen3-30b-a3b.yaml", CAL),
    "calibrated-ngram": ("ngram-summarization.yaml", CAL),
    "calibrated-gpt-oss": ("default.yaml", {"target": "gpt-oss-20b", "hardware": "h200", **CAL}),
    "profile": (
        "default.yaml",
        {
            "costs.source": "profile",
            "costs.profile": str(CPU_BUNDLE),
            "target": "llama-3.2-1b",
            "drafter.kind": "eagle",
        },
    ),
    "linear": ("default.yaml", {"costs.source": "linear"}),
    "linear-ngram": ("ngram-summarization.yaml", {"costs.source": "linear"}),
}

# SHA-256 of the float64 (total, prefill, draft, verify, overhead) of `step` over _shapes(),
# written by the code before this change (commit 267b5f2): the rewritten scalar step must give
# the very same floats (the engine's pinned frames rely on it too). The roofline cases name
# `costs.source: roofline` (the scenarios' `auto` is the calibrated model).
STEP_HASHES = {
    "default": "ab58fb7fe73419fb51d62fe33ff7c6e28b99739df2fabe1a223aac4124381cd4",
    "gpt-oss": "f48841a3663986e48356f965c78ebc557e7e458289ada090ecb56bdbb609579c",
    "tp4": "21f76087ee6861889c6d4cfaf1209ca90246f96e549846136ddb68e25b6a2f9c",
    "moe": "3e58d39bd8e530919c5547a36b991d2d9dea91193e909110087c945b7da86b7d",
    "ngram": "3c414b76f92bb56a08c8700efdcfc025dadbf8d0e79e37d2b9895ab1a5e124c1",
    "profile": "7a3ef38f02439f1ea0668b1db97e41d57326a6098772dfc2afa94612252364a7",
    "linear": "aefeec918bbf83beef11863e1f933b4b2aba6fbf9e73390855b83f434e509a5b",
    "linear-ngram": "1fd0ea7b0f5ea35fb2820cbab817486d6b3a030b5164106f798ca22535a7c4f0",
}


def _model(name: str) -> StepCostModel:
    f, over = SOURCES[name]
    scn = sdsim.load_scenario(ROOT / "scenarios" / f)
    return build_cost_model(scn.with_overrides(over) if over else scn)


def _shapes() -> list[StepShape]:
    rng = np.random.default_rng(20261129)
    n = 3000
    b = rng.integers(0, 300, n) * (rng.random(n) < 0.9)
    ctx = b * rng.integers(1, 5000, n)
    k = rng.integers(0, 8, n)
    pf = rng.integers(1, 5000, n) * (rng.random(n) < 0.5)
    ps = rng.integers(0, 5, n) * (pf > 0)
    pc = pf + rng.integers(0, 8000, n) * (pf > 0)
    return [StepShape(*map(int, t)) for t in zip(b, ctx, k, pf, pc, ps, strict=True)]


def _columns(shapes: list[StepShape]) -> list[np.ndarray]:
    return [np.array([s[i] for s in shapes], dtype=np.int64) for i in range(6)]


@pytest.mark.parametrize("name", list(SOURCES))
def test_scalar_step_unchanged_and_steps_equal_step(name: str) -> None:
    model = _model(name)
    shapes = _shapes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProfileExtrapolationWarning)
        rows = [model.step(s) for s in shapes]
        vec = step_times(model, *_columns(shapes))
    h = hashlib.sha256()
    for r in rows:
        h.update(struct.pack("<5d", *r))
    if name in STEP_HASHES:
        assert h.hexdigest() == STEP_HASHES[name]
    assert isinstance(vec, StepTimes)
    want = np.array([tuple(r) for r in rows])
    got = np.stack(vec, axis=1)
    assert got.shape == want.shape
    assert np.array_equal(got, want), np.argwhere(got != want)[:5]


_shape_st = st.tuples(
    st.integers(0, 512),  # decode seqs
    st.integers(1, 20_000),  # mean context per decoding request
    st.integers(0, 12),  # k
    st.integers(0, 9000),  # prefill tokens
    st.integers(0, 30_000),  # cached tokens before the chunks
    st.integers(0, 8),  # prefill seqs
)


@pytest.mark.parametrize(
    "name", ["default", "gpt-oss", "ngram", "profile", "linear", "calibrated", "calibrated-eagle3"]
)
@settings(max_examples=25)
@given(raw=st.lists(_shape_st, min_size=1, max_size=40))
def test_steps_equal_step_hypothesis(name: str, raw: list[tuple[int, ...]]) -> None:
    model = _model(name)
    shapes = [
        StepShape(b, b * c, k, pf, pf + cached if pf else 0, ps if pf else 0)
        for b, c, k, pf, cached, ps in raw
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProfileExtrapolationWarning)
        vec = step_times(model, *_columns(shapes))
        for i, s in enumerate(shapes):
            assert tuple(model.step(s)) == tuple(float(a[i]) for a in vec), s


def test_steps_broadcast_and_fallback_for_models_without_steps() -> None:
    """Arrays broadcast like numpy's; a model with only ``step`` goes through the loop."""
    model = _model("default")
    assert isinstance(model, KernelStepCost)
    n = np.arange(0, 9)[:, None]
    q = np.arange(0, 4)[None, :]
    vec = model.steps(n, n * 700, 3, q * 512, q * 512, q)
    assert vec.total.shape == (9, 4)

    class OnlyStep:
        def step(self, shape: StepShape) -> sdsim.StepTime:
            return model.step(shape)

        def linearize(self, k: int, max_batch: int = 256, context: int = 1024) -> object:
            raise NotImplementedError

    loop = step_times(OnlyStep(), n, n * 700, 3, q * 512, q * 512, q)  # type: ignore[arg-type]
    for a, b in zip(vec, loop, strict=True):
        assert np.array_equal(a, b)
    lin = _model("linear")
    assert isinstance(lin, LinearStepCost)
    one = lin.steps(0, 0, 2)
    assert one.total.shape == () and float(one.total) == lin.step(StepShape(0, 0, 2)).total


def test_profile_interpolators_elementwise_equal_scalar() -> None:
    rng = np.random.default_rng(7)
    xs = np.sort(rng.choice(np.arange(1.0, 500.0), 12, replace=False))
    c = MonotoneCurve(xs, np.cumsum(rng.random(12)), label="t")
    x = np.concatenate((rng.uniform(-10, 600, 200), xs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProfileExtrapolationWarning)
        assert np.array_equal(c.at(x), np.array([c(v) for v in x.tolist()]))
        axes = [[1.0, 4.0, 16.0], [1.0], [0.0, 128.0, 1024.0, 4096.0]]
        g = GridInterpolator(axes, rng.random((3, 1, 4)), label="g")
        pts = [rng.uniform(0, 20, 100), rng.uniform(0, 3, 100), rng.uniform(-5, 5000, 100)]
        want = [g(a, b, z) for a, b, z in zip(*(p.tolist() for p in pts), strict=True)]
        assert np.array_equal(g.at(*pts), np.array(want))
    # the elementwise path warns like the scalar one when asked outside the grid
    c2 = MonotoneCurve([1.0, 2.0], [1.0, 2.0], label="w")
    with pytest.warns(ProfileExtrapolationWarning):
        c2.at(np.array([5.0]))
