"""`sdsim explore`: a local page that shows the queueing behaviour of an SD server, live.

Controls (rate, draft length, acceptance, lengths, GPU, models, drafter, TP, max_num_seqs, cost
source) redraw four panels from the analytic model within a fraction of a second: latency vs
rate, speedup vs rate with the break-even rate, step time vs batch by part, and the batch-size
law at the chosen rate. "Simulate here" adds simulated points with confidence intervals; the
settings download as a scenario YAML and a scenario file loads into the page. The page works
offline: its script, style sheet and plotly.js are served by sdsim itself (``docs/explore.md``).

:func:`serve` runs it; :func:`create_app` is the Starlette app (tests drive it in process).
"""

from sdsim.explore.app import create_app, serve

__all__ = ["create_app", "serve"]
