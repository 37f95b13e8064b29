"""The agent: the process on every hypervisor (ATOM's observer).

What lives here: its configuration (``config``), the hook specifications of the agent side
(``hookspecs``), the series table that gives every series an alias (``series_table``), the
sampling of collectors under a time budget (``sampling``), ATOM's online tracking
(``tracking``), the MQTT session (``session``), command handling (``commands``) and the tick loop
that ties them together (``runtime``): collect → track → publish.

What does not: any concrete collector (``plugins/``), memory forensics (``introspection/``), and
anything about detection — the agent knows nothing of detectors.
"""
