"""Results as JSON: one conversion of what the library returns to values ``json.dumps`` accepts.

Numpy scalars and arrays become Python numbers and lists, a DataFrame its list of records, dictionary
keys strings, and a non-finite float (NaN, +-inf) ``None`` (JSON has no such numbers); anything else
unknown becomes its ``str``. Cost: one walk over the value.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def to_jsonable(value):
    """``value`` with numpy scalars/arrays, DataFrames and non-finite floats made JSON-safe (NaN/inf -> None)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, pd.DataFrame):
        return to_jsonable(value.to_dict(orient="records"))
    return value if isinstance(value, (str, int, bool, type(None))) else str(value)
