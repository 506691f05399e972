"""Healing: a compressed model's factors trained toward its dense model on the calibration text only.

``lowrank.heal(compressed, dense, task, HealConfig(...))`` (in memory; default: the recipe of the model's kind,
:func:`default_healing`) and
``lowrank.healing.heal_sequential(folder, out, task, ...)`` (block level, one decoder block at a time).
Objectives: docs/methods.md#healing-lowrankhealing.
"""

from lowrank.healing.config import DEFAULT_HEALING, LEVELS, HealConfig, default_healing
from lowrank.healing.heal import heal, heal_sequential
from lowrank.healing.precision import PRECISIONS

__all__ = ["DEFAULT_HEALING", "LEVELS", "PRECISIONS", "HealConfig", "default_healing", "heal", "heal_sequential"]
