"""Each substituted adamx function takes optax 0.2.8's parameters as optax does.

The same names in the same positional order, the same kinds (positional or
keyword-only) and the same defaults; adamx's own switches come after ``*``.
Fast (no optimisation runs), so it is the first thing to read when the optax
suite fails with a TypeError.
"""

import inspect
from typing import Any

import jax.numpy as jnp
import numpy as np

POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
)
EMPTY = inspect.Parameter.empty


def _same_default(ours: Any, theirs: Any) -> bool:
    if ours is EMPTY or theirs is EMPTY:
        return ours is theirs
    if callable(ours) and callable(theirs):  # e.g. adopt's clip_value_fn
        count = jnp.array([1.0, 16.0, 1e4])
        return bool(np.allclose(ours(count), theirs(count)))
    try:
        return bool(np.all(ours == theirs))
    except (TypeError, ValueError):
        return ours is theirs


def signature_differences(theirs: Any, ours: Any) -> list[str]:
    """How ``ours`` fails to take ``theirs``'s parameters as ``theirs`` does."""
    optax_params = inspect.signature(theirs).parameters
    adamx_params = inspect.signature(ours).parameters
    problems = []
    optax_positional = [n for n, p in optax_params.items() if p.kind in POSITIONAL]
    adamx_positional = [n for n, p in adamx_params.items() if p.kind in POSITIONAL]
    if optax_positional != adamx_positional:
        problems.append(f"positional {adamx_positional}, optax {optax_positional}")
    for name, param in optax_params.items():
        if name not in adamx_params:
            problems.append(f"missing {name}={param.default!r}")
            continue
        mine = adamx_params[name]
        if (mine.kind in POSITIONAL) != (param.kind in POSITIONAL):
            kinds = mine.kind.description, param.kind.description
            problems.append(f"{name}: {kinds[0]}, optax {kinds[1]}")
        if not _same_default(mine.default, param.default):
            defaults = mine.default, param.default
            problems.append(f"{name}: default {defaults[0]!r}, optax {defaults[1]!r}")
    return problems


def test_signature_matches_optax(substituted_name, optax_and_adamx):
    """Optax's call ``optax.<name>(...)`` means the same with ``adamx.<name>``."""
    theirs, ours = optax_and_adamx
    problems = signature_differences(theirs, ours)
    assert not problems, f"adamx.{substituted_name}: " + "; ".join(problems)
