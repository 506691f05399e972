"""Factorization methods: the registry (:mod:`.registry`) and one module per method.

Importing this package imports every module in it, and each method module registers
itself with :func:`register_method`: a new method is one new file here, with no other edit.
"""

import importlib
import pkgutil

from lowrank.methods.registry import (
    BASELINE,
    COMPARISON,
    COMPENSATE,
    METHODS,
    RECOMMENDED,
    Factorization,
    Method,
    Option,
    available_methods,
    factorize,
    get_method,
    register_method,
    run_methods,
    weighted_error,
    with_compensation,
)
from lowrank.methods.svd import truncated_svd

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "BASELINE",
    "COMPARISON",
    "COMPENSATE",
    "RECOMMENDED",
    "METHODS",
    "Factorization",
    "Method",
    "Option",
    "available_methods",
    "factorize",
    "get_method",
    "register_method",
    "run_methods",
    "truncated_svd",
    "weighted_error",
    "with_compensation",
]
