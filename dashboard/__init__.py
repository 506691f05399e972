"""Streamlit helpers shared by the dashboard pages: session state and cached work (``state``),
the page frame (``layout``), widgets and progress bars (``widgets``), plotly figure builders
(``plots``), and a server + headless-browser harness for tests and benchmarks (``serve``).

The library (``lowrank``) never imports this package or Streamlit. Pages import this package
before ``lowrank``, so the setting below is in place before torch loads OpenMP.
"""

import os

# With busy-waiting OpenMP threads, MKL's SVD becomes ~100x slower (seconds per 384x384 matrix)
# whenever another process shares the CPU cores; a passive wait policy keeps it at milliseconds.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
