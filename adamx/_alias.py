"""Turning a ``scale_by_*`` direction into a named optimizer.

An optimizer is ``optax.chain`` of the direction, optionally decoupled weight
decay, and the learning-rate step. The step pieces here differ from optax's
``add_decayed_weights`` and ``scale_by_learning_rate`` in one way only: they
compute in float32 or wider and cast once, where optax multiplies in the
parameter dtype and so rounds the learning rate and the decay to bfloat16
for bfloat16 models. Masking reuses ``optax.masked``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx import numerics
from adamx._validation import NON_NEGATIVE, check, quoting


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


def _zero_decay(weight_decay: Any) -> bool:
    """A plain number equal to 0: a decay known, when built, to do nothing.

    Arrays, tracers and schedules always get the decay, even when zero:
    ``optax.inject_hyperparams`` passes arrays at ``init`` and tracers at
    ``update``, and a traced zero is not known to be zero.
    """
    plain = isinstance(weight_decay, (int, float, np.integer, np.floating))
    return plain and not isinstance(weight_decay, bool) and weight_decay == 0


def decay_steps(
    caller: str, weight_decay: optax.ScalarOrSchedule | None, mask: Any = None
) -> list[optax.GradientTransformation]:
    """The weight-decay step of an optimizer, by the one rule for "no weight decay".

    None: no step, as in optax's optimizers without decay (``adam``). A plain
    0: a step that does nothing, in the place and with the (empty) state of a
    constant decay, so that the state's structure does not depend on the value
    (``adamw(weight_decay=0.0)`` and the same under ``optax.inject_hyperparams``
    hold the same state). Anything else: ``add_decayed_weights``.
    """
    if weight_decay is None:
        return []
    if _zero_decay(weight_decay):
        return [optax.identity()]
    check(caller, NON_NEGATIVE, weight_decay=weight_decay)
    return [add_decayed_weights(weight_decay, mask)]


def optimizer(
    caller: str,
    direction: Callable[..., optax.GradientTransformation]
    | optax.GradientTransformation,
    *,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Any = None,
    **direction_arguments: Any,
) -> optax.GradientTransformationExtraArgs:
    r"""Every adamx optimizer: ``chain(direction, [weight decay], learning-rate step)``.

    With a weight decay, :math:`\lambda\theta` is added to the direction
    *before* the learning rate scales both, as in Loshchilov & Hutter (2019):
    :math:`\theta \leftarrow \theta - \eta_t (d_t + \lambda_t \theta)`. The
    decay is decoupled from the gradient's moments; ``mask`` (a pytree of
    bools or a function of the params) limits it to some leaves. ``None`` or a
    plain 0 computes no decay at all (:func:`decay_steps`), and then the update
    needs no ``params``.

    Args:
      caller: the public name, quoted by every construction error.
      direction: a ``scale_by_*`` (or any function returning a
        transformation), called here with ``direction_arguments`` so that its
        errors quote ``caller`` (``adam(b1=1.5)``, not ``scale_by_adam``), or a
        transformation already built (the framework presets' chains).
      learning_rate: :math:`\eta`, a float or an optax schedule.
      weight_decay: :math:`\lambda`, a float or a schedule, or None for none.
      mask: which leaves are decayed.
      **direction_arguments: passed to ``direction``, by keyword.
    """
    with quoting(caller):
        check(caller, NON_NEGATIVE, learning_rate=learning_rate)
        if not isinstance(direction, optax.GradientTransformation):
            direction = direction(**direction_arguments)
        elif direction_arguments:
            raise TypeError(f"{caller}: a built direction takes no arguments")
        steps = [direction, *decay_steps(caller, weight_decay, mask)]
    return optax.chain(*steps, _learning_rate_step(learning_rate))
