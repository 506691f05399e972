"""What every page does first: page config, session defaults, and the sidebar (navigation with
readable labels and the current model / task / plan).

The app is a file-based multipage app (``app.py`` + ``pages/``), so every page also works when
opened directly by its URL; Streamlit's own page list is hidden (``client.showSidebarNavigation``)
in favour of the labelled links below.
"""

from __future__ import annotations

import streamlit as st

from . import state

# (script, label, icon, one-line description)
PAGES = (
    ("app.py", "Home", ":material/home:", "the workflow, the current status and a one-click demo"),
    ("pages/1_Model_and_task.py", "Model & task", ":material/dataset:", "pick a model and the data that measures it"),
    ("pages/2_Spectra.py", "Spectra", ":material/ssid_chart:", "how low-rank is each layer, and where the Fisher information sits"),
    ("pages/3_Ranks.py", "Ranks", ":material/tune:", "spend a parameter budget across layers, by strategy or by hand"),
    ("pages/4_Factorize.py", "Factorize", ":material/call_split:",
     "run SVD or a Fisher-weighted method on the plan, compare before/after, download"),
    ("pages/5_Trade_offs.py", "Trade-offs", ":material/insights:",
     "accuracy against size for every method and budget, from every run so far"),
)


def setup(title: str) -> None:
    """Page config, session defaults and the sidebar; call first on every page."""
    st.set_page_config(page_title=f"{title} · lowrank-studio", page_icon=":material/compress:", layout="wide")
    state.init()
    with st.sidebar:
        for path, label, icon, _ in PAGES:
            st.page_link(path, label=label, icon=icon)
        st.divider()
        st.caption("Current selection")
        state.render_status(st.empty())
    st.title(title)
