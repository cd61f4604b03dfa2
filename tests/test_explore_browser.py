"""`sdsim explore` in a real browser: headless Chromium driven through chromium-driver (selenium).

One explorer (the real command, on 127.0.0.1, any free port) and one browser serve every test of
this module, in order: the page loads offline with no console error (screenshot written to
``out/test-artefacts/``), moving a control redraws the series ``sdsim.predict`` gives, "simulate
here" adds the points ``sdsim.simulate`` gives, bad input shows its message beside the control, and
scenario files load and download.

Chromium comes from Debian (``chromium``, ``chromium-driver``); ``make test`` installs them when
missing. Where they cannot be installed the module skips, saying so, except under CI (``CI`` set),
where a missing browser fails the run.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sdsim
from sdsim.explore.panels import RATE_FRACTIONS
from sdsim.scenario import scenario_from_dict
from tests.conftest import ROOT

pytestmark = pytest.mark.xdist_group("explore-browser")

ARTEFACTS = Path(os.environ.get("SDSIM_TEST_ARTEFACTS", ROOT / "out" / "test-artefacts"))
START_TIMEOUT_S = 240  # a fresh checkout compiles the model's kernels on the first start
WAIT_S = 60


def _missing(what: str) -> None:
    why = (
        f"{what} not available: the browser test needs Debian's chromium and chromium-driver "
        "(`make test` installs them with apt-get) and the selenium package"
    )
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _chromium() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        _missing("headless Chromium")
    assert browser is not None and driver is not None
    return browser, driver


@pytest.fixture(scope="module")
def explorer() -> Iterator[str]:
    """The real ``sdsim explore`` command on 127.0.0.1; yields its URL."""
    exe = Path(sys.executable).with_name("sdsim")
    entry = "import sys; from sdsim.cli import main; main(sys.argv[1:])"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", entry]
    proc = subprocess.Popen(
        [*cmd, "explore", str(ROOT / "scenarios/default.yaml"), "--host", "127.0.0.1",
         "--port", "0", "--set", "workload.num_requests=400", "--set", "warmup_requests=40"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # keep reading so the server never blocks on a full pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    url, seen, deadline = None, [], time.monotonic() + START_TIMEOUT_S
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        seen.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        url = m.group(1) if m else None
    try:
        assert url is not None, f"sdsim explore did not start: {''.join(seen)}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def page(explorer: str, downloads: Path) -> Iterator[Any]:
    """Headless Chromium on the explorer's page, first view drawn."""
    browser, driver_path = _chromium()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        # nothing but this machine resolves: the page must need no network
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(driver_path))
    try:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.set_script_timeout(WAIT_S)
        driver.get(explorer)
        _wait(driver, "return window.sdsimExplore && window.sdsimExplore.ready")
        yield driver
    finally:
        driver.quit()


# --------------------------------------------------------------------------- helpers


def _wait(driver: Any, script: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = driver.execute_script(script)
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _seq(driver: Any) -> int:
    return int(driver.execute_script("return window.sdsimExplore.seq"))


def _settle(driver: Any, after: int) -> None:
    """Wait until the page has answered a change made after view number ``after``."""
    _wait(driver, f"const S = window.sdsimExplore; return S.seq > {after} && !S.busy")


def _trace(driver: Any, plot: str, uid: str) -> dict[str, Any]:
    t = driver.execute_script(
        "const t = document.getElementById(arguments[0]).data.find((d) => d.uid === arguments[1]);"
        "return t ? {x: Array.from(t.x), y: Array.from(t.y), error_y: t.error_y || null} : null;",
        plot,
        uid,
    )
    assert t is not None, (plot, uid)
    return dict(t)


def _scenario(driver: Any) -> sdsim.Scenario:
    return scenario_from_dict(driver.execute_script("return window.sdsimExplore.view.scenario"))


def _severe(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _type(driver: Any, control: str, text: str) -> None:
    """Replace a text control's value as a person would, then press Enter."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, f"c-{control}")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text, Keys.ENTER)


def _record(name: str, data: Any) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS / name).write_text(json.dumps(data, indent=1))


# --------------------------------------------------------------------------- tests


def test_page_loads_offline_without_console_errors(page: Any, explorer: str) -> None:
    from matplotlib.image import imread

    assert _severe(page) == []
    urls = page.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name).concat([location.href])"
    )
    assert urls and all(u.startswith(explorer) for u in urls), urls
    assert len(_trace(page, "plot-latency", "model-mean")["x"]) == len(RATE_FRACTIONS)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "explore-default.png"
    assert page.save_screenshot(str(shot))
    img = imread(str(shot))[..., :3]
    assert img.shape[0] >= 600 and img.shape[1] >= 1000
    # not blank: the four panels put ink on a good share of the page, in many colours
    ink = (img < 0.9).any(axis=2).mean()
    colours = len({tuple(p) for p in (img[::4, ::4] * 255).astype(int).reshape(-1, 3)})
    assert ink > 0.05 and colours > 100, (ink, colours)


def test_moving_a_control_redraws_what_predict_gives(page: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = _trace(page, "plot-latency", "model-mean")
    n = _seq(page)
    page.find_element(By.ID, "r-k").send_keys(Keys.ARROW_RIGHT)  # the k slider: 4 -> 5
    _settle(page, n)
    assert page.find_element(By.ID, "c-k").get_attribute("value") == "5"
    scn = _scenario(page)
    assert scn.spec.k == 5
    mean = _trace(page, "plot-latency", "model-mean")
    p99 = _trace(page, "plot-latency", "model-p99")
    speed = _trace(page, "plot-speedup", "model-speedup")
    assert mean["y"] != before["y"]
    for i, rate in enumerate(mean["x"]):
        p = sdsim.predict(scn.with_overrides({"workload.rate": rate}), rates=[], k_values=[5])
        assert mean["y"][i] / 1e3 == pytest.approx(p.summary["e2e_mean"], rel=1e-12), i
        assert p99["y"][i] / 1e3 == pytest.approx(p.summary["e2e_p99"], rel=1e-12), i
        assert speed["y"][i] == pytest.approx(p.speedup, rel=1e-12), i
    k_latency = page.execute_script("return window.sdsimExplore.latencies.slice(-1)[0]")

    # the rate slider: only the point at the chosen rate moves (the curves are cached)
    n = _seq(page)
    page.find_element(By.ID, "r-rate").send_keys(Keys.ARROW_LEFT)
    _settle(page, n)
    scn = _scenario(page)
    assert scn.workload.rate < 25.0
    here = _trace(page, "plot-latency", "here")
    p = sdsim.predict(scn, rates=[], k_values=[5])
    assert here["x"] == [scn.workload.rate, scn.workload.rate]
    assert [y / 1e3 for y in here["y"]] == pytest.approx(
        [p.summary["e2e_mean"], p.summary["e2e_p99"]], rel=1e-12
    )
    law = _trace(page, "plot-batch", "model-law")
    assert sum(law["y"]) == pytest.approx(1.0, abs=1e-6)
    rate_latency = page.execute_script("return window.sdsimExplore.latencies.slice(-1)[0]")
    _record("explore-latency.json", {"k_change_ms": k_latency, "rate_change_ms": rate_latency})
    print(f"control-to-redraw: k {k_latency:.0f} ms, rate {rate_latency:.0f} ms")
    assert _severe(page) == []


def test_simulate_here_adds_simulated_points(page: Any) -> None:
    from selenium.webdriver.common.by import By

    from sdsim.metrics import t_confidence_interval

    _type(page, "runs", "2")
    page.find_element(By.ID, "simulate").click()
    _wait(page, "return (window.sdsimExplore.simsDone || 0) >= 1", timeout=180)
    scn = _scenario(page)
    sim = _trace(page, "plot-latency", "sim-mean")
    assert sim["x"] == [scn.workload.rate]
    assert len(sim["error_y"]["array"]) == 1 and sim["error_y"]["array"][0] > 0
    assert len(_trace(page, "plot-latency", "sim-p99")["y"]) == 1
    assert len(_trace(page, "plot-speedup", "sim-speedup")["y"]) == 1
    assert len(_trace(page, "plot-batch", "sim-law")["y"]) > 5
    # the points are what sdsim.simulate gives for the page's scenario, seeds seed and seed + 1
    runs = [sdsim.simulate(scn, seed=scn.seed + i).summary["e2e_mean"] for i in range(2)]
    m, _, hi = t_confidence_interval(runs)
    assert sim["y"][0] / 1e3 == pytest.approx(m, rel=1e-12)
    assert sim["error_y"]["array"][0] / 1e3 == pytest.approx(hi - m, rel=1e-9)
    assert "2 runs × 400 requests" in page.find_element(By.ID, "sim-status").text
    assert _severe(page) == []


def test_bad_input_shows_a_message_beside_the_control(page: Any) -> None:
    from selenium.webdriver.common.by import By

    rate = page.find_element(By.ID, "c-rate").get_attribute("value")
    for control, typed, says in (
        ("rate", "abc", "workload.rate: must be a number (got 'abc')"),
        ("rate", "-4", "workload.rate: Input should be greater than 0"),
        ("gpu", "h900", "hardware: unknown GPU 'h900'; known: a100-80gb"),
    ):
        n = _seq(page)
        _type(page, control, typed)
        _settle(page, n)
        assert says in page.find_element(By.ID, f"e-{control}").text
        assert "invalid" in page.find_element(By.ID, f"c-{control}").get_attribute("class")
        assert page.find_element(By.ID, "e-general").text == ""
        # put it back: the message goes, the panels are drawn again
        n = _seq(page)
        _type(page, control, rate if control == "rate" else "h100-sxm")
        _settle(page, n)
        assert page.find_element(By.ID, f"e-{control}").text == ""
        assert page.execute_script("return document.body.dataset.state") == "ready"


def test_scenario_files_load_and_download(page: Any, downloads: Path) -> None:
    from selenium.webdriver.common.by import By

    n = _seq(page)
    page.find_element(By.ID, "upload").send_keys(str(ROOT / "scenarios/plain.yaml"))
    _settle(page, n)
    plain = sdsim.load_scenario(ROOT / "scenarios/plain.yaml")
    assert _scenario(page) == plain
    assert page.find_element(By.ID, "c-k").get_attribute("value") == "0"
    page.find_element(By.ID, "download").click()
    target = downloads / f"{plain.name}.yaml"
    deadline = time.monotonic() + WAIT_S
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.exists(), list(downloads.iterdir())
    assert sdsim.load_scenario(target) == plain
