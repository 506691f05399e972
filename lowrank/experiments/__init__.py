"""Recorded experiments: the SQLite run store, single runs, background sweeps and their worker."""
