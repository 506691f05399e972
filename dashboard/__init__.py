"""Streamlit helpers shared by the dashboard pages (the router is ``app.py``, the pages ``pages/``).

``session``: session state (model, task, evaluation limit, rank plan); ``cache``: the cached ``lowrank`` calls;
``layout``: the page table and the sidebar; ``widgets``: option widgets, error display and the pages' guard,
statistics buttons, job cards; ``inputs``: what a browser may ask for (model folders under allowed roots,
bounded and expiring uploads); ``progress``: a progress bar for library callbacks; ``labels``: display names;
``rank_table``: the Ranks page's table and typed ranks, and ``plots``: plotly figures (both without
Streamlit); ``serve``: a server + headless-browser harness. The library never imports this package or
Streamlit; pages import it before ``lowrank``, so the setting below is in place before torch loads OpenMP.
"""

import os

# Busy-waiting OpenMP threads slow MKL's SVD down by orders of magnitude whenever another process
# shares the CPU cores (docs/results/dashboard.md); a passive wait policy avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
