"""Presets that reproduce ``torch.optim.Adam`` and ``torch.optim.AdamW``.

PyTorch's Adam differs from optax's defaults in two places that change
trajectories: its ``weight_decay`` is an L2 term added to the *gradient*
(coupled, before the moments), and its AMSGrad takes the maximum of the raw
second moment and then bias-corrects it. Both presets get these right, and
``maximize=True`` negates the gradient first, as PyTorch does.
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
    betas: tuple[float, float],
    eps: float,
    amsgrad: bool,
    mu_dtype: DTypeLike | None,
    nu_dtype: DTypeLike | None,
) -> optax.GradientTransformation:
    try:
        b1, b2 = betas
    except (TypeError, ValueError) as err:
        raise ValueError(f"{caller}(betas={betas!r}): betas must be a pair") from err
    check(caller, DECAY, betas=betas)
    check(caller, NON_NEGATIVE, eps=eps)
    with quoting(caller):
        if amsgrad:
            return scale_by_amsgrad(
                b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype, max_of="raw"
            )
        return scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype)


def _sign(maximize: bool) -> list[optax.GradientTransformation]:
    # PyTorch negates the gradient before anything else touches it.
    return [optax.scale(-1.0)] if maximize else []


def adam(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""``torch.optim.Adam(params, lr, betas, eps, weight_decay, amsgrad, maximize)``.

    PyTorch's ``weight_decay`` is L2 regularization folded into the gradient,
    :math:`g_t \leftarrow g_t + \lambda\theta_{t-1}`, *before* the moments, so
    it is rescaled by Adam (use :func:`adamw` for decoupled decay). With
    ``amsgrad=True`` the maximum is over raw :math:`v_t`
    (:func:`adamx.scale_by_amsgrad` with ``max_of="raw"``). ``lr`` may also be
    an optax schedule, standing in for a PyTorch LR scheduler stepped once per
    optimizer step.

    >>> import jax.numpy as jnp, optax
    >>> from adamx.compat import torch as ptx
    >>> opt = ptx.adam(lr=0.1)
    >>> updates, _ = opt.update(jnp.array([4.0]), opt.init(jnp.array([2.0])))
    >>> optax.apply_updates(jnp.array([2.0]), updates)
    Array([1.9], dtype=float32)
    """
    caller = "adamx.compat.torch.adam"
    check(caller, NON_NEGATIVE, lr=lr, weight_decay=weight_decay)
    direction = _direction(caller, betas, eps, amsgrad, mu_dtype, nu_dtype)
    coupled = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    chained = optax.chain(*_sign(maximize), *coupled, direction)
    return optimizer(caller, chained, learning_rate=lr)


def adamw(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""``torch.optim.AdamW(params, lr, betas, eps, weight_decay, amsgrad, maximize)``.

    PyTorch's AdamW first shrinks the parameter,
    :math:`\theta \leftarrow \theta (1 - \eta\lambda)`, then takes the Adam
    step; as the step does not read :math:`\theta`, that is
    :math:`\theta_t = \theta_{t-1} - \eta(u_t + \lambda\theta_{t-1})`, which is
    :func:`adamx.adamw`. Note PyTorch's default ``weight_decay=1e-2``.
    """
    caller = "adamx.compat.torch.adamw"
    check(caller, NON_NEGATIVE, lr=lr, weight_decay=weight_decay)
    direction = _direction(caller, betas, eps, amsgrad, mu_dtype, nu_dtype)
    chained = optax.chain(*_sign(maximize), direction)
    return optimizer(caller, chained, learning_rate=lr, weight_decay=weight_decay)
