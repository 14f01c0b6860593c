r"""Presets that reproduce ``keras.optimizers.Adam`` and ``keras.optimizers.AdamW``.

Keras (like TensorFlow) uses Kingma & Ba's reordered update with
epsilon-hat, :math:`\alpha_t = \alpha\sqrt{1-\beta_2^t}/(1-\beta_1^t)` and
:math:`\theta \leftarrow \theta - \alpha_t m_t/(\sqrt{v_t}+\hat\epsilon)`,
with a default :math:`\hat\epsilon = 10^{-7}`; its AMSGrad takes the maximum
of the raw :math:`v_t`. Decoupled weight decay shrinks
:math:`\theta \leftarrow \theta - \eta\lambda\theta` before the step.
"""

from __future__ import annotations

import optax
from jax.typing import DTypeLike

from adamx._alias import optimizer
from adamx._validation import DECAY, NON_NEGATIVE, check, quoting
from adamx.transforms.adam import scale_by_adam
from adamx.transforms.amsgrad import scale_by_amsgrad

__all__ = ["adam", "adamw"]


def _direction(
    caller: str,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    amsgrad: bool,
    mu_dtype: DTypeLike | None,
    nu_dtype: DTypeLike | None,
) -> optax.GradientTransformation:
    check(caller, DECAY, beta_1=beta_1, beta_2=beta_2)
    check(caller, NON_NEGATIVE, epsilon=epsilon)
    options = {"mu_dtype": mu_dtype, "nu_dtype": nu_dtype, "epsilon_hat": True}
    with quoting(caller):
        if amsgrad:
            return scale_by_amsgrad(beta_1, beta_2, epsilon, max_of="raw", **options)
        return scale_by_adam(beta_1, beta_2, epsilon, **options)


def adam(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""``keras.optimizers.Adam(learning_rate, beta_1, beta_2, epsilon, amsgrad)``.

    :func:`adamx.scale_by_adam` with ``epsilon_hat=True`` (or
    :func:`adamx.scale_by_amsgrad` with ``max_of="raw"`` as well), then the
    learning rate, a float or an optax schedule.

    >>> import jax.numpy as jnp, optax
    >>> from adamx.compat import keras as kx
    >>> opt = kx.adam(learning_rate=0.1)
    >>> updates, _ = opt.update(jnp.array([4.0]), opt.init(jnp.array([2.0])))
    >>> optax.apply_updates(jnp.array([2.0]), updates)
    Array([1.9], dtype=float32)
    """
    caller = "adamx.compat.keras.adam"
    direction = _direction(caller, beta_1, beta_2, epsilon, amsgrad, mu_dtype, nu_dtype)
    return optimizer(caller, direction, learning_rate=learning_rate)


def adamw(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    weight_decay: float = 0.004,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""``keras.optimizers.AdamW(learning_rate, weight_decay, beta_1, …, amsgrad)``.

    :func:`adam`'s direction with decoupled weight decay
    :math:`\theta_t = \theta_{t-1} - \eta(u_t + \lambda\theta_{t-1})`; the
    argument order and the default ``weight_decay=0.004`` are Keras's.
    """
    caller = "adamx.compat.keras.adamw"
    direction = _direction(caller, beta_1, beta_2, epsilon, amsgrad, mu_dtype, nu_dtype)
    return optimizer(
        caller, direction, learning_rate=learning_rate, weight_decay=weight_decay
    )
