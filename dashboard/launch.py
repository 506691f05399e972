"""``python -m dashboard.launch [streamlit options]``: the dashboard server, loading the library while it starts.

``streamlit run app.py`` imports torch, transformers and :mod:`lowrank` only when the first browser
session runs a page, so the first page a fresh server shows waits seconds for those imports. This
launcher starts the same server (Streamlit's own ``run`` command, same options) and, in a thread
beside it, imports :mod:`dashboard.cache` and everything it needs while the server starts and the
browser connects. A page importing it meanwhile waits on Python's import lock for the half-done
import instead of repeating it; sessions share the loaded modules as usual.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from streamlit.web import cli

APP = Path(__file__).resolve().parents[1] / "app.py"
PRELOAD = "dashboard.cache"  # imports streamlit, torch, transformers and lowrank


def main(argv: Sequence[str] | None = None) -> None:
    threading.Thread(target=importlib.import_module, args=(PRELOAD,), name="preload", daemon=True).start()
    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    main()
