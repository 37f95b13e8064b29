"""Prometheus pieces the agent's and the controller's ``/metrics`` share.

What lives here: ``atomwatch_build_info``, the registry every scrape renders (the process, platform
and garbage-collector collectors of prometheus-client beside a role's own collector), and a
guard that keeps one broken family from failing a whole scrape. What does not: the families of
each role (``atomwatch.agent.metrics``, ``atomwatch.controller.metrics``); the naming rules and
what each series means (``docs/operations.md``).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily

from . import __version__

log = logging.getLogger(__name__)

#: the Content-Type of the text exposition format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_info(role: str) -> GaugeMetricFamily:
    """``atomwatch_build_info{role,version,python} 1``: join on it to see which version runs where."""
    family = GaugeMetricFamily(
        "atomwatch_build_info",
        "Always 1: the atomwatch version and Python of this process",
        labels=["role", "version", "python"],
    )
    family.add_metric([role, __version__, platform.python_version()], 1)
    return family


def guarded(sections: Iterable[Callable[[], Iterable[Any]]], failed: set[str]) -> Iterator[Any]:
    """The families of each section in turn; a section that raises is left out of this scrape and
    logged (with its traceback the first time), so the other families still answer."""
    for section in sections:
        try:
            families = list(section())
        except Exception:
            name = getattr(section, "__name__", repr(section))
            if name not in failed:
                failed.add(name)
                log.exception("metrics section %s failed; left out of the scrape", name)
            else:
                log.debug("metrics section %s failed again", name)
            continue
        yield from families


def render(collector: Any) -> bytes:
    """One scrape: ``collector`` and the process, platform and GC collectors, in text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry)
