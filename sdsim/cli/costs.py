"""`sdsim costs` (step time against the batch, or split into its terms), `sdsim calibrate` (fit
the calibrated model's terms to measurements) and `sdsim bench` (measure a profile bundle)."""

from __future__ import annotations

__all__ = ["bench", "calibrate", "costs"]

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sdsim import step_time
from sdsim.bench import FULL_GRID, QUICK_GRID, make_backend, run_bench
from sdsim.cli.app import ScenarioArg, SetOpt, check_writable, err, load, out
from sdsim.cli.tables import Column, render_table
from sdsim.costs.build import build_cost_model
from sdsim.costs.profile import write_bundle
from sdsim.errors import ScenarioError
from sdsim.memory import kv_capacity
from sdsim.models import resolve_model
from sdsim.outputs import atomic_write, figure_format, output_file
from sdsim.provenance import png_metadata


def _batches(max_batch: int) -> list[int]:
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


def costs(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    context: Annotated[
        int | None,
        typer.Option("--context", help="mean KV tokens per request (default: prompt + output/2)"),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="save a plot of step time vs batch (format from the suffix; none: PNG)",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the table as JSON")] = False,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="split each step into its terms (calibrated costs); "
                     "--plot then draws them stacked"),
    ] = False,
    batch: Annotated[
        list[int] | None,
        typer.Option("--batch", help="--explain: decoding requests per step (repeatable)"),
    ] = None,
    k_opt: Annotated[
        list[int] | None, typer.Option("--k", help="--explain: draft lengths (repeatable)")
    ] = None,
) -> None:
    """Step time vs decode batch (k = 0 and the scenario's k) and one prefill chunk.

    With --explain, where each step's time goes.
    """
    scn = load(scenario, set_)
    if context is not None and context < 0:
        raise ScenarioError("--context", "must be >= 0")
    dest = output_file(plot, "--plot", figure=True) if plot is not None else None
    if explain:
        _explain(scn, batch, k_opt, context, plot, dest, json_out)
        return
    if batch or k_opt:
        raise ScenarioError("--batch" if batch else "--k", "applies with --explain only")
    wl = scn.workload
    ctx = int(wl.prompt_tokens.mean + wl.output_tokens.mean / 2) if context is None else context
    k = scn.spec.k
    chunk = int(min(scn.server.max_num_batched_tokens, max(wl.prompt_tokens.mean, 1)))
    rows: list[dict[str, Any]] = []
    for b in _batches(scn.server.max_num_seqs):
        plain = step_time(scn, b, ctx, k=0)
        spec = step_time(scn, b, ctx, k=k)
        rows.append(
            {
                "batch": b,
                "plain_ms": plain.total * 1e3,
                "spec_ms": spec.total * 1e3,
                "draft_ms": spec.draft * 1e3,
                "verify_ms": spec.verify * 1e3,
                "overhead_ms": spec.overhead * 1e3,
                "plain_tok_s": b / plain.total,
            }
        )
    pf = step_time(scn, 0, 0, prefill_tokens=chunk, k=k)
    model = build_cost_model(scn)
    lin = model.linearize(k, scn.server.max_num_seqs, ctx)
    cap = kv_capacity(scn)
    hw = scn.hardware if isinstance(scn.hardware, str) else scn.hardware.name
    if json_out:
        out.print_json(
            json.dumps(
                {
                    "source": scn.costs.resolved_source,
                    "context": ctx,
                    "k": k,
                    "rows": rows,
                    "prefill_chunk": {"tokens": chunk, "ms": pf.total * 1e3},
                    "linear": lin.__dict__,
                    "kv_capacity": cap.to_dict(),
                }
            )
        )
    else:
        render_table(
            f"{scn.name}: {scn.target} on {hw} x{scn.server.tp} "
            f"({scn.costs.resolved_source}), KV {ctx} tokens/request: step time by decode batch",
            [Column("batch", "label", "requests"), Column("k=0 step", "time"),
             Column(f"k={k} step", "time"), Column("of which draft", "time"),
             Column("verify", "time"), Column("overhead", "time"),
             Column("k=0 throughput", "num", "tok/s")],
            [[str(r["batch"]), r["plain_ms"] / 1e3, r["spec_ms"] / 1e3, r["draft_ms"] / 1e3,
              r["verify_ms"] / 1e3, r["overhead_ms"] / 1e3, r["plain_tok_s"]] for r in rows],
        )
        out.print(
            f"prefill chunk of {chunk} tokens (k={k}): {pf.total * 1e3:.3f} ms "
            f"(prefill {pf.prefill * 1e3:.3f}, overhead {pf.overhead * 1e3:.3f})"
        )
        out.print(
            f"linearized (k={k}): verify {lin.v_fixed * 1e3:.3f} ms + "
            f"{lin.v_token * 1e6:.3f} us/token + {lin.v_kv * 1e9:.3f} ns/KV token; "
            f"draft pass {lin.d_fixed * 1e3:.3f} ms + "
            f"{lin.d_token * 1e6:.3f} us/seq + {lin.d_kv * 1e9:.3f} ns/KV token; "
            f"fit error {lin.fit_error:.1%}"
        )
        fits = (
            "" if cap.tokens is None else f"; ~{cap.tokens // max(ctx, 1)} requests of {ctx} tokens"
        )
        out.print(f"KV cache: {cap.describe()}{fits}", highlight=False)
    if plot is not None and dest is not None:
        # deferred: matplotlib takes a noticeable part of a second to import
        from sdsim.plots import step_time_figure

        title = f"{scn.target} on {hw} ({scn.costs.resolved_source})"
        fig = step_time_figure(rows, k, pf.total * 1e3, chunk, title=title)
        _save_figure(fig, dest, title)
        if not json_out:
            out.print(f"wrote {plot} ({figure_format(dest).upper()})")


def _save_figure(fig: Any, dest: Path, title: str) -> None:
    """Write a figure atomically in the format its checked path names (PNG with provenance)."""
    fmt_ = figure_format(dest)
    meta = png_metadata(None, title) if fmt_ == "png" else None
    atomic_write(dest, lambda p: fig.savefig(p, format=fmt_, metadata=meta))


def _explain(
    scn: Any, batches: list[int] | None, ks: list[int] | None, context: int | None,
    plot: Path | None, dest: Path | None, json_out: bool,
) -> None:
    from sdsim.costs.explain import explain_steps

    df = explain_steps(scn, batches, ks, context)
    hw = scn.hardware if isinstance(scn.hardware, str) else scn.hardware.name
    if json_out:
        out.print_json(json.dumps({"source": scn.costs.resolved_source,
                                   "rows": df.to_dict("records")}))
    else:
        for k in dict.fromkeys(df["k"]):
            d = df[df["k"] == k]
            bs = list(dict.fromkeys(d["batch"]))
            rows = []
            for label in dict.fromkeys(d["label"]):
                sub = d[d["label"] == label].set_index("batch")["ms"]
                if (sub > 0).any():
                    rows.append([label, *(float(sub[b]) for b in bs)])
            tot = d.groupby("batch")["total_ms"].first()
            rows.append(["step", *(float(tot[b]) for b in bs)])
            render_table(
                f"{scn.target} on {hw} x{scn.server.tp}, k = {k}: where a step's time goes",
                [Column("term", "label"), *(Column(f"B={b}", "num", "ms") for b in bs)],
                rows,
            )
    if plot is not None and dest is not None:
        from sdsim.plots import explain_figure

        title = f"{scn.target} on {hw}: where a step's time goes"
        _save_figure(explain_figure(df, title=title), dest, title)
        if not json_out:
            out.print(f"wrote {plot} ({figure_format(dest).upper()})")


def calibrate(
    data: Annotated[
        list[Path],
        typer.Argument(help="measurement CSVs, Vidur profiling folders, profile bundles, "
                       "benchmark reports (folders are searched)"),
    ],
    out_file: Annotated[Path, typer.Option("--out", help="calibration file to write")],
    base: Annotated[
        Path | None,
        typer.Option("--base", help="calibration whose terms are kept where not fitted "
                     "(default: the shipped one)"),
    ] = None,
    terms: Annotated[
        str,
        typer.Option("--terms", help="engine terms to fit, comma-separated (empty: kernels only)"),
    ] = "step_s,per_seq_s",
    held_out: Annotated[
        list[str] | None,
        typer.Option("--held-out", help="a source whose anchors are predicted, not fitted"),
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option("--scenario", help="the server that step-time CSVs, bundles and reports "
                     "were measured on (GPU, models, k, acceptance)"),
    ] = None,
    set_: SetOpt = None,
    description: Annotated[
        str | None, typer.Option("--description", help="what the calibration is, for the file")
    ] = None,
) -> None:
    """Fit the calibrated cost model's terms to measurements; write a calibration file.

    The file is read by `costs.calibration: FILE`; the output lists the residual per anchor and
    refuses terms the data cannot identify.
    """
    from sdsim.costs.calibration import load_calibration, write_calibration
    from sdsim.costs.fit import collect_data, fit_calibration

    check_writable(out_file.parent if str(out_file.parent) else Path("."), "--out")
    scn = load(scenario, set_) if scenario is not None else None
    base_cal = load_calibration(base, "--base")
    data_set = collect_data(data, scn)
    names = [t.strip() for t in terms.split(",") if t.strip()]
    fit = fit_calibration(data_set, base_cal, names, held_out or [], description=description)
    write_calibration(fit.calibration, out_file)
    used = fit.anchors[fit.anchors["role"] != "unused"]
    render_table(
        "anchors: mean step time, measured vs the fitted model",
        [Column("anchor", "label"), Column("GPU", "text"), Column("target", "text"),
         Column("drafter", "text"), Column("batch", "num"), Column("k", "text"),
         Column("measured", "time"), Column("predicted", "time"),
         Column("error", "signed_pct"), Column("role", "text")],
        [[str(r["id"]), r["gpu"], r["target"], r["drafter"], float(r["batch"]), str(r["k"]),
          r["measured_ms"] / 1e3, r["predicted_ms"] / 1e3, float(r["error"]), r["role"]]
         for r in used.to_dict("records")],
    )
    for g, rep in fit.kernels.items():
        parts = ", ".join(f"{k} {v:.3g}" for k, v in rep.items())
        out.print(f"kernels {g}: {parts}", highlight=False, soft_wrap=True)
    fitted = ", ".join(f"{t} = {v:.4g} s" for t, v in fit.terms.items()) or "none"
    held = "" if math.isnan(fit.held_out_rms_error) else (
        f", held-out rms error {fit.held_out_rms_error:.1%}")
    skipped = int((fit.anchors["role"] == "unused").sum())
    out.print(f"fitted: {fitted}; fit rms error {fit.fit_rms_error:.1%}{held}; {skipped} "
              f"measurements not usable as step times (reasons in the fit record)",
              highlight=False, soft_wrap=True)
    out.print(f"wrote {out_file}")


def bench(
    model: Annotated[
        list[str],
        typer.Option("--model", help="registry name or config.json path (repeatable)"),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="profile bundle directory to write")],
    backend: Annotated[str, typer.Option("--backend", help="numpy or torch")] = "numpy",
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:N (torch backend)")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="torch dtype (default bfloat16)")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="reduced grid (CPU-friendly)")] = False,
    repeats: Annotated[int | None, typer.Option("--repeats", min=1)] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", min=0)] = None,
    tokens: Annotated[
        str | None, typer.Option("--tokens", help="comma-separated token grid override")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Measure a model's operator shapes on this machine and write a profile bundle."""
    specs = [resolve_model(m, "--model") for m in model]
    grid = QUICK_GRID if quick else FULL_GRID
    if repeats is not None:
        grid = replace(grid, repeats=repeats)
    if warmup is not None:
        grid = replace(grid, warmup=warmup)
    if tokens:
        try:
            tk = tuple(sorted({int(x) for x in tokens.split(",") if x.strip()}))
        except ValueError:
            raise ScenarioError("--tokens", f"expected integers, got {tokens!r}") from None
        if not tk or tk[0] < 1:
            raise ScenarioError("--tokens", "token counts must be >= 1")
        grid = replace(grid, tokens=tk)
    check_writable(out_dir)
    be = make_backend(backend, device, dtype, seed)
    bar = Progress(
        TextColumn("[bold]bench"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with bar:
        task = bar.add_task("", total=None)

        def prog(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        bundle = run_bench(specs, be, grid, progress=prog)
    write_bundle(bundle, out_dir)
    out.print(
        f"wrote {out_dir} ({len(bundle.dense)} dense + {len(bundle.attention)} attention points, "
        f"{bundle.meta['device']}, {bundle.meta['backend']} {bundle.meta['dtype']})"
    )
