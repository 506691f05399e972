"""lowrank-studio dashboard: the entry point and router (``streamlit run app.py``).

Every rerun sets the page up (config, torch threads, session defaults, sidebar), then runs the
page chosen by ``st.navigation`` over :data:`dashboard.layout.PAGES` (the scripts in ``pages/``).
"""

import streamlit as st

from dashboard import cache, layout, session  # first: sets up the environment for torch

st.set_page_config(page_icon=":material/compress:", layout="wide")
cache.threads()
session.init()
page = st.navigation(
    [
        st.Page(entry.script, title=entry.title, icon=entry.icon, default=index == 0)
        for index, entry in enumerate(layout.PAGES)
    ],
    position="hidden",
)
layout.sidebar()
page.run()
