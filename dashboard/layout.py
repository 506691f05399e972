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
    next: str  # what to do next on this page, shown under its title (:func:`header`)


PAGES = (
    PageEntry(
        "pages/0_Home.py",
        "Home",
        ":material/home:",
        "the workflow, the current status and a one-click demo",
        "Run the demo, or follow the pages in order; the Summary shows what the stored runs found.",
    ),
    PageEntry(
        "pages/1_Model_and_task.py",
        "Model & task",
        ":material/dataset:",
        "pick a model and the data that measures it",
        "Pick a model and a task, measure the dense model, then look at its Spectra.",
    ),
    PageEntry(
        "pages/2_Spectra.py",
        "Spectra",
        ":material/ssid_chart:",
        "how low-rank is each layer, and where the Fisher information sits",
        "Layers whose energy rises fast compress well; next, spend a budget on the Ranks page.",
    ),
    PageEntry(
        "pages/3_Ranks.py",
        "Ranks",
        ":material/tune:",
        "spend a parameter budget across layers, by strategy or by hand",
        "Fill the ranks from a budget (or type them), then run the plan on the Factorize page.",
    ),
    PageEntry(
        "pages/4_Factorize.py",
        "Factorize",
        ":material/call_split:",
        "run SVD or a weighted method on the plan, compare before/after, download",
        "Run plain SVD and a weighted method on the plan; compare them, then sweep budgets on Trade-offs.",
    ),
    PageEntry(
        "pages/5_Trade_offs.py",
        "Trade-offs",
        ":material/insights:",
        "accuracy against size for every method and budget, from every run so far",
        "Points up and to the left are better; start a sweep to fill the gaps, then read the Summary.",
    ),
    PageEntry(
        "pages/6_Summary.py",
        "Summary",
        ":material/summarize:",
        "the result in one view: best method per budget, size, latency, quality; export as HTML",
        "The best method at each budget against dense and plain SVD; export the report to share it.",
    ),
)


def entry_for(script: str) -> PageEntry:
    """The :data:`PAGES` entry of ``script`` (a path ending like ``pages/3_Ranks.py``)."""
    name = str(script).replace("\\", "/").rsplit("pages/", 1)[-1]
    return next(entry for entry in PAGES if entry.script == f"pages/{name}")


def header(script: str) -> None:
    """The page's title and its one line on what it shows and what to do next (pass ``__file__``)."""
    entry = entry_for(script)
    st.title(entry.title)
    st.caption(f"{entry.blurb[:1].upper()}{entry.blurb[1:]}. {entry.next}")


def sidebar() -> None:
    """Links to every page and the current model / task / plan."""
    with st.sidebar:
        for entry in PAGES:
            st.page_link(entry.script, label=entry.title, icon=entry.icon)
        st.divider()
        st.caption("Current selection")
        session.render_status(st.empty())
