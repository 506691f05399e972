"""The page table (script, title, icon, one line on what the page is for) and the sidebar around every page.

``app.py`` routes with ``st.navigation`` over this table and the Home page lists it. Streamlit's
own page list is hidden in favour of the labelled links and the current selection below.
"""

from __future__ import annotations

from typing import NamedTuple

import streamlit as st

from . import session


class PageEntry(NamedTuple):
    script: str
    title: str
    icon: str
    blurb: str


PAGES = (
    PageEntry("pages/0_Home.py", "Home", ":material/home:", "the workflow, the current status and a one-click demo"),
    PageEntry("pages/1_Model_and_task.py", "Model & task", ":material/dataset:", "pick a model and the data that measures it"),
    PageEntry("pages/2_Spectra.py", "Spectra", ":material/ssid_chart:",
              "how low-rank is each layer, and where the Fisher information sits"),
    PageEntry("pages/3_Ranks.py", "Ranks", ":material/tune:", "spend a parameter budget across layers, by strategy or by hand"),
    PageEntry("pages/4_Factorize.py", "Factorize", ":material/call_split:",
              "run SVD or a weighted method on the plan, compare before/after, download"),
    PageEntry("pages/5_Trade_offs.py", "Trade-offs", ":material/insights:",
              "accuracy against size for every method and budget, from every run so far"),
)


def sidebar() -> None:
    """Links to every page and the current model / task / plan."""
    with st.sidebar:
        for entry in PAGES:
            st.page_link(entry.script, label=entry.title, icon=entry.icon)
        st.divider()
        st.caption("Current selection")
        session.render_status(st.empty())
