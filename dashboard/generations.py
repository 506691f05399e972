"""Generations side by side: the same prompts through the dense causal LM and its saved compressed copies
(:func:`lowrank.generation.compare_generations`), cached per model identity, prompts and token count.

A compressed model is read from its saved folder (the runs of the Factorize page and of the decoder demo are saved);
its identity is that of its weight files (:func:`dashboard.cache.weights_key`), so a replaced folder is never served
from the cache.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lowrank.compress import load_any
from lowrank.generation import DEFAULT_PROMPTS, DEFAULT_TOKENS, compare_generations
from lowrank.loaded import LoadedModel

from . import cache, widgets
from .progress import ProgressBar

MAX_SHOWN_TOKENS = 256  # the page's limit on new tokens (the library's is lowrank.generation.MAX_TOKENS)


@st.cache_resource(show_spinner="Loading a compressed model...", max_entries=4)
def _folder(path: str, identity: str) -> LoadedModel:
    return load_any(path)


@st.cache_data(show_spinner=False, max_entries=16)
def _side_by_side(identities: tuple, prompts: tuple[str, ...], tokens: int, _models: dict) -> pd.DataFrame:
    with ProgressBar(f"Generating {tokens} tokens for {len(prompts)} prompt(s) with {len(_models)} models"):
        return compare_generations(_models, list(prompts), tokens)


def side_by_side(model: str, task: str, folders: dict[str, str], prompts, tokens: int) -> pd.DataFrame:
    """One row per prompt: ``prompt``, ``dense`` (``model``), then one column per label of ``folders``
    ({label: saved compressed folder})."""
    models = {"dense": cache.load(model, task)}
    identities = [("dense", cache.weights_key(model) or model)]
    for label, path in folders.items():
        identity = cache.weights_key(path) or path
        models[label] = _folder(path, identity)
        identities.append((label, identity))
    return _side_by_side(tuple(identities), tuple(prompts), int(tokens), models)


def view(model: str, task: str, folders: dict[str, str], key: str, start: bool = False) -> pd.DataFrame | None:
    """Prompts (one a line), a token count and the table of generations, drawn once asked for (``start``: at once);
    returns the table shown (None when none is)."""
    st.subheader("Generations side by side")
    if not folders:
        st.caption("No saved compressed model to generate with (runs of the Factorize page and the demos are saved).")
        return None
    cols = st.columns([4, 1], vertical_alignment="bottom")
    text = cols[0].text_area("Prompts, one a line", "\n".join(DEFAULT_PROMPTS), key=f"{key}_prompts", height=100)
    tokens = cols[1].number_input("New tokens", 1, MAX_SHOWN_TOKENS, DEFAULT_TOKENS, key=f"{key}_tokens")
    shown = f"{key}_shown"
    if st.button("Generate side by side", icon=":material/edit_note:", key=f"{key}_generate") or start:
        st.session_state[shown] = True
    if not st.session_state.get(shown):
        return None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        table = side_by_side(model, task, folders, prompts, int(tokens))
    except widgets.USER_ERRORS as err:
        widgets.show_error("Cannot generate", err)
        return None
    st.dataframe(
        table, hide_index=True, column_config={c: st.column_config.TextColumn(c, width="large") for c in table}
    )
    st.caption(
        f"Greedy decoding (the most likely next token each step), {int(tokens)} new tokens at most (fewer only where "
        "the model ends the text): the columns differ only by the models' weights."
    )
    return table
