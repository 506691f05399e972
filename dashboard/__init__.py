"""Streamlit helpers shared by the dashboard pages (the router is ``app.py``, the pages ``pages/``):

* ``session``: session state (current model, task, evaluation limit, rank plan);
* ``cache``: the cached ``lowrank`` calls (models, tasks, spectra, statistics, the run store);
* ``layout``: the page table (pages link by its keys) and the sidebar;
* ``widgets``: option widgets, error display and the pages' guard, statistics buttons, sweep cards;
* ``inputs``: what a browser may ask for: model folders under allowed roots, bounded and expiring uploads;
* ``progress``: a progress bar for the library's progress callbacks;
* ``labels``: names of models, tasks, statistics and needs (numbers as text: ``lowrank.report.formats``);
* ``rank_table``: the Ranks page's table and how typed ranks are read (no Streamlit);
* ``plots``: plotly figure builders (no Streamlit);
* ``serve``: a server + headless-browser harness for tests and benchmarks.

The library (``lowrank``) never imports this package or Streamlit. Pages import this package
before ``lowrank``, so the setting below is in place before torch loads OpenMP.
"""

import os

# Busy-waiting OpenMP threads slow MKL's SVD down by orders of magnitude whenever another process
# shares the CPU cores (docs/results/dashboard.md); a passive wait policy avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
