"""Recorded experiments: the SQLite run store, single runs, and background jobs (sweeps, model builds) with their worker."""
