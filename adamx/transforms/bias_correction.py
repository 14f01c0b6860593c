"""Bias correction as a transformation of its own."""

from typing import NamedTuple

import jax
import optax
from jax.typing import ArrayLike

from adamx import numerics
from adamx._transform import Hyperparameter, moment_transform
from adamx._validation import DECAY


class BiasCorrectionState(NamedTuple):
    """State of :func:`bias_correction`.

    Attributes:
      count: int32 scalar, the number of updates seen; it saturates at the
        int32 maximum instead of wrapping to a negative step.
    """

    count: jax.Array


def bias_correction(decay: ArrayLike) -> optax.GradientTransformation:
    r"""Divides incoming updates by :math:`1 - \beta^t`, the bias of a zero-started EMA.

    .. math:: u_t = \frac{x_t}{1 - \beta^t}, \qquad t = 1, 2, \dots

    where :math:`\beta` = ``decay``, :math:`x_t` is the incoming update and
    :math:`t` is this transformation's own saturating step count. Placed after
    a moving average that starts from zero, it removes the average's
    initialization bias (Kingma & Ba 2015, Section 3), so::

        optax.chain(optax.ema(b, debias=False), adamx.bias_correction(b))

    equals ``optax.ema(b, debias=True)``. The division runs in float32 or
    wider (see :func:`adamx.numerics.bias_correction`) and the result keeps
    the update's dtype.

    Args:
      decay: :math:`\beta`, the decay of the moving average being corrected,
        in [0, 1).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`BiasCorrectionState`.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = optax.chain(optax.ema(0.9, debias=False), adamx.bias_correction(0.9))
      >>> updates, _ = tx.update(jnp.array([4.0]), tx.init(jnp.array([0.0])))
      >>> updates
      Array([4.], dtype=float32)

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
      https://arxiv.org/abs/1412.6980
    """
    caller = "bias_correction"

    def leaf_update(x, *, count, decay):
        return (numerics.bias_correction(x, decay, count),)

    return moment_transform(
        caller,
        BiasCorrectionState,
        (),
        {"decay": Hyperparameter(decay, DECAY)},
        leaf_update,
        signal=None,  # no moments of its own
    )
