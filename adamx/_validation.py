"""Checks of hyperparameters, run once when a transform is built.

Errors quote the user's call, e.g. ``scale_by_adam(b1=1.5): b1 must be in
[0, 1)``. Tracers and schedules cannot be checked without running them, so they
pass through unchecked.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
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


@dataclasses.dataclass(frozen=True)
class Rule:
    r"""What a hyperparameter must satisfy, declared with the argument.

    Attributes:
      holds: a predicate on the value as a float64 array, true where valid.
      sentence: completes the error, e.g. ``"must be in [0, 1)"``.
      is_decay: the value is a decay rate :math:`\beta`: a transform receives
        it as :class:`adamx.numerics.Decay`, with :math:`1 - \beta` formed
        before rounding.
    """

    holds: Callable[[np.ndarray], np.ndarray]
    sentence: str
    is_decay: bool = False


DECAY = Rule(lambda x: (x >= 0) & (x < 1), "must be in [0, 1)", is_decay=True)
NON_NEGATIVE = Rule(lambda x: x >= 0, "must be >= 0")
REAL = Rule(lambda x: np.isfinite(x) | np.isinf(x), "must be a real number")
# RAdam's rectifier sqrt((ρ-4)(ρ-2)…) is real only for ρ >= 4.
RECTIFIABLE = Rule(lambda x: x >= 4, "must be >= 4")
# A finite ratio above 1, e.g. skip_spikes's factor in n_t <= f a_k.
ABOVE_ONE = Rule(lambda x: (x > 1) & np.isfinite(x), "must be > 1")
# A rate strictly between 0 and 1, e.g. a decay whose average must move.
OPEN_UNIT = Rule(lambda x: (x > 0) & (x < 1), "must be in (0, 1)")


def _concrete(caller: str, name: str, value: Any) -> np.ndarray | None:
    """``value`` as a float64 array; None for a schedule or a tracer.

    Raises:
      TypeError: for anything else that is not real and numeric (a string,
        a bool, a complex number, None), naming the argument.
    """
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = np.asarray(None)
    real = np.issubdtype(array.dtype, np.integer) or jnp.issubdtype(
        array.dtype,
        jnp.floating,  # bfloat16 too, which NumPy does not know
    )
    if not real:  # str, bool, complex, None, objects
        raise TypeError(
            f"{caller}({name}={value!r}): {name} must be a real number, an array "
            "of them or a schedule (a function of the step), not "
            f"{type(value).__name__}"
        )
    return array.astype(np.float64)


def check_int(
    call: str,
    name: str,
    value: Any,
    low: int,
    *,
    or_none: bool = False,
    numpy: bool = False,
) -> None:
    """Raises ValueError quoting ``call(name=value)`` unless it is an int >= low.

    Booleans are refused although Python counts them as ints. With
    ``or_none``, None passes too; with ``numpy``, so do NumPy integers.

    Example:
      >>> check_int("f", "steps", True, 1)
      Traceback (most recent call last):
      ...
      ValueError: f(steps=True): steps must be an int >= 1
      >>> check_int("f", "steps", -1, 0, or_none=True)
      Traceback (most recent call last):
      ...
      ValueError: f(steps=-1): steps must be None or an int >= 0
    """
    if or_none and value is None:
        return
    ints = (int, np.integer) if numpy else int
    if not isinstance(value, ints) or isinstance(value, bool) or value < low:
        wanted = f"None or an int >= {low}" if or_none else f"an int >= {low}"
        raise ValueError(f"{call}({name}={value!r}): {name} must be {wanted}")


def check_choice(call: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises ValueError quoting ``call(name=value)`` unless it is one of ``choices``.

    Example:
      >>> check_choice("f", "mode", "fast", ("skip", "zero"))
      Traceback (most recent call last):
      ...
      ValueError: f(mode='fast'): mode must be "skip" or "zero"
    """
    if not isinstance(value, str) or value not in choices:
        *rest, last = [f'"{choice}"' for choice in choices]
        options = f"{', '.join(rest)} or {last}" if rest else last
        raise ValueError(f"{call}({name}={value!r}): {name} must be {options}")


def check(caller: str, rule: Rule, **arguments: Any) -> None:
    """Checks each concrete hyperparameter against ``rule``, when a transform is built.

    Schedules and tracers cannot be checked without running them and pass.

    Args:
      caller: the public name being called, quoted in the error.
      rule: what every argument given must satisfy.
      **arguments: hyperparameters by the names the caller gave them.

    Raises:
      TypeError: for a value that is not a real number, an array of them or a
        schedule (``adam("0.1")``), naming the argument.
      ValueError: for a value outside its range, naming the argument.
    """
    caller = caller_name(caller)
    for name, value in arguments.items():
        concrete = _concrete(caller, name, value)
        if concrete is not None and not np.all(rule.holds(concrete)):
            raise ValueError(f"{caller}({name}={value!r}): {name} {rule.sentence}")


def check_number(caller: str, rule: Rule, **arguments: Any) -> None:
    """:func:`check`, and each concrete argument is one number, not an array.

    Raises:
      TypeError, ValueError: as :func:`check`; ValueError too for an array,
        naming the argument.
    """
    check(caller, rule, **arguments)
    caller = caller_name(caller)
    for name, value in arguments.items():
        if not isinstance(value, jax.core.Tracer) and np.ndim(value) != 0:
            raise ValueError(f"{caller}({name}={value!r}): {name} must be one number")
