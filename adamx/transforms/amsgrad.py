"""AMSGrad: Adam with a non-decreasing second moment."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._alias import make_optimizer
from adamx._tree import init_leaves, map_leaves
from adamx._validation import check_hyperparameters
from adamx.storage import resolve_storage


class ScaleByAmsgradState(NamedTuple):
    r"""State of :func:`scale_by_amsgrad`.

    Attributes:
      count: int32 scalar, the number of updates seen, saturating.
      mu: :math:`m_t`, the biased first moment, in ``mu_dtype``.
      nu: :math:`v_t`, the biased second moment, in ``nu_dtype``.
      nu_max: :math:`\hat v_t`, the running maximum, in ``nu_dtype``.
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def scale_by_amsgrad(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    bias_correction: bool = True,
) -> optax.GradientTransformation:
    r"""Scales updates by AMSGrad's ratio, whose denominator never shrinks.

    Adam's :math:`v_t` forgets large past gradients, so its effective step
    :math:`\alpha/\sqrt{v_t}` can grow and Adam can fail to converge even on
    convex problems (Reddi et al. 2018, Section 3). AMSGrad divides by a
    running maximum instead. With ``bias_correction=False`` it is exactly the
    paper's Algorithm 2 (with constant :math:`\beta_1`):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \\
        u_t &= m_t \,/\, \bigl(\sqrt{\hat v_t + \epsilon_{root}} + \epsilon\bigr)

    With ``bias_correction=True`` (the default, matching
    ``optax.scale_by_amsgrad``) both moments are debiased first and the
    maximum is taken over the debiased second moment:

    .. math::

        \hat v_t = \max\bigl(\hat v_{t-1},\, v_t / (1 - \beta_2^t)\bigr), \qquad
        u_t = \frac{m_t / (1 - \beta_1^t)}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    Symbols map to arguments as in :func:`adamx.scale_by_adam`, and so do the
    numerics: float32-or-wider arithmetic, stored dtypes kept, updates in the
    gradient's dtype.

    Args:
      b1: :math:`\beta_1`, decay of the first moment, in [0, 1).
      b2: :math:`\beta_2`, decay of the second moment, in [0, 1).
      eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v}`; >= 0.
      eps_root: :math:`\epsilon_{root}`, added under the square root; >= 0.
      mu_dtype: storage dtype of :math:`m`; None follows each parameter.
      nu_dtype: storage dtype of :math:`v` and :math:`\hat v`; None follows
        each parameter's real dtype.
      bias_correction: debias both moments (optax's convention) or none
        (Reddi et al.'s).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByAmsgradState`.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.scale_by_amsgrad(bias_correction=False)
      >>> state = tx.init(jnp.zeros(1))
      >>> u1, state = tx.update(jnp.array([1.0]), state)
      >>> u2, state = tx.update(jnp.array([0.0]), state)
      >>> state.nu_max  # the maximum keeps step 1's v = 0.001
      Array([0.001], dtype=float32)

    References:
      Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018.
      https://openreview.net/forum?id=ryQu7f-RZ
    """
    caller = "scale_by_amsgrad"
    check_hyperparameters(caller, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    mu_storage = resolve_storage(caller, "mu_dtype", mu_dtype)
    nu_storage = resolve_storage(caller, "nu_dtype", nu_dtype, real=True)
    debias = bias_correction

    def init_fn(params: optax.Params) -> ScaleByAmsgradState:
        # nu and nu_max get buffers of their own, so donating the state works.
        return ScaleByAmsgradState(
            count=jnp.zeros([], jnp.int32),
            mu=init_leaves(caller, mu_storage.init, params),
            nu=init_leaves(caller, nu_storage.init, params),
            nu_max=init_leaves(caller, nu_storage.init, params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)

        def leaf(g, mu, nu, nu_max):
            dtype = numerics.compute_dtype(g.dtype)
            beta1, beta2 = (
                numerics.hyperparameter(b1, dtype),
                numerics.hyperparameter(b2, dtype),
            )
            g32 = g.astype(dtype)
            m = numerics.update_moment(mu_storage.read(mu), g32, beta1)
            v = numerics.update_moment(nu_storage.read(nu), numerics.abs_sq(g32), beta2)
            m_hat = numerics.bias_correction(m, beta1, count) if debias else m
            v_candidate = numerics.bias_correction(v, beta2, count) if debias else v
            v_max = jnp.maximum(nu_storage.read(nu_max), v_candidate)
            direction = numerics.scaled_direction(
                m_hat,
                v_max,
                numerics.hyperparameter(eps, dtype),
                numerics.hyperparameter(eps_root, dtype),
            )
            return (
                direction.astype(g.dtype),
                mu_storage.write(m, mu),
                nu_storage.write(v, nu),
                nu_storage.write(v_max, nu_max),
            )

        updates, mu, nu, nu_max = map_leaves(
            caller, leaf, updates, (state.mu, state.nu, state.nu_max)
        )
        return updates, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    bias_correction: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""AMSGrad: :func:`scale_by_amsgrad` followed by the step :math:`-\alpha_t u_t`.

    ``learning_rate`` is :math:`\alpha`, a float or an optax schedule.
    Reddi et al. use :math:`\alpha_t = \alpha/\sqrt{t}` in their analysis;
    pass ``lambda t: alpha / jnp.sqrt(t + 1)`` to reproduce it.
    """
    check_hyperparameters("amsgrad", b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    direction = scale_by_amsgrad(
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        bias_correction=bias_correction,
    )
    return make_optimizer("amsgrad", direction, learning_rate)
