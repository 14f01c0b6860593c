"""Checks of hyperparameters, run once when a transform is built.

Errors quote the user's call, e.g. ``scale_by_adam(b1=1.5): b1 must be in
[0, 1)``. Tracers and schedules cannot be checked without running them, so they
pass through unchecked.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

# The public call that is being built. An alias such as ``adam`` builds
# ``scale_by_adam`` inside ``quoting("adam")``, so a bad argument is reported
# as the user wrote it, ``adam(b1=1.5)``, not as the inner call.
_OUTER_CALL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "adamx_outer_call", default=None
)


@contextlib.contextmanager
def quoting(caller: str) -> Iterator[None]:
    """Within this block, construction errors quote ``caller``."""
    token = _OUTER_CALL.set(_OUTER_CALL.get() or caller)
    try:
        yield
    finally:
        _OUTER_CALL.reset(token)


def caller_name(default: str) -> str:
    """The name that errors quote: the outermost public call being built."""
    return _OUTER_CALL.get() or default


# Each rule: (a predicate on a float64 array, the sentence that completes the error).
_RULES = {
    "decay": (lambda x: (x >= 0) & (x < 1), "must be in [0, 1)"),
    "non_negative": (lambda x: x >= 0, "must be >= 0"),
    # RAdam's rectifier sqrt((ρ-4)(ρ-2)…) is real only for ρ >= 4.
    "rectifiable": (lambda x: x >= 4, "must be >= 4"),
}

# Which rule applies to each argument name that adamx's transforms share.
_ARGUMENT_RULES = {
    "b1": "decay",
    "b2": "decay",
    "decay": "decay",
    "eps": "non_negative",
    "eps_root": "non_negative",
    "learning_rate": "non_negative",
    "weight_decay": "non_negative",
    # The framework presets' own names (adamx.compat).
    "lr": "non_negative",
    "betas": "decay",
    "beta_1": "decay",
    "beta_2": "decay",
    "epsilon": "non_negative",
    "initial_accumulator_value": "non_negative",
    "b3": "decay",
    "alpha": "non_negative",
    "b_start": "decay",
    "warmup_steps": "non_negative",
    "threshold": "rectifiable",
    "a": "non_negative",
    "b": "non_negative",
}


def _concrete(value: Any) -> np.ndarray | None:
    """``value`` as a float64 array, or None when it cannot be read now."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def check_int(call: str, name: str, value: Any, low: int) -> None:
    """Raises ValueError quoting ``call(name=value)`` unless it is an int >= low.

    Booleans are refused although Python counts them as ints.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{call}({name}={value!r}): {name} must be an int >= {low}")


def check_hyperparameters(caller: str, **arguments: Any) -> None:
    """Raises ValueError for any concrete hyperparameter outside its range.

    Args:
      caller: the public name being called, quoted in the error.
      **arguments: hyperparameters by the names the caller gave them.
    """
    caller = caller_name(caller)
    for name, value in arguments.items():
        predicate, sentence = _RULES[_ARGUMENT_RULES[name]]
        concrete = _concrete(value)
        if concrete is not None and not np.all(predicate(concrete)):
            raise ValueError(f"{caller}({name}={value!r}): {name} {sentence}")
