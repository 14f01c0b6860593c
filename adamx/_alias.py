"""Turning a ``scale_by_*`` direction into a named optimizer, the optax way.

An optimizer is ``optax.chain`` of the direction, optionally optax's decoupled
weight decay, and optax's learning-rate scaling. adamx writes none of those
three again.
"""

from __future__ import annotations

from typing import Any

import optax

from adamx._validation import check_hyperparameters


def make_optimizer(
    caller: str,
    direction: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""``chain(direction, [add_decayed_weights], scale_by_learning_rate)``.

    With ``weight_decay`` given, the decay :math:`\lambda\theta` is added to
    the direction *before* the learning rate scales both, as in Loshchilov &
    Hutter (2019): :math:`\theta \leftarrow \theta - \eta_t (d_t +
    \lambda \theta)`. Decay is decoupled from the gradient's moments.
    """
    check_hyperparameters(caller, learning_rate=learning_rate)
    steps = [direction]
    if weight_decay is not None:
        check_hyperparameters(caller, weight_decay=weight_decay)
        steps.append(optax.add_decayed_weights(weight_decay, mask))
    steps.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*steps)
