"""The ``coredns`` collector plugin: CoreDNS's Prometheus metrics as per-instance series.

This module holds only the hook implementation. Scraping and parsing are in :mod:`.collector`,
the metric table and the per-instance derivation in :mod:`.metrics`. Background: ``docs/coredns.md``.
"""

from __future__ import annotations

from typing import Any

import atomwatch

from .collector import CorednsCollector, CorednsOptions, log


@atomwatch.hookimpl
def register_collectors(config: Any) -> list[CorednsCollector] | None:
    """One :class:`CorednsCollector` for every endpoint in option ``endpoints``; none when unset."""
    options = atomwatch.parse_options("coredns", CorednsOptions, config.plugin_options("coredns") or {})
    if not options.endpoints:
        log.debug("coredns: option 'endpoints' is not set, no CoreDNS is scraped")
        return None
    budget = getattr(config, "budget", None)
    if budget is None:
        tick = getattr(config, "tick", None)
        budget = 0.8 * float(tick) if tick else 5.0
    collector = CorednsCollector.from_options(options, default_budget=float(budget))
    log.info("coredns: scraping %s", ", ".join(f"{e.name}={e.url}" for e in collector.endpoints))
    return [collector]
