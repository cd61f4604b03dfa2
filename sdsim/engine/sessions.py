"""Arrivals of multi-turn sessions, closed loop: a turn is sent only after the previous answer.

A session workload (:func:`sdsim.traffic.session_workload`) knows when each session starts, not
when its later turns arrive: turn t + 1 is sent ``think[t]`` seconds after turn t finished. The
first turns arrive by a SimPy process at their start times; an engine reports a finished turn
that has a successor (:attr:`sdsim.engine.server.Engine.on_turn`, after the step in which it
finished, before any later step is applied), and the next turn's arrival is scheduled then.
Requests get their ids (and slots) in arrival order, so the records read as any run's do.

The engines run ahead of the SimPy clock only up to the next known arrival
(:class:`~sdsim.engine.server.Tracker`); a turn finishing ahead of the clock stops the run-ahead
at its step, and the arrival it schedules is at or after that step's end, so every step the
engines applied ahead still saw every arrival before its start.
"""

from __future__ import annotations

__all__ = ["SessionArrivals"]

import heapq
import math
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from sdsim.engine.state import RequestTable
from sdsim.workload import Workload

if TYPE_CHECKING:
    from sdsim.engine.router import Router
    from sdsim.engine.server import Engine, Tracker


class SessionArrivals:
    """Sends the turns of a session workload to the engines.

    Parameters
    ----------
    env
        The SimPy environment.
    wl
        The session workload (turns, session by session; ``next_turn`` and ``think`` set).
    table
        The request table (one blank slot per request; turns are placed as they arrive).
    engines, router, tracker
        The replicas, their router and the shared tracker (turns join a queue through it; its
        next-arrival times are kept).
    accept_key
        Key of the acceptance stream (a request's draws follow its id).
    api_delay
        Seconds between a turn being sent and reaching an engine.
    """

    def __init__(
        self,
        env: simpy.Environment,
        wl: Workload,
        table: RequestTable,
        engines: list[Engine],
        router: Router,
        tracker: Tracker,
        accept_key: int,
        api_delay: float,
    ) -> None:
        assert wl.next_turn is not None and wl.think is not None and wl.conv is not None
        self.env = env
        self.wl = wl
        self.table = table
        self.engines = engines
        self.router = router
        self.tracker = tracker
        self.key = accept_key
        self.api_delay = float(api_delay)
        self.next_rid = 0
        self._first = np.flatnonzero(~np.isnan(wl.arrival))  # first turns, in start order
        self._first_fire = math.inf  # when the next first turn reaches an engine
        self._pending: list[float] = []  # when scheduled later turns reach an engine
        self._inflight: list[dict[int, int]] = [{} for _ in engines]  # slot -> turn, per engine
        self.stopped = False
        for e in engines:
            e.on_turn = self.turn_done

    def _refresh(self) -> None:
        """The tracker's next arrival: the nearer of the next first turn and the earliest
        scheduled turn (no step may run ahead across it: ``after_next`` equals it)."""
        nxt = min(self._first_fire, self._pending[0] if self._pending else math.inf)
        self.tracker.next_arrival = nxt
        self.tracker.after_next = nxt

    def first_turns(self) -> Generator[simpy.Event, Any, None]:
        """The SimPy process sending each session's first turn at its start time."""
        env = self.env
        arrival = self.wl.arrival
        for i in self._first.tolist():
            dt = float(arrival[i]) + self.api_delay - env.now
            if dt > 0:
                self._first_fire = env.now + dt  # the float SimPy will fire it at
                self._refresh()
                yield env.timeout(dt)
            self._first_fire = math.inf
            self._refresh()
            if self.stopped:
                return
            self._arrive(i, float(arrival[i]))

    def _later_turn(
        self, turn: int, sent: float, delay: float
    ) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(delay)
        heapq.heappop(self._pending)
        self._refresh()
        if not self.stopped:
            self._arrive(turn, sent)

    def _arrive(self, turn: int, sent: float) -> None:
        """Turn ``turn`` (sent at ``sent``) reaches an engine: its slot is the next request id."""
        wl = self.wl
        rid = self.next_rid
        self.next_rid += 1
        group = -1 if wl.prefix_group is None else int(wl.prefix_group[turn])
        plen = 0 if wl.prefix_len is None else int(wl.prefix_len[turn])
        assert wl.conv is not None and wl.next_turn is not None and wl.turn is not None
        follow = int(wl.next_turn[turn] >= 0)
        self.table.place(
            rid,
            sent,
            int(wl.prompt[turn]),
            int(wl.output[turn]),
            None if wl.alpha is None else float(wl.alpha[turn]),
            self.key,
            (group, plen, int(wl.conv[turn]), int(wl.turn[turn]), follow),
        )
        r = self.router.choose(rid, turn)
        if follow:
            self._inflight[r][rid] = turn
        if not self.tracker.arrive(self.engines[r], rid):
            self.stopped = True

    def turn_done(self, engine: Engine) -> None:
        """Schedule the next turn of every session whose turn on ``engine`` has finished: sent
        a think time after its finish."""
        inflight = self._inflight[engine.replica]
        finish = self.table.finish
        done = [rid for rid in inflight if not math.isnan(finish[rid])]
        wl = self.wl
        assert wl.next_turn is not None and wl.think is not None
        env = self.env
        for rid in done:
            turn = inflight.pop(rid)
            nxt = int(wl.next_turn[turn])
            sent = float(finish[rid]) + float(wl.think[turn])
            delay = max(sent + self.api_delay - env.now, 0.0)
            fire = env.now + delay  # the float SimPy will fire it at
            heapq.heappush(self._pending, fire)
            env.process(self._later_turn(nxt, sent, delay))
        if done:
            self._refresh()
