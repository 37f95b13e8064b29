"""The controller: the process that rebuilds every host's series and watches them (ATOM's tracker).

What lives here: configuration (``config``), the hook specifications of the controller side
(``hookspecs``), ingest of births, data and deaths (``ingest``), the rows each scope hands its
detectors (``scopes``), running detector plugins off the event loop (``detection``), commands to
agents and their replies (``commands``), and the process that ties them together (``app``).

What does not: any concrete detector or orchestrator (``plugins/``) — the controller finds them
through the hooks only — and anything that runs on a hypervisor (``agent/``).
"""
