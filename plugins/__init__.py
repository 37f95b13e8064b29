"""Built-in plugins, installed as ``atomwatch.plugins``: every collector, detector and orchestrator
atomwatch ships.

One module a plugin, or one sub-package a plugin with helpers (``pca_spe``, ``precog``, ``deep``,
``coredns``) whose ``__init__`` holds only its hook implementations. Each is declared in the
``atomwatch`` entry-point group of ``pyproject.toml`` and registered exactly like a third-party
plugin. They import the core (and ``atomwatch.introspection``), never the agent or the controller;
nothing below them imports them. What does not live here: the hook specifications
(:mod:`atomwatch.hookspecs`), what controller-side hooks are handed
(:class:`atomwatch.ControllerHandle`) and the machinery that runs plugins (:mod:`atomwatch.pluginmanager`).
"""
