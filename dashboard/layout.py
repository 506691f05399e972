"""The page table (key, script, title, icon, one line on what the page is for) and the sidebar around every page.

``app.py`` routes with ``st.navigation`` over this table, in its order; the Home page and the sidebar list it.
A page links to another by key (:func:`link`), never by file name, so adding a page is its script and one
:class:`PageEntry` here. Streamlit's own page list is hidden in favour of the labelled links and the current
selection below. A script's name (without ``.py``) is its URL path.
"""

from __future__ import annotations

from typing import NamedTuple

import streamlit as st

from . import session


class PageEntry(NamedTuple):
    key: str  # how pages and tests name the page
    script: str
    title: str
    icon: str
    blurb: str
    next: str  # what to do next on this page, shown under its title (:func:`header`)


PAGES = (
    PageEntry(
        "home",
        "pages/Home.py",
        "Home",
        ":material/home:",
        "the workflow, the current status and a one-click demo",
        "Run the demo, or follow the pages in order; the Summary shows what the stored runs found.",
    ),
    PageEntry(
        "model",
        "pages/Model_and_task.py",
        "Model & task",
        ":material/dataset:",
        "pick a model and the data that measures it",
        "Pick a model and a task, measure the dense model, then look at its Spectra.",
    ),
    PageEntry(
        "spectra",
        "pages/Spectra.py",
        "Spectra",
        ":material/ssid_chart:",
        "how low-rank is each layer, and where the Fisher information sits",
        "Layers whose energy rises fast compress well; next, spend a budget on the Ranks page.",
    ),
    PageEntry(
        "ranks",
        "pages/Ranks.py",
        "Ranks",
        ":material/tune:",
        "spend a parameter budget across layers, by strategy or by hand",
        "Fill the ranks from a budget (or type them), then run the plan on the Factorize page.",
    ),
    PageEntry(
        "factorize",
        "pages/Factorize.py",
        "Factorize",
        ":material/call_split:",
        "run SVD or a weighted method on the plan, compare before/after, download",
        "Run plain SVD and a weighted method on the plan; compare them, then sweep budgets on Trade-offs.",
    ),
    PageEntry(
        "tradeoffs",
        "pages/Trade_offs.py",
        "Trade-offs",
        ":material/insights:",
        "accuracy against size for every method and budget, from every run so far",
        "Points up and to the left are better; start a sweep to fill the gaps, then read the Summary.",
    ),
    PageEntry(
        "summary",
        "pages/Summary.py",
        "Summary",
        ":material/summarize:",
        "the result in one view: best method per budget, size, latency, quality; export as HTML",
        "The best method at each budget against dense and plain SVD; export the report to share it.",
    ),
)


def page(key: str) -> PageEntry:
    """The :data:`PAGES` entry named ``key``; ``KeyError`` naming the keys there are."""
    for entry in PAGES:
        if entry.key == key:
            return entry
    raise KeyError(f"no page {key!r} in the page table: {', '.join(entry.key for entry in PAGES)}")


def link(key: str, label: str, container=st) -> None:
    """A link to the page ``key`` (its icon, ``label`` as text) in ``container`` (the page by default)."""
    entry = page(key)
    container.page_link(entry.script, label=label, icon=entry.icon)


def entry_for(script: str) -> PageEntry:
    """The :data:`PAGES` entry of ``script`` (a path ending like ``pages/Ranks.py``)."""
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
            link(entry.key, entry.title)
        st.divider()
        st.caption("Current selection")
        session.render_status(st.empty())
