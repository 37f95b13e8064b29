"""Start and stop the lab's guest programs through the QEMU guest agent.

The programs are the busybox scripts of ``lab/files/`` installed in the guest's
``/usr/local/bin`` (their file names are the process names an introspection sees):
``normal``, ``cryptominer``, ``ddos-bot``, ``leaker``, ``exfil``. The guest-side helper
``labctl`` starts one detached in its own session and stops it with its whole process group.
"""

from __future__ import annotations

import logging

from .domains import AgentError, sh
from .paths import TARGET_HTTP_PORT, TARGET_IP, TARGET_SINK_PORT, guest_ip

log = logging.getLogger(__name__)

WORKLOADS = ("normal", "cryptominer", "ddos-bot", "leaker", "exfil")


def default_args(workload: str, day_seconds: int = 600, victim: int | None = None) -> list[str]:
    """The arguments a scenario gives a workload (the lab's target unless a victim guest is named)."""
    url = f"http://{guest_ip(victim)}/" if victim else f"http://{TARGET_IP}:{TARGET_HTTP_PORT}/"
    if workload == "normal":
        return [str(day_seconds), f"http://{TARGET_IP}:{TARGET_HTTP_PORT}/"]
    if workload == "ddos-bot":
        return [url, "4"]
    if workload == "exfil":
        return [TARGET_IP, str(TARGET_SINK_PORT)]
    if workload == "leaker":
        return ["2", "2", "150"]
    return []


def _check(workload: str) -> None:
    if workload not in WORKLOADS and workload != "httpd":
        raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")


def start(dom, workload: str, args: list[str] | None = None) -> None:
    _check(workload)
    if workload == "httpd":  # the victim's web server in the resource-freeing scenario
        sh(dom, "mkdir -p /tmp/www && head -c 65536 /dev/zero > /tmp/www/index.html && httpd -p 80 -h /tmp/www")
        return
    argv = " ".join(_quote(a) for a in (args if args is not None else default_args(workload)))
    sh(dom, f"labctl start {workload} {argv}")
    log.info("%s: started %s %s", dom.name(), workload, argv)


def stop(dom, workload: str) -> None:
    _check(workload)
    if workload == "httpd":
        sh(dom, "killall httpd 2>/dev/null; true")
        return
    sh(dom, f"labctl stop {workload}")
    if workload == "leaker":
        sh(dom, "labctl clean")
    log.info("%s: stopped %s", dom.name(), workload)


def running(dom) -> list[str]:
    return sh(dom, "labctl running").split()


def stop_all(dom) -> None:
    try:
        for w in WORKLOADS:
            sh(dom, f"labctl stop {w}")
        sh(dom, "labctl clean; killall httpd 2>/dev/null; true")
    except AgentError as e:
        log.warning("%s", e)


def _quote(a: str) -> str:
    return "'" + a.replace("'", "'\\''") + "'"
