"""The data plugins exchange with the agent and the controller.

Collectors return :class:`Reading`; detectors receive :class:`Row` and return :class:`Anomaly`
objects that name the columns they blame (:class:`Blame`). All are plain dataclasses so a plugin
needs nothing but ``import atomwatch``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .series import SeriesKey

if TYPE_CHECKING:  # numpy is imported by the code that builds rows, not by ``import atomwatch``
    import numpy as np

# --------------------------------------------------------------------------- agent side


@dataclass
class Reading:
    """What one collector read at one tick.

    ``values`` maps every series the collector knows *now* to its value; ``None`` (or NaN) means
    the series exists but could not be read this tick (the agent sends an explicit *stale*
    marker, never an invented value). A series that was in the previous reading and is missing
    now is *gone* (a VM stopped): the agent sends a *gone* marker and a new birth.

    ``deltas`` optionally gives a default tracking error Δ (absolute, in the series' unit) for a
    series; the agent's configuration and the controller's ``set-delta`` command override it.
    """

    values: dict[SeriesKey, float | None]
    deltas: dict[SeriesKey, float] = field(default_factory=dict)


@runtime_checkable
class Collector(Protocol):
    """An agent-side source of series. ``collect`` may block (it runs in a worker thread with a
    time budget); it should return within the agent's tick. An optional int ``hung_ticks``
    (VM-ticks made stale because the VM did not answer) is exported by the agent's metrics."""

    name: str

    def collect(self) -> Reading: ...

    def close(self) -> None: ...


class AgentSettings(Protocol):
    """What agent-side hooks are handed: the agent's identity, tick and each plugin's options
    (never the agent itself)."""

    site: str
    host: str
    tick: float

    @property
    def budget(self) -> float:
        """Seconds a tick's collection may take before a collector's reading is skipped."""
        ...

    def plugin_options(self, name: str) -> dict[str, Any]:
        """The options the user gave plugin ``name`` (an empty dict if none)."""
        ...


#: ``await handler(params, progress)`` → result dict; raise :class:`CommandError` to fail.
CommandHandler = Callable[[dict[str, Any], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[dict[str, Any]]]


class CommandError(Exception):
    """A command failed for a reason the operator should read (sent back as the error reply)."""


# --------------------------------------------------------------------------- controller side


@dataclass
class Row:
    """One controller tick of one scope: the current rebuilt value of every column.

    ``values[j]`` is NaN when column ``j`` is stale or unknown at this tick. ``columns`` may change
    between rows (a VM appears or leaves); detectors must cope. ``index`` counts the scope's rows
    from 0 (in ``atomwatch detect`` it is the CSV row number).

    ``deltas[j]``, when given, is column ``j``'s tracking error Δ as its agent announced it: the
    rebuilt value is within Δ of the truth, so a change smaller than Δ cannot be told from
    tracking noise. None when unknown (offline traces hold the collector's own values). The
    controller hands every row of one series table the same ``columns`` tuple and the same
    read-only ``deltas`` array, so a detector may skip work when they are the objects it saw last.

    ``late`` is True for a row rebuilt from an agent's historical data (ticks it kept while the
    broker was unreachable and sent once it was back): ``ts`` is then the agent's tick time, in
    the past; it comes after the scope's rows before the outage and before those after it.
    """

    scope: str
    index: int
    ts: float
    columns: tuple[SeriesKey, ...]
    values: np.ndarray
    deltas: np.ndarray | None = None
    late: bool = False


@dataclass
class Blame:
    """One column a detector holds responsible, with the numbers behind it."""

    column: SeriesKey
    direction: str = "up"  # "up" | "down"
    score: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column.column,
            "vm_uuid": self.column.vm_uuid,
            "vm_name": self.column.vm_name,
            "metric": self.column.metric,
            "direction": self.direction,
            "score": self.score,
            **self.details,
        }


@dataclass
class Anomaly:
    """A detector's finding at one row of one scope."""

    detector: str
    scope: str
    index: int
    ts: float
    score: float
    threshold: float
    blame: list[Blame] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blame"] = [b.to_dict() for b in self.blame]
        return d


@runtime_checkable
class Detector(Protocol):
    """One detector instance watches one scope. ``update`` is called once per row, in order, in a
    worker thread (never on the event loop). It returns the anomalies at this row (usually zero
    or one)."""

    name: str

    def update(self, row: Row) -> Sequence[Anomaly] | Anomaly | None: ...


class NotConfigured(ValueError):
    """Raised by ``DetectorFactory.create`` when the detector needs options the operator has not
    given (a trained model, say): the controller then runs without it and says so once, at INFO,
    instead of reporting a failure. Any other exception from ``create`` is a failure (ERROR)."""


class DetectorFactory(Protocol):
    """What ``register_detectors`` returns: makes one :class:`Detector` per scope (raising
    :class:`NotConfigured` when it cannot run without options it was not given).

    Optional methods a detector instance may have, which the controller uses when present:
    ``accept_normal(rows: list[Row])`` (the operator's *normal* verdict: fold these rows into the
    model), ``reject(rows: list[Row])`` (the *malicious* verdict: keep these rows out of the model
    for good), ``status() -> dict`` (for the API and /metrics, e.g. current score and threshold).
    An anomaly's ``details["audit"]`` (``{"action": str, "details": dict}``), when present, is
    written to its alarm's audit trail (e.g. a model that changed while the alarm waits).
    """

    name: str
    description: str

    def create(self, scope: str, options: Mapping[str, Any]) -> Detector: ...


def as_anomalies(result: Sequence[Anomaly] | Anomaly | None) -> list[Anomaly]:
    """Normalise what ``Detector.update`` returned into a list, rejecting anything else."""
    if result is None:
        return []
    if isinstance(result, Anomaly):
        return [result]
    out = list(result)
    for a in out:
        if not isinstance(a, Anomaly):
            raise TypeError(f"detector returned {type(a).__name__}, not atomwatch.Anomaly")
    return out
