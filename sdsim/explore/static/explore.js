// sdsim explore: the page's controls, its calls to the local JSON API, and the four panels.
// Everything it loads comes from the sdsim server that served it (plotly.js included).
"use strict";

(() => {
  const S = {
    ready: false,      // the first view is drawn
    busy: false,       // a view request is in flight
    seq: 0,            // view requests answered (drawn or refused)
    latencies: [],     // ms from a control change to the redrawn panels, one per answered change
    timings: [],       // the same split: {answer: until the server's answer, draw: redrawing}
    view: null,        // the last drawn view (see sdsim/explore/panels.py: model_view)
    base: null,        // the base scenario (as started, or as loaded from a file)
    fields: {},        // control -> scenario field
    sims: [],          // simulated points: {key, rate, stats, speedup, batch_law, runs, seeds}
    lastError: null,
  };
  window.sdsimExplore = S;

  const $ = (id) => document.getElementById(id);
  const MS = 1e3;
  const COLORS = { mean: "#1f6fb2", p99: "#d9730d", sim: "#111", here: "#b3261e",
                   overhead: "#9aa5b1", draft: "#7cb6e6", verify: "#1f6fb2", plain: "#d9730d" };
  const PLOT_CONFIG = { displayModeBar: false, responsive: true };
  const TEXT_DEBOUNCE_MS = 250;

  // ------------------------------------------------------------------ controls

  function input(name) { return $("c-" + name); }

  function readControls() {
    const out = {};
    for (const name of Object.keys(S.fields)) {
      const e = input(name);
      if (!e) continue;
      out[name] = e.type === "checkbox" ? e.checked : e.value;
    }
    return out;
  }

  function fmt(v) {
    if (typeof v === "number") return String(Number(v.toPrecision(10)));
    return v === null || v === undefined ? "" : String(v);
  }

  function setControls(values) {
    for (const [name, v] of Object.entries(values)) {
      const e = input(name);
      if (!e) continue;
      if (e.type === "checkbox") e.checked = Boolean(v);
      else e.value = fmt(v);
      const r = $("r-" + name);
      if (r && Number.isFinite(Number(v))) r.value = String(v);
    }
    updateVisibility();
  }

  function updateVisibility() {
    const mode = input("alpha_mode").value;
    for (const div of document.querySelectorAll(".ctl[data-modes]")) {
      div.hidden = !div.dataset.modes.split(" ").includes(mode);
    }
    for (const div of document.querySelectorAll(".ctl[data-drafter]")) {
      div.hidden = input("drafter").value !== div.dataset.drafter;
    }
    for (const div of document.querySelectorAll(".ctl[data-source]")) {
      div.hidden = input("cost_source").value !== div.dataset.source;
    }
  }

  // switching to per-position alpha starts from the constant alpha at every position the draft
  // length (or the adaptive policy's k_max) needs
  function prefillPositions() {
    const list = input("alpha_list");
    if (input("alpha_mode").value !== "per-position" || list.value.trim() !== "") return;
    const k = Number(input("k").value) || 1;
    const kMax = input("adaptive").checked ? S.base.spec.k_max : 0;
    list.value = Array(Math.max(k, kMax, 1)).fill(input("alpha").value).join(", ");
  }

  function fillChoices(choices) {
    for (const [name, list] of Object.entries(choices)) {
      if (!Array.isArray(list)) continue;
      const target = $("l-" + name) || input(name);
      if (!target || !(target.tagName === "DATALIST" || target.tagName === "SELECT")) continue;
      target.replaceChildren(...list.map((v) => {
        const o = document.createElement("option");
        o.value = v;
        o.textContent = v;
        return o;
      }));
    }
  }

  // ------------------------------------------------------------------ errors

  function clearErrors() {
    for (const e of document.querySelectorAll(".err")) e.textContent = "";
    for (const e of document.querySelectorAll(".invalid")) e.classList.remove("invalid");
    S.lastError = null;
  }

  function showError(data, fallback) {
    S.lastError = data;
    const text = (data && data.error) || "request failed";
    const spot = (data && data.control && $("e-" + data.control)) || $(fallback || "e-general");
    spot.textContent = text;
    if (data && data.control) {
      for (const id of ["c-" + data.control, "r-" + data.control]) {
        if ($(id)) $(id).classList.add("invalid");
      }
    }
  }

  // ------------------------------------------------------------------ server calls

  async function call(url, body, contentType) {
    const r = await fetch(url, {
      method: body === undefined ? "GET" : "POST",
      headers: body === undefined ? {} : { "Content-Type": contentType || "application/json" },
      body: body === undefined ? undefined : (typeof body === "string" ? body : JSON.stringify(body)),
    });
    let data;
    try { data = await r.json(); } catch (e) { data = { error: `HTTP ${r.status}` }; }
    return { ok: r.ok, status: r.status, data };
  }

  // One view request at a time; changes made meanwhile are folded into the next one, and the
  // latency of a change runs from its event to the end of the redraw that shows it.
  let pendingSince = null;
  let inflight = false;

  function changed(t0) {
    if (pendingSince === null) pendingSince = t0 === undefined ? performance.now() : t0;
    if (!inflight) pump();
  }

  async function pump() {
    inflight = true;
    S.busy = true;
    while (pendingSince !== null) {
      const t0 = pendingSince;
      pendingSince = null;
      document.body.dataset.state = "busy";
      let r;
      try {
        r = await call("/api/view", { base: S.base, controls: readControls() });
      } catch (e) {
        r = { ok: false, data: { error: "the sdsim server does not answer (stopped?)" } };
      }
      if (r.ok) {
        const t1 = performance.now();
        clearErrors();
        S.view = r.data;
        await drawAll();
        const t2 = performance.now();
        S.latencies.push(t2 - t0);
        S.timings.push({ answer: t1 - t0, draw: t2 - t1 });
        document.body.dataset.state = "ready";
        S.ready = true;
      } else {
        clearErrors();
        showError(r.data);
        document.body.dataset.state = "error";
      }
      S.seq += 1;
    }
    inflight = false;
    S.busy = false;
  }

  // ------------------------------------------------------------------ drawing

  const ms = (a) => a.map((v) => (v === null ? null : v * MS));
  const vline = (x, color, dash) => ({ type: "line", xref: "x", yref: "paper", x0: x, x1: x,
                                      y0: 0, y1: 1, line: { color, width: 1.5, dash } });
  const hline = (y, color, dash) => ({ type: "line", xref: "paper", yref: "y", x0: 0, x1: 1,
                                      y0: y, y1: y, line: { color, width: 1, dash } });
  const label = (x, text, color) => ({ x, xref: "x", y: 1, yref: "paper", text, showarrow: false,
                                       xanchor: "right", yanchor: "top", font: { size: 11, color } });

  function baseLayout(xtitle, ytitle) {
    return {
      margin: { l: 56, r: 12, t: 8, b: 40 },
      xaxis: { title: { text: xtitle }, zeroline: false },
      yaxis: { title: { text: ytitle }, rangemode: "tozero" },
      legend: { orientation: "h", x: 0, y: 1.0, yanchor: "bottom", font: { size: 11 } },
      font: { family: "system-ui, sans-serif", size: 12 },
      uirevision: "keep",
      shapes: [],
      annotations: [],
    };
  }

  function simsHere() {
    return S.sims.filter((s) => s.key === S.view.key);
  }

  function errorBars(list, get) {
    return {
      type: "data", symmetric: false, color: COLORS.sim, thickness: 1.2, width: 4,
      array: list.map((s) => { const [m, , hi] = get(s); return hi === null || m === null ? null : (hi - m); }),
      arrayminus: list.map((s) => { const [m, lo] = get(s); return lo === null || m === null ? null : (m - lo); }),
    };
  }

  function metric() {
    return document.querySelector("input[name=metric]:checked").value;
  }

  function drawLatency() {
    const v = S.view, c = v.curve, p = v.point, m = metric();
    const sat = p.saturation_rate;
    const sims = simsHere();
    const here = p.stable ? [v.rate] : [];
    const traces = [
      { uid: "model-mean", name: "mean (model)", x: c.rate, y: ms(c[m + "_mean"]), mode: "lines",
        line: { color: COLORS.mean, width: 2 } },
      { uid: "model-p99", name: "p99 (model)", x: c.rate, y: ms(c[m + "_p99"]), mode: "lines",
        line: { color: COLORS.p99, width: 2 } },
      { uid: "here", name: "this rate", x: [...here, ...here],
        y: p.stable ? [p[m + "_mean"] * MS, p[m + "_p99"] * MS] : [], mode: "markers",
        marker: { color: COLORS.here, size: 8, symbol: "diamond" } },
      { uid: "sim-mean", name: "mean (simulated)", x: sims.map((s) => s.rate),
        y: sims.map((s) => s.stats[m + "_mean"][0] * MS), mode: "markers",
        marker: { color: COLORS.mean, size: 7, line: { color: COLORS.sim, width: 1 } },
        error_y: errorBars(sims, (s) => s.stats[m + "_mean"].map((x) => (x === null ? null : x * MS))) },
      { uid: "sim-p99", name: "p99 (simulated)", x: sims.map((s) => s.rate),
        y: sims.map((s) => s.stats[m + "_p99"][0] * MS), mode: "markers",
        marker: { color: COLORS.p99, size: 7, symbol: "square", line: { color: COLORS.sim, width: 1 } },
        error_y: errorBars(sims, (s) => s.stats[m + "_p99"].map((x) => (x === null ? null : x * MS))) },
    ];
    const layout = baseLayout("arrival rate (req/s)", (m === "e2e" ? "e2e" : m.toUpperCase()) + " latency (ms)");
    // y range: the curve up to 95% of saturation (beyond it the hockey stick leaves the page)
    const tops = c.rate.map((r, i) => (r <= 0.95 * sat ? c[m + "_p99"][i] : null)).filter((x) => x !== null);
    for (const s of sims) { const hi = s.stats[m + "_p99"][2]; if (hi !== null) tops.push(hi); }
    if (p.stable && p[m + "_p99"] !== null) tops.push(p[m + "_p99"]);
    if (tops.length) layout.yaxis.range = [0, 1.12 * Math.max(...tops) * MS];
    layout.xaxis.range = [0, 1.08 * Math.max(sat, v.rate)];
    layout.shapes.push(vline(sat, "#555", "dash"), vline(v.rate, COLORS.here, "dot"));
    layout.annotations.push(label(sat, `saturation ${sat.toPrecision(3)} req/s`, "#555"));
    return Plotly.react("plot-latency", traces, layout, PLOT_CONFIG);
  }

  function drawSpeedup() {
    const v = S.view, c = v.curve, p = v.point;
    const sims = simsHere().filter((s) => s.speedup);
    const traces = [
      { uid: "model-speedup", name: "speedup (model)", x: c.rate, y: c.speedup, mode: "lines",
        line: { color: COLORS.mean, width: 2 } },
      { uid: "here", name: "this rate", x: p.speedup === null ? [] : [v.rate],
        y: p.speedup === null ? [] : [p.speedup], mode: "markers",
        marker: { color: COLORS.here, size: 8, symbol: "diamond" } },
      { uid: "sim-speedup", name: "speedup (simulated)", x: sims.map((s) => s.rate),
        y: sims.map((s) => s.speedup[0]), mode: "markers",
        marker: { color: COLORS.mean, size: 7, line: { color: COLORS.sim, width: 1 } },
        error_y: errorBars(sims, (s) => s.speedup) },
    ];
    const layout = baseLayout("arrival rate (req/s)", "speedup (mean e2e, k = 0 over k)");
    layout.xaxis.range = [0, 1.08 * Math.max(p.saturation_rate, v.rate)];
    layout.shapes.push(hline(1, "#555", "dot"), vline(p.saturation_rate, "#555", "dash"),
                       vline(v.rate, COLORS.here, "dot"));
    const be = c.break_even_rate;
    if (be !== null) {
      layout.shapes.push(vline(be, COLORS.p99, "dashdot"));
      layout.annotations.push(label(be, `break-even ${be.toPrecision(3)} req/s`, COLORS.p99));
    } else {
      const why = v.steps.k === 0 ? "k = 0: no speculation"
        : c.speedup[0] !== null && c.speedup[0] < 1 ? "speculation slower at every load"
        : "speculation helps up to saturation";
      layout.annotations.push({ x: 1, xref: "paper", y: 1, yref: "paper", text: why, showarrow: false,
                                xanchor: "right", yanchor: "top", font: { size: 11, color: "#555" } });
    }
    return Plotly.react("plot-speedup", traces, layout, PLOT_CONFIG);
  }

  function drawSteps() {
    const st = S.view.steps, p = S.view.point;
    const area = (uid, name, y, color) => ({ uid, name, x: st.batch, y: ms(y), mode: "lines",
      stackgroup: "parts", line: { color, width: 0.5 }, fillcolor: color });
    const traces = [
      area("overhead", "CPU overhead", st.overhead, COLORS.overhead),
      area("draft", `draft (k = ${st.k})`, st.draft, COLORS.draft),
      area("verify", "verify", st.verify, COLORS.verify),
      { uid: "plain", name: "k = 0 step", x: st.batch, y: ms(st.plain), mode: "lines",
        line: { color: COLORS.plain, width: 2, dash: "dash" } },
    ];
    const layout = baseLayout(`decode batch (requests, KV ${st.context} tokens each)`, "step time (ms)");
    layout.xaxis.type = "log";
    if (p.batch_mean !== null && p.batch_mean >= 1) {
      // on a log axis shapes take data values, annotations their log10
      layout.shapes.push(vline(p.batch_mean, COLORS.here, "dot"));
      layout.annotations.push(label(Math.log10(p.batch_mean), `mean batch ${p.batch_mean.toPrecision(3)}`, COLORS.here));
    }
    return Plotly.react("plot-steps", traces, layout, PLOT_CONFIG);
  }

  function drawBatch() {
    const v = S.view, law = v.batch_law;
    const sim = simsHere().filter((s) => Math.abs(s.rate - v.rate) <= 1e-9 * v.rate).pop();
    const traces = [
      { uid: "model-law", name: "model", type: "bar", x: law ? law.batch : [], y: law ? law.p : [],
        marker: { color: COLORS.mean }, opacity: 0.75 },
      { uid: "sim-law", name: "simulated (time share)", x: sim ? sim.batch_law.batch : [],
        y: sim ? sim.batch_law.p : [], mode: "lines+markers",
        line: { color: COLORS.sim, width: 1.5 }, marker: { size: 4, color: COLORS.sim } },
    ];
    const layout = baseLayout("requests in the batch", "probability");
    layout.bargap = 0;
    if (law) {
      layout.shapes.push(vline(law.mean, COLORS.here, "dot"));
      layout.annotations.push(label(law.mean, `mean ${law.mean.toPrecision(3)} (cap ${law.cap})`, COLORS.here));
    } else {
      layout.annotations.push({ x: 0.5, xref: "paper", y: 0.5, yref: "paper", showarrow: false,
                                text: "past saturation: the queue grows without bound" });
    }
    return Plotly.react("plot-batch", traces, layout, PLOT_CONFIG);
  }

  function card(title, value, note) {
    const d = document.createElement("div");
    d.className = "card";
    const v = document.createElement("div");
    v.className = "v";
    v.textContent = value;
    const k = document.createElement("div");
    k.className = "k";
    k.textContent = note ? `${title} · ${note}` : title;
    d.append(v, k);
    return d;
  }

  function time(s, stable) {
    if (s === null || s === undefined) return stable ? "–" : "∞";
    return s >= 1 ? `${s.toPrecision(3)} s` : `${(s * MS).toPrecision(3)} ms`;
  }

  function drawCards() {
    const v = S.view, p = v.point;
    const num = (x, d) => (x === null || x === undefined ? "–" : x.toPrecision(d || 3));
    $("cards").replaceChildren(
      card("e2e mean", time(p.e2e_mean, p.stable)),
      card("e2e p99", time(p.e2e_p99, p.stable)),
      card("TTFT p99", time(p.ttft_p99, p.stable)),
      card("TPOT mean", time(p.tpot_mean, p.stable)),
      card("saturation", `${num(p.saturation_rate)} req/s`),
      card("break-even", v.curve.break_even_rate === null ? "–" : `${num(v.curve.break_even_rate)} req/s`),
      card("speedup here", p.speedup === null ? "–" : `${num(p.speedup)}×`),
      card("mean batch", num(p.batch_mean), `k = ${p.k_effective}`),
      card("C1 · C2", `${time(v.point.c1, true)} · ${time(v.point.c2, true)}`),
    );
    $("outside").textContent = p.outside_model ? `Outside the model: ${p.outside_model}` : "";
    const sc = v.scenario;
    $("scenario-name").textContent = `${sc.name}: ${sc.target} on ${typeof sc.hardware === "string" ? sc.hardware : sc.hardware.name}`;
  }

  let lastKey = null;
  function tuneRateSlider() {
    const v = S.view;
    if (v.key === lastKey) return;
    lastKey = v.key;
    const r = $("r-rate");
    const top = Math.max(1.15 * v.point.saturation_rate, 1.05 * v.rate);
    r.max = String(Number(top.toPrecision(3)));
    r.step = String(Number((top / 400).toPrecision(2)));
    r.value = String(v.rate);
  }

  async function drawAll() {
    tuneRateSlider();
    drawCards();
    await Promise.all([drawLatency(), drawSpeedup(), drawSteps(), drawBatch()]);
  }

  // ------------------------------------------------------------------ simulate here

  async function simulateHere() {
    const button = $("simulate"), bar = $("sim-progress"), status = $("sim-status");
    $("e-runs").textContent = "";
    const r = await call("/api/simulate", { base: S.base, controls: readControls(), runs: $("c-runs").value });
    if (!r.ok) { showError(r.data); return; }
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    status.textContent = "simulating…";
    const job = r.data.job;
    for (;;) {
      await new Promise((res) => setTimeout(res, 200));
      const s = await call(`/api/jobs/${job}`);
      if (!s.ok) { status.textContent = s.data.error; break; }
      bar.value = s.data.progress;
      if (s.data.state === "done") {
        const res = s.data.result;
        S.sims.push({ key: s.data.key, ...res });
        const [m, lo, hi] = res.stats.e2e_mean;
        status.textContent = `${res.runs} runs × ${res.requests} requests at ${Number(res.rate.toPrecision(4))} req/s: ` +
          `mean e2e ${time(m, true)} (95% CI ${time(lo, true)}–${time(hi, true)})` +
          (res.stable ? "" : " — overloaded: runs stopped early");
        if (S.view) await drawAll();
        S.simsDone = (S.simsDone || 0) + 1;
        break;
      }
      if (s.data.state === "error") {
        status.textContent = s.data.error.error;
        break;
      }
    }
    button.disabled = false;
    bar.hidden = true;
  }

  // ------------------------------------------------------------------ scenario files

  async function download() {
    const r = await fetch("/api/scenario", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ base: S.base, controls: readControls() }),
    });
    if (!r.ok) { showError(await r.json()); return; }
    const name = (r.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    const url = URL.createObjectURL(await r.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = name ? name[1] : "scenario.yaml";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async function upload(ev) {
    const file = ev.target.files[0];
    if (!file) return;
    const t0 = performance.now();
    const r = await call("/api/load", await file.text(), "application/yaml");
    ev.target.value = "";
    if (!r.ok) { clearErrors(); showError({ ...r.data, control: null }, "e-file"); return; }
    S.base = r.data.base;
    setControls(r.data.controls);
    changed(t0);
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    let timer = null;
    for (const name of Object.keys(S.fields)) {
      const e = input(name);
      if (!e) continue;
      const slider = $("r-" + name);
      if (slider) {
        slider.addEventListener("input", (ev) => {
          e.value = fmt(Number(slider.value));
          changed(ev.timeStamp);
        });
      }
      if (e.tagName === "SELECT" || e.type === "checkbox") {
        e.addEventListener("change", (ev) => {
          if (name === "alpha_mode") prefillPositions();
          updateVisibility();
          changed(ev.timeStamp);
        });
      } else {
        // typing: wait for a pause; Enter or leaving the field sends at once
        e.addEventListener("input", () => {
          clearTimeout(timer);
          timer = setTimeout(() => changed(), TEXT_DEBOUNCE_MS);
          if (slider && e.value.trim() !== "" && Number.isFinite(Number(e.value))) slider.value = e.value;
        });
        e.addEventListener("change", (ev) => { clearTimeout(timer); changed(ev.timeStamp); });
      }
    }
    for (const r of document.querySelectorAll("input[name=metric]")) {
      r.addEventListener("change", () => { if (S.view) drawLatency(); });
    }
    $("simulate").addEventListener("click", simulateHere);
    $("download").addEventListener("click", download);
    $("upload").addEventListener("change", upload);
  }

  async function start() {
    const r = await call("/api/options");
    if (!r.ok) { showError(r.data); return; }
    const o = r.data;
    S.fields = o.fields;
    S.base = o.base;
    fillChoices(o.choices);
    setControls(o.controls);
    wire();
    changed();
  }

  start();
})();
