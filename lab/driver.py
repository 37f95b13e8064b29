"""Drive a scenario's schedule in the live guests: set up normal work, start and stop attacks on
time. Used by ``lab record`` (tick by tick, from its sampling loop) and ``lab run`` (in a thread
beside the agent).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from . import workloads
from .domains import AgentError
from .scenarios import Attack, Scenario

log = logging.getLogger(__name__)


@dataclass
class Event:
    offset: float
    action: str  # "start" | "stop"
    attack: Attack


def events(scenario: Scenario, minutes: float) -> list[Event]:
    out = []
    for a in scenario.attacks:
        s, e = scenario.window(a, minutes)
        out += [Event(s, "start", a), Event(e, "stop", a)]
    return sorted(out, key=lambda ev: (ev.offset, ev.action != "stop"))


def attack_args(a: Attack, scenario: Scenario, minutes: float) -> list[str]:
    if a.args is not None:
        return list(a.args)
    if a.workload == "leaker":
        # grow steadily for the whole attack: ~150 MiB over its duration, 2 s steps
        s, e = scenario.window(a, minutes)
        step = max(1, round(150 * 2 / max(e - s, 2)))
        return [str(step), "2", "150"]
    return workloads.default_args(a.workload, victim=a.victim)


class ScenarioDriver:
    """The schedule of one run over the guests ``doms`` (guest i is ``doms[i - 1]``)."""

    def __init__(self, scenario: Scenario, minutes: float, doms: list, day_seconds: int | None = None):
        if len(doms) < scenario.guests:
            raise ValueError(f"scenario {scenario.name} needs {scenario.guests} guests, {len(doms)} run")
        self.scenario = scenario
        self.minutes = minutes
        self.doms = doms
        self.pending = events(scenario, minutes)
        self.done: list[dict] = []
        self.t0: float | None = None
        # the normal work's compressed "day": the whole run unless given
        self.day_seconds = max(24, int(day_seconds if day_seconds else minutes * 60))

    def setup(self) -> None:
        """Clean every guest, then start the servers and the normal work of the scenario."""
        for dom in self.doms:
            workloads.stop_all(dom)
        for i in self.scenario.servers:
            workloads.start(self.doms[i - 1], "httpd")
        for i in self.scenario.normal:
            workloads.start(self.doms[i - 1], "normal", workloads.default_args("normal", day_seconds=self.day_seconds))

    def start_clock(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0

    def run_due(self, until: float) -> None:
        """Perform, each at its time, every event due before the monotonic time ``until``."""
        assert self.t0 is not None, "start_clock() first"
        while self.pending and self.t0 + self.pending[0].offset <= until:
            ev = self.pending.pop(0)
            delay = self.t0 + ev.offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            dom = self.doms[ev.attack.guest - 1]
            try:
                if ev.action == "start":
                    workloads.start(dom, ev.attack.workload, attack_args(ev.attack, self.scenario, self.minutes))
                else:
                    workloads.stop(dom, ev.attack.workload)
                ok, err = True, None
            except AgentError as e:  # one failed action must not end the run
                log.warning("%s", e)
                ok, err = False, str(e)
            self.done.append(
                {
                    "offset_planned": ev.offset,
                    "offset_done": round(time.monotonic() - self.t0, 3),
                    "action": ev.action,
                    "workload": ev.attack.workload,
                    "vm": dom.name(),
                    "ok": ok,
                    "error": err,
                }
            )

    def finish(self) -> None:
        for dom in self.doms:
            workloads.stop_all(dom)

    def run_in_thread(self, stop: threading.Event) -> threading.Thread:
        """Run the whole schedule in a daemon thread (until its end or ``stop``)."""

        def loop() -> None:
            self.start_clock()
            end = self.t0 + self.minutes * 60.0  # type: ignore[operator]
            while not stop.is_set() and time.monotonic() < end:
                self.run_due(min(end, time.monotonic() + 0.5))
                stop.wait(0.5)

        th = threading.Thread(target=loop, name=f"lab-scenario-{self.scenario.name}", daemon=True)
        th.start()
        return th
