"""The agent: the process on every hypervisor (ATOM's observer), installed as ``atomwatch.agent``.

What lives here: its configuration (``config``), the series table that gives every series an
alias (``series_table``), the sampling of collectors under a time budget (``sampling``), command
handling (``commands``) and the tick loop with its MQTT session (``runtime``): collect → track →
publish. It imports only the core (ATOM's tracking is :mod:`atomwatch.tracking`).

What does not: any concrete collector (``atomwatch.plugins``), memory forensics
(``atomwatch.introspection``), and anything about detection — the agent knows nothing of detectors.
"""
