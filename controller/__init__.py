"""The controller: the process that rebuilds every host's series and watches them (ATOM's tracker).

What lives here: configuration (``config``), ingest of births, data and deaths (``ingest``), the
rows each scope hands its detectors (``scopes``), running detector plugins off the event loop
(``detection``), the alarms store (``alarms``), the operator's log of alarm events
(``alarm_log``), commands to agents and their replies
(``commands``), verdicts, findings and closing alarms (``verdicts``), ATOM's μ → Δ push
(``delta_push``), the handle event hooks get instead of the controller (``handle``), the HTTP
API and /metrics (``api``, ``metrics``), and the process that ties them together: the MQTT
session and the detection tick (``app``).

What does not: the hook specifications and the types plugins see (the core: ``atomwatch.hookspecs``,
``atomwatch.handles``, ``atomwatch.alarm``), any concrete detector or orchestrator (``plugins/``)
— the controller finds them through the hooks only — and anything that runs on a hypervisor
(``agent/``).
"""
