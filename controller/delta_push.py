"""ATOM's μ → Δ push: tracking errors derived from each scope's model, sent to its agent.

What lives here: :class:`DeltaPush` — asks a scope's detectors for ``deltas_from_mu(μ)`` (in the
detection thread) and sends the result to the scope's agent as ``set-delta``, by alias. What
does not: when it runs (every ``mu_every`` rows, decided by the detection tick in :mod:`.app`),
how a detector derives Δ (the detector plugin), how the agent applies it (the agent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Any

from .detection import Detection, NoSuchMethod
from .ingest import HostState

log = logging.getLogger(__name__)

#: ``send(site, host, command, params, timeout=…)`` → the agent's result
Send = Callable[..., Awaitable[dict[str, Any]]]


class DeltaPush:
    """``hosts`` is ingest's live map of (site, host) → state; ``detectors`` returns the
    controller's current detector set; ``executor`` is the detection thread."""

    def __init__(
        self,
        hosts: Mapping[tuple[str, str], HostState],
        detectors: Callable[[], Detection],
        executor: Executor,
        send: Send,
    ) -> None:
        self.hosts = hosts
        self.detectors = detectors
        self.executor = executor
        self.send = send

    async def push(self, scope: str, mu: float) -> None:
        """Δ per series from the user's deviation μ and the scope's current model, sent to the
        scope's agent (applied from the next round). The first detector with a model wins."""
        site, _, host = scope.partition("/")
        state = self.hosts.get((site, host))
        if state is None:
            return
        detection = self.detectors()
        for name in detection.names:
            try:
                deltas = await asyncio.get_running_loop().run_in_executor(
                    self.executor, detection.call, scope, name, "deltas_from_mu", mu
                )
            except NoSuchMethod:
                continue
            except (ValueError, RuntimeError) as e:  # no model yet (warming up)
                log.debug("no Δ from μ for %s: %s", scope, e)
                continue
            if not deltas:
                continue
            aliases = {key: alias for alias, key in state.keys.items()}
            by_alias = {str(aliases[k]): float(d) for k, d in deltas.items() if k in aliases and d == d}
            if by_alias:
                result = await self.send(site, host, "set-delta", {"aliases": by_alias}, timeout=30)
                log.info("set-delta from μ = %g (%s) on %s: %s series", mu, name, scope, result.get("applied"))
            return
