"""A Streamlit progress bar driven by the library's progress callbacks ``fn(done, total, message)``."""

from __future__ import annotations

import streamlit as st


class ProgressBar:
    """``st.progress`` driven by library callbacks ``fn(done, total, message)``.

    Creates its own placeholder where it is constructed (also inside cached functions, where
    Streamlit replays it), and clears it on exit unless ``keep``; a kept bar ends at 100% with
    ``done_text``.
    """

    def __init__(self, label: str, keep: bool = False, done_text: str | None = None):
        self.label = label
        self.keep = keep
        self.done_text = done_text or f"{label}: done"
        self.slot = st.empty()
        self.slot.progress(0.0, text=label)

    def __call__(self, done: int, total: int, message: str = "") -> None:
        fraction = done / total if total else 1.0
        text = f"{self.label}: {message}" if message else self.label
        self.slot.progress(min(1.0, max(0.0, fraction)), text=text)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.keep and kind is None:
            self.slot.progress(1.0, text=self.done_text)
        else:
            self.slot.empty()
