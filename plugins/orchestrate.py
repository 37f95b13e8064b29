"""Orchestrator plugin (controller side): introspect the flagged VM, terminate the guilty process.

Through the public hooks only:

* ``alarm_opened`` → sends ``introspect`` to the alarm's host for the most-blamed VM with that
  VM's blamed metrics (once per alarm; at most once per ``rate_limit`` seconds per VM), and
  attaches the result to the alarm as a finding (``kind: introspection`` with the suspects, their
  evidence and the Volatility rows — or ``kind: introspection-failed`` with the agent's error,
  e.g. "no symbol table for banner …").
* ``verdict_given`` *malicious* → sends ``terminate`` for the suspect the operator picked
  (``params["pid"]``) or the top suspect, with the PID, name and start time the finding saw; the
  agent refuses if they no longer match (PID reuse), or if its owner has not consented
  (``introspection.terminate`` off, a ``never_kill`` name), and the alarm says why (a finding
  ``kind: termination-refused`` with the agent's reason; ``termination-dry-run`` when the agent
  only says what it would kill). The alarm id and what allowed the termination (the verdict with
  its actor and time, or the policy) go inside the signed parameters. After a verified termination the scope is watched until SPE is
  back under Q_α for ``settle_rows`` rows (``handle.scope_status``), then the alarm is closed
  with resolution ``terminated``.
* An explicit policy may terminate without a verdict: only when the alarm's detector is in
  ``auto_terminate_detectors`` *and* the top suspect's name is in ``auto_terminate_processes``
  (both empty by default: off).
* ``dry_run``: introspection still runs (it only reads), terminations are written to the audit
  trail as "would terminate" and not sent.

Every action goes to the alarm's audit trail (``handle.note``) with actor
``orchestrate`` (or the operator / ``policy`` who caused it).

The controller is reached only through the :class:`atomwatch.ControllerHandle` the hooks get;
nothing here imports ``atomwatch.controller``.

Options (``--set orchestrate.KEY=VALUE``, the fields of :class:`OrchestrateOptions`; durations
in seconds or as ``'5min'``): ``enabled`` (true), ``dry_run`` (false), ``rate_limit`` (per VM,
300), ``introspect_timeout`` (180), ``terminate_timeout`` (60), ``auto_terminate_detectors`` /
``auto_terminate_processes`` (lists, empty), ``settle_rows`` (3), ``watch_timeout`` (600),
``watch_interval`` (1).

Entry point (pyproject.toml, group ``atomwatch``): ``orchestrate = "atomwatch.plugins.orchestrate"``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, Any

import atomwatch
from atomwatch import Alarm, CommandFailed, ControllerHandle, Duration, Range

log = logging.getLogger(__name__)

NAME = "orchestrate"
ACTOR = "orchestrate"
#: audit notes that are also logged as warnings
FAILURES = ("termination not possible", "still abnormal after termination")


@atomwatch.declare_options(NAME)
@dataclass(frozen=True)
class OrchestrateOptions:
    """``--set orchestrate.KEY=VALUE``, read by :func:`atomwatch.parse_options`."""

    enabled: bool = True
    dry_run: bool = False
    rate_limit: Annotated[float, Duration] = 300.0  # per VM
    introspect_timeout: Annotated[float, Duration, Range(gt=0)] = 180.0
    terminate_timeout: Annotated[float, Duration, Range(gt=0)] = 60.0
    auto_terminate_detectors: tuple[str, ...] = ()
    auto_terminate_processes: tuple[str, ...] = ()
    settle_rows: Annotated[int, Range(ge=1)] = 3
    watch_timeout: Annotated[float, Duration] = 600.0
    watch_interval: Annotated[float, Duration, Range(gt=0)] = 1.0


class Options:
    """The parsed options (a :class:`~atomwatch.ConfigError` for a bad one), under the names the
    orchestrator reads them by."""

    def __init__(self, raw: dict[str, Any]):
        o = atomwatch.parse_options(NAME, OrchestrateOptions, raw)
        self.enabled = o.enabled
        self.dry_run = o.dry_run
        self.rate_limit = o.rate_limit
        self.introspect_timeout = o.introspect_timeout
        self.terminate_timeout = o.terminate_timeout
        self.auto_detectors = frozenset(o.auto_terminate_detectors)
        self.auto_processes = frozenset(o.auto_terminate_processes)
        self.settle_rows = o.settle_rows
        self.watch_timeout = o.watch_timeout
        self.watch_interval = o.watch_interval


def _score_and_threshold(status: dict[str, Any] | None) -> tuple[float | None, float | None, str]:
    """(score, threshold, which keys): pca-spe's SPE and Q_α, else any detector's score/threshold."""
    if not status:
        return None, None, ""
    for s_key, t_key in (("spe", "q_alpha"), ("score", "threshold")):
        s, t = status.get(s_key), status.get(t_key)
        if isinstance(s, (int, float)) and isinstance(t, (int, float)):
            return float(s), float(t), f"{s_key} ≤ {t_key}"
    return None, None, ""


class Orchestrator:
    """One per controller: the once-per-alarm and per-VM bookkeeping."""

    def __init__(self, handle: ControllerHandle):
        self.handle = handle
        self.opts = Options(handle.plugin_options(NAME))
        self.handled: set[int] = set()
        self.last_vm: dict[str, float] = {}
        self.inflight: dict[int, asyncio.Task] = {}

    def note(self, alarm_id: int, action: str, details: dict[str, Any] | None = None, actor: str = ACTOR) -> None:
        if action in FAILURES:  # what the operator must hear of, not only find in the audit trail
            why = (details or {}).get("why") or ", ".join(f"{k} {v}" for k, v in (details or {}).items())
            log.warning("alarm %s: %s: %s", alarm_id, action, why)
        try:
            self.handle.note(alarm_id, actor, action, details or {})
        except Exception:
            log.exception("audit note %r on alarm %s failed", action, alarm_id)

    # ------------------------------------------------------------------ introspection

    async def on_alarm_opened(self, alarm: Alarm) -> None:
        if alarm.id in self.handled or any(f.get("kind", "").startswith("introspection") for f in alarm.findings):
            return
        self.handled.add(alarm.id)
        vms = [v for v in alarm.blamed_vms() if v]
        if not vms:
            log.info("alarm %s: introspection skipped: the alarm blames no VM", alarm.id)
            self.note(alarm.id, "introspection skipped", {"why": "the alarm blames no VM"})
            return
        vm = vms[0]
        blamed = [b for b in alarm.blame if b.get("vm_uuid") == vm]
        vm_name = blamed[0].get("vm_name") if blamed else None
        metrics = sorted({b.get("metric") for b in blamed if b.get("metric")})
        now = time.monotonic()
        last = self.last_vm.get(vm)
        if last is not None and now - last < self.opts.rate_limit:
            log.info(
                "alarm %s: introspection of %s skipped: introspected %.0f s ago (rate limit %g s per VM)",
                alarm.id,
                vm_name or vm,
                now - last,
                self.opts.rate_limit,
            )
            self.note(
                alarm.id,
                "introspection skipped",
                {
                    "vm_uuid": vm,
                    "vm_name": vm_name,
                    "why": f"VM introspected {now - last:.0f} s ago; rate limit {self.opts.rate_limit:g} s per VM",
                },
            )
            return
        self.last_vm[vm] = now
        task = asyncio.current_task()
        if task is not None:
            self.inflight[alarm.id] = task
        try:
            await self.introspect(alarm, vm, vm_name, metrics)
        finally:
            self.inflight.pop(alarm.id, None)
        await self.maybe_auto_terminate(alarm.id)

    async def introspect(self, alarm: Alarm, vm: str, vm_name: str | None, metrics: list[str]) -> dict[str, Any] | None:
        params = {"vm": vm, "vm_name": vm_name, "metrics": metrics}
        self.note(alarm.id, "introspection requested", {"host": alarm.scope, **params})
        t0 = time.monotonic()
        try:
            result = await self.handle.send_command(
                alarm.site,
                alarm.host,
                "introspect",
                params,
                timeout=self.opts.introspect_timeout,
                on_progress=lambda r: _log_progress(alarm.id, "introspection", r),
            )
        except CommandFailed as e:
            log.warning(
                "alarm %s: introspection of %s failed: %s",
                alarm.id,
                vm_name or vm,
                e,
                extra={
                    "event": "introspection-failed",
                    "alarm": {"id": alarm.id, "vm": vm_name or vm, "error": str(e)},
                },
            )
            self.handle.add_findings(
                alarm.id,
                ACTOR,
                {
                    "kind": "introspection-failed",
                    "summary": str(e),
                    "error": str(e),
                    "vm_uuid": vm,
                    "vm_name": vm_name,
                    "metrics": metrics,
                    "seconds": round(time.monotonic() - t0, 3),
                },
            )
            return None
        log.info("alarm %s: introspection of %s done: %s", alarm.id, vm_name or vm, result.get("summary"))
        finding = {
            "kind": "introspection",
            "summary": result.get("summary"),
            "vm_uuid": result.get("vm_uuid", vm),
            "vm_name": result.get("vm_name", vm_name),
            "metrics": metrics,
            "suspects": result.get("suspects", []),
            "plugins": result.get("plugins", []),
            "rows": result.get("rows", {}),
            "errors": result.get("errors", {}),
            "banner": result.get("banner"),
            # how the memory was read: "live" (with the pause measured) or "dump" (with why not live)
            "source": result.get("source"),
            "live": result.get("live"),
            "not_live": result.get("not_live"),
            "dump": result.get("dump"),
            "baseline": result.get("baseline"),
            "timings": result.get("timings"),
            "seconds": round(time.monotonic() - t0, 3),
        }
        self.handle.add_findings(alarm.id, ACTOR, finding)
        return finding

    # ------------------------------------------------------------------ termination

    def latest_introspection(self, alarm_id: int) -> dict[str, Any] | None:
        alarm = self.handle.get_alarm(alarm_id)
        found = [f for f in alarm.findings if f.get("kind") == "introspection"]
        return found[-1] if found else None

    async def maybe_auto_terminate(self, alarm_id: int) -> None:
        if not self.opts.auto_detectors or not self.opts.auto_processes:
            return
        alarm = self.handle.get_alarm(alarm_id)
        finding = self.latest_introspection(alarm_id)
        if alarm.state != "open" or finding is None or not finding.get("suspects"):
            return
        top = finding["suspects"][0]
        if alarm.detector in self.opts.auto_detectors and top.get("name") in self.opts.auto_processes:
            self.note(
                alarm_id,
                "automatic termination allowed by policy",
                {"detector": alarm.detector, "process": top.get("name"), "pid": top.get("pid")},
                actor="policy",
            )
            await self.terminate(
                alarm_id,
                None,
                actor="policy",
                authorization={
                    "by": "policy",
                    "policy": "auto_terminate",
                    "detector": alarm.detector,
                    "process": top.get("name"),
                },
            )

    async def on_verdict(self, alarm: Alarm, verdict: str, actor: str, params: dict[str, Any]) -> None:
        if verdict != "malicious":
            return
        pending = self.inflight.get(alarm.id)
        if pending is not None and pending is not asyncio.current_task():
            self.note(alarm.id, "termination waits for the introspection in progress", actor=ACTOR)
            await asyncio.wait([pending])
        pid = params.get("pid")
        authorization = {"by": "verdict", "verdict": verdict, "actor": actor, "at": time.time()}
        await self.terminate(alarm.id, pid, actor=actor, authorization=authorization)

    async def terminate(self, alarm_id: int, pid: Any, actor: str, authorization: dict[str, Any]) -> bool:
        """Send ``terminate`` for the suspect ``pid`` (None: the top suspect) with the alarm id and
        ``authorization`` (what allowed it, checked by the agent) inside the signed parameters."""
        alarm = self.handle.get_alarm(alarm_id)
        finding = self.latest_introspection(alarm_id)
        if finding is None or not finding.get("suspects"):
            self.note(
                alarm_id, "termination not possible", {"why": "no introspection findings with suspects on this alarm"}
            )
            return False
        suspects = finding["suspects"]
        if pid is None:
            target = suspects[0]
        else:
            try:
                pid = int(pid)
            except (TypeError, ValueError):
                self.note(alarm_id, "termination not possible", {"why": f"pid {pid!r} is not an integer"}, actor=actor)
                return False
            target = next((s for s in suspects if s.get("pid") == pid), None)
            if target is None:
                self.note(
                    alarm_id,
                    "termination not possible",
                    {
                        "why": f"pid {pid} is not among the suspects of the finding ({', '.join(str(s.get('pid')) for s in suspects)})"
                    },
                    actor=actor,
                )
                return False
        params = {
            "vm": finding.get("vm_uuid"),
            "vm_name": finding.get("vm_name"),
            "pid": target["pid"],
            "name": target["name"],
            "start_time": target.get("start_time"),
            # a suspect whose new descendants were folded into it goes with its process group
            "group": bool((target.get("facts") or {}).get("descendants")),
            "alarm": alarm_id,
            "authorization": authorization,
        }
        if self.opts.dry_run:
            self.note(alarm_id, "dry run: would terminate", params, actor=actor)
            return False
        self.note(alarm_id, "termination requested", params, actor=actor)
        try:
            result = await self.handle.send_command(
                alarm.site, alarm.host, "terminate", params, timeout=self.opts.terminate_timeout
            )
        except CommandFailed as e:
            text = str(e)
            refused = "refused:" in text
            log.warning(
                "alarm %s: termination of %s (pid %s) not done: %s", alarm_id, target["name"], target["pid"], text
            )
            self.handle.add_findings(
                alarm_id,
                ACTOR,
                {
                    "kind": "termination-refused" if refused else "termination-failed",
                    "summary": text,
                    "error": text,
                    "target": params,
                },
            )
            return False
        if result.get("dry_run"):
            # the hypervisor owner runs terminate as dry-run: nothing was killed, the alarm stays open
            self.handle.add_findings(
                alarm_id,
                ACTOR,
                {
                    "kind": "termination-dry-run",
                    "summary": f"the agent would terminate {target['name']} (pid {target['pid']}) in "
                    f"{finding.get('vm_name')}; it runs terminate as dry-run, nothing was killed",
                    "target": params,
                    "result": result,
                },
            )
            return False
        self.handle.add_findings(
            alarm_id,
            ACTOR,
            {
                "kind": "termination",
                "summary": f"terminated {target['name']} (pid {target['pid']}) in "
                f"{finding.get('vm_name')}: {result.get('verified')}",
                "target": params,
                "result": result,
            },
        )
        await self.watch_and_close(alarm_id)
        return True

    async def watch_and_close(self, alarm_id: int) -> None:
        """Close the alarm once the scope's score is back under its threshold for
        ``settle_rows`` consecutive rows; note it if that does not happen in ``watch_timeout``."""
        alarm = self.handle.get_alarm(alarm_id)
        self.note(alarm_id, "watching the scope", {"until": "SPE under Q_α", "settle_rows": self.opts.settle_rows})
        deadline = time.monotonic() + self.opts.watch_timeout
        last_row = None
        under = 0
        spe = q = None
        measure = ""
        while time.monotonic() < deadline:
            st = self.handle.scope_status(alarm.scope) or {}
            row = st.get("row")
            if row is not None and row != last_row:
                last_row = row
                spe, q, measure = _score_and_threshold((st.get("detectors") or {}).get(alarm.detector))
                under = under + 1 if spe is not None and q is not None and spe <= q else 0
                if under >= self.opts.settle_rows:
                    current = self.handle.get_alarm(alarm_id)
                    if current.state != "closed":
                        self.handle.close_alarm(
                            alarm_id,
                            ACTOR,
                            "terminated",
                            {"score": spe, "threshold": q, "measure": measure, "row": row, "rows_under": under},
                        )
                    return
            await asyncio.sleep(self.opts.watch_interval)
        self.note(
            alarm_id,
            "still abnormal after termination",
            {"watched_s": self.opts.watch_timeout, "last_score": spe, "last_threshold": q, "measure": measure},
        )


def _log_progress(alarm_id: int, what: str, reply: Any) -> None:
    """One INFO line per progress step the agent reports (the bare "accepted" says nothing: DEBUG)."""
    if reply.status == "accepted" or not reply.result:
        log.debug("alarm %s: %s %s by the agent", alarm_id, what, reply.status)
        return
    info = dict(reply.result)
    stage = info.pop("stage", None) or reply.status
    rest = ", ".join(f"{k} {v}" for k, v in info.items())
    log.info("alarm %s: %s %s%s", alarm_id, what, stage, f" ({rest})" if rest else "")


_ORCHESTRATORS: weakref.WeakKeyDictionary[ControllerHandle, Orchestrator] = weakref.WeakKeyDictionary()


def orchestrator_for(handle: ControllerHandle) -> Orchestrator:
    """The orchestrator of the controller this handle belongs to (one handle per controller)."""
    orch = _ORCHESTRATORS.get(handle)
    if orch is None:
        orch = _ORCHESTRATORS[handle] = Orchestrator(handle)
    return orch


@atomwatch.hookimpl
def alarm_opened(alarm: Alarm, handle: ControllerHandle) -> Awaitable[None] | None:
    orch = orchestrator_for(handle)
    if not orch.opts.enabled:
        return None
    return orch.on_alarm_opened(alarm)


@atomwatch.hookimpl
def verdict_given(
    alarm: Alarm, verdict: str, actor: str, params: dict[str, Any], handle: ControllerHandle
) -> Awaitable[None] | None:
    orch = orchestrator_for(handle)
    if not orch.opts.enabled or verdict != "malicious":
        return None
    return orch.on_verdict(alarm, verdict, actor, dict(params or {}))
