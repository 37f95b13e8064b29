"""One module per ``atomwatch`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
