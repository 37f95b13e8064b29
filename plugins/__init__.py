"""Built-in plugins: every collector, detector and orchestrator atomwatch ships, one module each.

Each is declared in the ``atomwatch`` entry-point group of ``pyproject.toml`` and registered
exactly like a third-party plugin; nothing in ``agent/`` or ``controller/`` imports these modules.
What does not live here: the hook specifications (:mod:`atomwatch.hookspecs`) and the machinery
that runs plugins (:mod:`atomwatch.pluginmanager`).
"""
