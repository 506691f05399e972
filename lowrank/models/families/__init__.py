"""Architecture families: the registry (:mod:`.registry`) and one module per family.

Importing this package imports every module in it, and each family module registers itself with
:func:`register_family`: a new architecture family is one new file here, with no other edit.
"""

import importlib
import pkgutil

from lowrank.models.families.registry import FAMILIES, Family, family_of, register_family, unregister_family

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["FAMILIES", "Family", "family_of", "register_family", "unregister_family"]
