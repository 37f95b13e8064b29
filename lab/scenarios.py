"""Named lab scenarios: which guests do normal work, which attack runs where and when.

A schedule is given in fractions of the run, so ``--minutes`` stretches it (the default
10-minute ``cryptominer`` run attacks guest 2 from minute 3 to minute 8). Labels come from the
schedule alone (:meth:`Scenario.labels`), never from what was measured, so they are the same for
every run of the same command.

Labelling rule: row ``i`` (``i`` ≥ 1) holds the rates measured over the tick that ends at
``i × tick`` seconds after the start; it is labelled 1 when that tick overlaps an attack, i.e.
``start < i × tick ≤ end`` (offsets in seconds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .paths import guest_name


@dataclass(frozen=True)
class Attack:
    """``workload`` runs in guest ``guest`` from ``start`` to ``end`` (fractions of the run)."""

    klass: str
    workload: str
    guest: int
    start: float
    end: float
    args: tuple[str, ...] | None = None
    #: a guest the attack is aimed at (resource-freeing: the victim's web server)
    victim: int | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    guests: int = 3
    minutes: float = 10.0
    #: seconds of one compressed "day" of the normal workload
    day_seconds: int = 600
    normal: tuple[int, ...] = (1, 2, 3)
    #: guests that serve HTTP (busybox httpd on port 80) for the whole run
    servers: tuple[int, ...] = ()
    attacks: tuple[Attack, ...] = field(default_factory=tuple)

    def window(self, attack: Attack, minutes: float) -> tuple[float, float]:
        """(start, end) of an attack in seconds from the start of the run."""
        total = minutes * 60.0
        return attack.start * total, attack.end * total

    def labels(self, rows: int, tick: float, minutes: float) -> list[tuple[int, str, str]]:
        """(label, class, vm) for rows 1..rows; vm names are ';'-joined when several attack."""
        out = []
        for i in range(1, rows + 1):
            t = i * tick
            on = [a for a in self.attacks if self.window(a, minutes)[0] < t <= self.window(a, minutes)[1]]
            if on:
                klass = ";".join(sorted({a.klass for a in on}))
                vms = ";".join(sorted({guest_name(a.guest) for a in on}))
                out.append((1, klass, vms))
            else:
                out.append((0, "normal", ""))
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attacks"] = [asdict(a) for a in self.attacks]
        return d


def _attack(klass: str, guest: int, start: float, end: float, **kw) -> Attack:
    return Attack(klass=klass, workload=kw.pop("workload", klass), guest=guest, start=start, end=end, **kw)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("normal", "three guests with normal web-like work and periodic disk writes; no attack"),
        Scenario(
            "cryptominer",
            "three guests with normal work; a cryptominer (CPU burn) in guest 2 from 30 % to 80 % of the run",
            attacks=(_attack("cryptominer", 2, 0.3, 0.8),),
        ),
        Scenario(
            "ddos",
            "ATOM experiment 1: three guests with normal work; ddos-bot (HTTP connection flood to the target) "
            "in guests 2 and 3 from 30 % to 80 % of the run",
            attacks=(_attack("ddos-bot", 2, 0.3, 0.8), _attack("ddos-bot", 3, 0.3, 0.8)),
        ),
        Scenario(
            "leaker",
            "three guests with normal work; a leaker (memory grows 1 MiB/s up to 150 MiB) in guest 2 from 20 % "
            "to 90 % of the run",
            attacks=(_attack("leaker", 2, 0.2, 0.9),),
        ),
        Scenario(
            "exfil",
            "three guests with normal work; exfil (a large outbound transfer to the target) in guest 3 from "
            "40 % to 60 % of the run",
            attacks=(_attack("exfil", 3, 0.4, 0.6),),
        ),
        Scenario(
            "resource-freeing",
            "ATOM experiment 2: guest 1 (victim) serves HTTP and does normal work; from 30 % to 80 % of the run "
            "guest 2 floods the victim's web server (ddos-bot) so the victim spends its CPU on the flood, and "
            "runs a CPU-bound job (cryptominer) that takes the CPU the victim frees; guest 3 does normal work",
            servers=(1,),
            attacks=(
                _attack("resource-freeing", 2, 0.3, 0.8, workload="ddos-bot", victim=1),
                _attack("resource-freeing", 2, 0.3, 0.8, workload="cryptominer"),
            ),
        ),
    ]
}


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
