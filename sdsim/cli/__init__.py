"""The `sdsim` command line (typer): ``sdsim = "sdsim.cli:main"``.

:mod:`sdsim.cli.app` holds the app, :func:`main` and what the commands share; the commands live
in one module per area and are registered here, in the order ``sdsim --help`` lists them.
"""

from sdsim.cli import costs, explore, fit, plan, predict, run, serve, sweep
from sdsim.cli.acceptance import acceptance_app
from sdsim.cli.app import app, main

__all__ = ["app", "main"]

for _command in (
    run.run,
    run.schema,
    costs.costs,
    costs.calibrate,
    costs.bench,
    predict.predict,
    predict.advise,
    predict.validate,
    sweep.sweep,
    sweep.plot,
    plan.plan,
    plan.from_vllm,
    fit.fit,
    fit.compare,
    serve.serve,
    explore.explore,
):
    app.command()(_command)
app.add_typer(acceptance_app, name="acceptance")
