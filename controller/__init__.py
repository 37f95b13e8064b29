"""The controller: the process that rebuilds every host's series and watches them (ATOM's tracker).

What lives here: configuration (``config``), ingest of births, data and deaths (``ingest``), the
rows each scope hands its detectors (``scopes``), running detector plugins off the event loop
(``detection``), the alarm store (``alarms``), the HTTP API (``api``) and Prometheus metrics
(``metrics``), and the process that ties them together and sends commands to agents (``app``).
The hook specifications of the controller side are in :mod:`atomwatch.hookspecs`.

What does not: any concrete detector or orchestrator (``plugins/``) — the controller finds them
through the hooks only — and anything that runs on a hypervisor (``agent/``).
"""
