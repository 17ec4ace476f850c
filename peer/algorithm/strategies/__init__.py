"""Strategy registry. Adding a strategy is one file in this folder with one ``Strategy`` subclass
that sets ``name``: every module here is imported and its strategies registered by name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from peer.algorithm.strategies.base import RoundPlan, Strategy


def _discover() -> dict[str, type[Strategy]]:
    found: dict[str, type[Strategy]] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Strategy) and cls.name and cls.__module__ == module.__name__:
                if cls.name in found:
                    raise RuntimeError(f"two strategies are named {cls.name!r}")
                found[cls.name] = cls
    return found


STRATEGIES = _discover()


def available_strategies() -> list[str]:
    return sorted(STRATEGIES)


def make_strategy(
    name: str, switch_interval: int | None = None, train_head: bool = False, training_rounds: int | None = None
) -> Strategy:
    """Build a strategy by name; ``switch_interval=None`` takes the strategy's own default; with
    ``train_head`` every round also trains and mixes the classification head; rounds from
    ``training_rounds`` on train nothing and only mix (None: every round trains)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(available_strategies())}")
    return STRATEGIES[name](switch_interval, train_head, training_rounds)


__all__ = ["STRATEGIES", "RoundPlan", "Strategy", "available_strategies", "make_strategy"]
