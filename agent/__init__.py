"""The agent: the process on every hypervisor (ATOM's observer).

What lives here: its configuration (``config``), the series table that gives every series an
alias (``series_table``), the sampling of collectors under a time budget (``sampling``), command
handling (``commands``) and the tick loop that ties them together with ATOM's online tracking
(:mod:`atomwatch.tracking`) and the MQTT session (``runtime``): collect → track → publish. The
hook specifications of the agent side are in :mod:`atomwatch.hookspecs`.

What does not: any concrete collector (``plugins/``), memory forensics (``introspection/``), and
anything about detection — the agent knows nothing of detectors.
"""
