"""Turning a ``scale_by_*`` direction into a named optimizer.

An optimizer is ``optax.chain`` of the direction, optionally decoupled weight
decay, and the learning-rate step. The step pieces here differ from optax's
``add_decayed_weights`` and ``scale_by_learning_rate`` in one way only: they
compute in float32 or wider and cast once, where optax multiplies in the
parameter dtype and so rounds the learning rate and the decay to bfloat16
for bfloat16 models. Masking reuses ``optax.masked``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx import numerics
from adamx._validation import check_hyperparameters, quoting


def _scaled(u: jax.Array, factor: Any, decay: Any = 0.0, param: Any = None):
    """``factor * (u + decay * param)`` in the compute dtype, cast back to ``u``'s."""
    dtype = numerics.compute_dtype(u.dtype)
    wide = u.astype(dtype)
    if param is not None:
        wide = wide + numerics.hyperparameter(decay, dtype) * param.astype(dtype)
    return (numerics.hyperparameter(factor, dtype) * wide).astype(u.dtype)


def _stepwise(
    value: optax.ScalarOrSchedule, apply: Callable[..., Any]
) -> optax.GradientTransformation:
    """A transform applying ``apply(value_t, updates, params)``.

    As in optax, a constant keeps no state and a schedule keeps its own step
    count, so ``optax.tree.get(state, "count")`` finds one count for constant
    hyperparameters.
    """

    def init_fn(params):
        del params
        if callable(value):
            return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if not callable(value):
            return apply(value, updates, params), state
        updates = apply(value(state.count), updates, params)
        return updates, optax.ScaleByScheduleState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def add_decayed_weights(
    weight_decay: optax.ScalarOrSchedule, mask: Any = None
) -> optax.GradientTransformation:
    """``u + λ_t θ`` in float32 or wider; ``λ`` a float or a schedule of the step.

    ``mask`` (a pytree of bools or a function of the params) limits the decay
    to some leaves, through ``optax.masked``.
    """
    if mask is not None:
        return optax.masked(add_decayed_weights(weight_decay), mask)

    def apply(decay, updates, params):
        if params is None:
            raise ValueError(
                "adamx weight decay needs params: update(g, state, params)"
            )
        return jax.tree.map(lambda u, p: _scaled(u, 1.0, decay, p), updates, params)

    return _stepwise(weight_decay, apply)


def _learning_rate_step(
    learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformation:
    """``-η_t u`` in float32 or wider; ``η`` a float or a schedule of the step."""
    return _stepwise(
        learning_rate,
        lambda rate, updates, _: jax.tree.map(lambda u: _scaled(u, -rate), updates),
    )


def make_optimizer(
    caller: str,
    direction: optax.GradientTransformation
    | Callable[[], optax.GradientTransformation],
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""``chain(direction, [weight decay], learning-rate step)``.

    With ``weight_decay`` given, :math:`\lambda\theta` is added to the
    direction *before* the learning rate scales both, as in Loshchilov &
    Hutter (2019): :math:`\theta \leftarrow \theta - \eta_t (d_t + \lambda_t
    \theta)`. The decay is decoupled from the gradient's moments; ``mask``
    (a pytree of bools or a function of the params) limits it to some leaves.

    Args:
      caller: the public name, quoted by every construction error.
      direction: the direction, or a function building it; a function is
        called so that its errors quote ``caller`` rather than the inner
        ``scale_by_*``.
      learning_rate: :math:`\eta`, a float or an optax schedule.
      weight_decay: :math:`\lambda`, a float or a schedule, or None for none.
      mask: which leaves are decayed.
    """
    with quoting(caller):
        check_hyperparameters(caller, learning_rate=learning_rate)
        if not isinstance(direction, optax.GradientTransformation):
            direction = direction()
        steps = [direction]
        if weight_decay is not None:
            check_hyperparameters(caller, weight_decay=weight_decay)
            steps.append(add_decayed_weights(weight_decay, mask))
        steps.append(_learning_rate_step(learning_rate))
    return optax.chain(*steps)


def optimizer_from(
    scale_by: Callable[..., optax.GradientTransformation],
    caller: str,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule | None,
    mask: Any,
    **direction: Any,
) -> optax.GradientTransformationExtraArgs:
    """:func:`make_optimizer` around ``scale_by(**direction)``: a family's aliases."""
    return make_optimizer(
        caller,
        functools.partial(scale_by, **direction),
        learning_rate,
        weight_decay=weight_decay,
        mask=mask,
    )
