"""What a sweep runs: every method of ``methods`` at every budget of ``budgets``, under one allocation strategy.

A budget is a kept fraction in (0, 1] of the compressible parameters; the strategy turns it into a
:class:`lowrank.RankPlan`, or explicit ``ranks`` (a hand-edited plan, at its one budget) replace the strategy. The
spec travels to the worker as the JSON of :meth:`SweepSpec.to_dict`; methods registered outside :mod:`lowrank.methods`
travel as the modules that register them (``modules``, :func:`plugin_modules`), imported first. With ``healing``
(:class:`lowrank.HealConfig` fields) every compressed model is healed toward the dense one before it is evaluated
(:func:`lowrank.heal`). Cost of
:meth:`SweepSpec.validate`: those imports, nothing else loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field

from lowrank.allocation import DEFAULT_STRATEGY, get_strategy
from lowrank.healing import HealConfig
from lowrank.methods import available_methods, get_method
from lowrank.needs import needs_for
from lowrank.statistics import DEFAULT, StatisticsSettings


@dataclass
class SweepSpec:
    """What a sweep runs: ``methods`` x ``budgets`` (kept fractions of the compressible parameters)."""

    model: str
    task: str
    methods: list[str]
    budgets: list[float]
    strategy: str = DEFAULT_STRATEGY
    options: dict[str, dict] = field(default_factory=dict)  # per method, e.g. {"tfwsvd": {"solver": "em"}}
    align: int = 8
    split: str = "validation"
    eval_limit: int | None = None  # evaluate on at most this many batches (None: the whole split)
    dense: bool = True  # also record the dense reference
    label: str = ""
    statistics: dict = field(default_factory=dict)  # StatisticsSettings fields (defaults when empty)
    ranks: dict[str, int] | None = None  # explicit ranks (a hand-edited plan) instead of allocating per budget
    save: bool = False  # save every compressed model next to the run store (output_dir of its row)
    modules: list[str] = field(default_factory=list)  # imported first: they register methods outside lowrank.methods
    healing: dict | None = None  # HealConfig fields: every compressed model is healed before it is evaluated

    def heal_config(self, recipe: HealConfig | None = None) -> HealConfig | None:
        """The healing every compressed model of the sweep gets: ``recipe`` (the model's default,
        :func:`lowrank.healing.heal.recipe_for`; ``None``: the class defaults) with the fields of ``healing``
        (``None``: no healing)."""
        return None if self.healing is None else HealConfig.from_dict(self.healing, recipe)

    @property
    def settings(self) -> StatisticsSettings:
        return DEFAULT.with_(**self.statistics)

    @property
    def runs_total(self) -> int:
        return len(self.methods) * len(self.budgets) + int(self.dense)

    def validate(self) -> SweepSpec:
        if not self.methods:
            raise ValueError("choose at least one method")
        for module in self.modules:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ValueError(f"cannot import {module}, which registers a method of this sweep: {err}") from err
        unknown = sorted(set(self.methods) - set(available_methods()))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(available_methods())}")
        if not self.budgets:
            raise ValueError("choose at least one budget")
        for budget in self.budgets:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < float(budget) <= 1.0:
                raise ValueError(f"a budget is a kept fraction in (0, 1], got {budget!r}")
        if self.ranks is None:
            get_strategy(self.strategy)
        else:
            if len(self.budgets) != 1:
                raise ValueError("a sweep with explicit ranks has one budget (the plan's kept fraction)")
            if not self.ranks:
                raise ValueError("the plan keeps every layer dense: nothing to factorize")
            for name, rank in self.ranks.items():
                if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                    raise ValueError(f"rank of {name} must be a positive integer, got {rank!r}")
        extra = sorted(set(self.options) - set(self.methods))
        if extra:
            raise ValueError(f"options given for method(s) not in the sweep: {extra}")
        if self.eval_limit is not None and int(self.eval_limit) < 1:
            raise ValueError(f"eval_limit must be a positive number of batches or None, got {self.eval_limit}")
        if int(self.align) < 1:
            raise ValueError(f"align must be a positive integer, got {self.align}")
        _ = self.settings  # raises for bad statistics settings
        _ = self.heal_config()  # and for bad healing settings
        return self

    def needs(self) -> tuple[str, ...]:
        """Statistic kinds the sweep's methods and strategy need."""
        return needs_for(self.methods, None if self.ranks is not None else self.strategy)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SweepSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sweep field(s) {unknown}")
        return cls(**data)


def plugin_modules(methods) -> list[str]:
    """Modules outside ``lowrank`` that registered any of ``methods`` (a worker imports them first)."""
    modules = {get_method(m).fn.__module__ for m in methods}
    return sorted(m for m in modules if m and m != "__main__" and m.split(".")[0] != "lowrank")
