"""Where many independent simulations run: in this process, a local process pool or Dask."""

from __future__ import annotations

__all__ = ["open_executor", "run_tasks"]

import concurrent.futures as cf
import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import TypeVar

from sdsim.errors import ScenarioError

T = TypeVar("T")  # a task of run_tasks
R = TypeVar("R")  # its result


@contextlib.contextmanager
def open_executor(workers: int, dask: str | None) -> Iterator[tuple[cf.Executor, int]]:
    """A concurrent.futures executor and how many tasks to keep in flight.

    Parameters
    ----------
    workers
        Local worker processes (spawned); with ``dask="local"`` the LocalCluster's workers.
    dask
        ``None`` (a local process pool), ``"local"`` (start a LocalCluster) or the address of a
        running Dask scheduler.
    """
    if dask is None:
        import multiprocessing

        # spawn, not fork: workers start clean (no inherited threads or RNG state) on every OS.
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            yield ex, 2 * workers
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # dask is in the sweep and test extras
        raise ScenarioError(
            "--dask", "needs dask.distributed: pip install 'sdsim[sweep]'"
        ) from None
    cluster = None
    try:
        if dask == "local":
            cluster = LocalCluster(
                n_workers=max(workers, 1),
                threads_per_worker=1,  # the simulator is pure Python: processes, not threads
                processes=True,
                dashboard_address=None,
            )
            client = Client(cluster)
        else:
            try:
                client = Client(dask, timeout=10)
            except (OSError, TimeoutError) as exc:
                raise ScenarioError("--dask", f"cannot connect to {dask}: {exc}") from None
        try:
            slots = max(1, sum(client.nthreads().values()))
            ex = client.get_executor(pure=False)
            try:
                yield ex, 2 * slots
            finally:
                ex.shutdown(wait=False)
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def run_tasks(
    fn: Callable[[T], R], tasks: list[T], *, workers: int = 1, dask: str | None = None
) -> Iterator[tuple[T, cf.Future[R]]]:
    """Run ``fn`` over ``tasks`` on an executor, yielding each task with its finished future as
    it completes (in completion order), at most the executor's window in flight.

    ``workers == 1`` without ``dask`` runs them in this process, in order. Pending tasks are
    cancelled when the caller stops early (an exception, KeyboardInterrupt).

    Parameters
    ----------
    fn
        A picklable top-level function.
    tasks
        Its arguments, one task each (picklable).
    workers, dask
        As for :func:`open_executor`.
    """
    if not tasks:
        return
    if workers == 1 and dask is None:
        for task in tasks:
            done: cf.Future[R] = cf.Future()
            try:
                done.set_result(fn(task))
            except Exception as exc:
                done.set_exception(exc)
            yield task, done
        return
    with open_executor(workers, dask) as (ex, window):
        pending: dict[cf.Future[R], T] = {}
        queue = iter(tasks)
        try:
            while True:
                for task in itertools.islice(queue, max(window - len(pending), 0)):
                    pending[ex.submit(fn, task)] = task
                if not pending:
                    break
                finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    yield pending.pop(fut), fut
        finally:
            for fut in pending:
                fut.cancel()
