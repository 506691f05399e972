"""The command line: ``lowrank`` (or ``python -m lowrank``); one module per command group."""
