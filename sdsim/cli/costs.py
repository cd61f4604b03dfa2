"""`sdsim costs` (step time against the batch) and `sdsim bench` (measure a profile bundle)."""

from __future__ import annotations

__all__ = ["bench", "costs"]

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sdsim import step_time
from sdsim.bench import FULL_GRID, QUICK_GRID, make_backend, run_bench
from sdsim.cli.app import ScenarioArg, SetOpt, check_writable, err, load, out
from sdsim.costs.build import build_cost_model
from sdsim.costs.profile import write_bundle
from sdsim.errors import ScenarioError
from sdsim.memory import kv_capacity
from sdsim.models import resolve_model


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
        Path | None, typer.Option("--plot", help="save a plot of step time vs batch")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the table as JSON")] = False,
) -> None:
    """Step time vs decode batch (k = 0 and the scenario's k) and one prefill chunk."""
    scn = load(scenario, set_)
    if context is not None and context < 0:
        raise ScenarioError("--context", "must be >= 0")
    if plot is not None:
        check_writable(plot.parent if str(plot.parent) else Path("."), "--plot")
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
        table = Table(
            title=f"{scn.name}: {scn.target} on {hw} x{scn.server.tp} "
            f"({scn.costs.resolved_source}), KV {ctx} tokens/request",
            header_style="bold",
        )
        for col in ("batch", "k=0 (ms)", f"k={k} (ms)", "draft", "verify", "overhead", "k=0 tok/s"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(
                str(r["batch"]),
                f"{r['plain_ms']:.3f}",
                f"{r['spec_ms']:.3f}",
                f"{r['draft_ms']:.3f}",
                f"{r['verify_ms']:.3f}",
                f"{r['overhead_ms']:.3f}",
                f"{r['plain_tok_s']:.0f}",
            )
        out.print(table)
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
        out.print(f"KV cache: {cap.describe()}{fits}", highlight=False, soft_wrap=True)
    if plot is not None:
        # deferred: matplotlib takes a noticeable part of a second to import
        from sdsim.plots import step_time_figure

        title = f"{scn.target} on {hw} ({scn.costs.resolved_source})"
        fig = step_time_figure(rows, k, pf.total * 1e3, chunk, title=title)
        fig.savefig(plot)
        if not json_out:
            out.print(f"wrote {plot}")


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
