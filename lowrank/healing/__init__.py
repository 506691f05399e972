"""Healing: a compressed model's factors trained toward its dense model on the calibration text only.

``lowrank.heal(compressed, dense, task, HealConfig(...))`` (in memory) and
``lowrank.healing.heal_sequential(folder, out, task, ...)`` (block level, one decoder block at a time).
Objectives: docs/methods.md#healing-lowrankhealing.
"""

from lowrank.healing.config import DEFAULT_HEALING, LEVELS, HealConfig
from lowrank.healing.heal import heal, heal_sequential

__all__ = ["DEFAULT_HEALING", "LEVELS", "HealConfig", "heal", "heal_sequential"]
