"""RAdam: Adam with its early-step variance rectified."""

import math

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._alias import optimizer
from adamx._transform import (
    Hyperparameter,
    adam_moments,
    debiased_signal,
    moment_transform,
)
from adamx._validation import RECTIFIABLE, caller_name
from adamx.storage import moment_storages
from adamx.transforms.adam import ScaleByAdamState, adam_hyperparameters

# 1/k! for k = 2..18: the Taylor series of expm1(y) - y to below float64's
# rounding for |y| <= 1 (the first omitted term is 1/19! < 1e-17).
_EXPM1_MINUS_Y = tuple(1.0 / math.factorial(k) for k in range(2, 19))


def _expm1_minus_identity(y: jax.Array) -> jax.Array:
    r""":math:`e^y - 1 - y` for :math:`|y| \le 1`, to full relative precision.

    ``expm1(y) - y`` would cancel: for small :math:`y` the result is
    :math:`y^2/2` and the subtraction loses about :math:`\log_2(2/|y|)` bits.
    """
    acc = jnp.zeros_like(y)
    for c in reversed(_EXPM1_MINUS_Y):
        acc = acc * y + c
    return y * y * acc


def _rho(b2: numerics.Decay, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""(:math:`\rho_t`, :math:`\rho_\infty`), free of cancellation.

    The textbook :math:`\rho_\infty - 2t\beta_2^t/(1 - \beta_2^t)` subtracts
    two numbers near :math:`2/(1 - \beta_2)` to get one near :math:`t`: in
    float32 at :math:`\beta_2 = 0.999` it loses three to four digits at the
    first rectified steps, and at :math:`\beta_2 = 0.9999` the rectifier
    :math:`r_t` comes out wrong by tens of percent. With :math:`L = -\log
    \beta_2` and :math:`s = tL` the same quantity is

    .. math:: \rho_t = \frac{2\,\bigl[\phi(s) + t\,\phi(-L)\bigr]}
        {(1 - \beta_2)\,(e^s - 1)} - 1, \qquad \phi(y) = e^y - 1 - y,

    a sum of non-negative terms, used while :math:`s < 1`. From :math:`s = 1`
    on, :math:`\rho_t > \rho_\infty/3` and the textbook form loses at most two
    bits, so it is used there (it also never overflows :math:`e^s`).
    """
    t = count.astype(b2.rate.dtype)
    one_minus_b2 = b2.complement
    rho_inf = 2 / one_minus_b2 - 1
    log_b2 = -jnp.log1p(-one_minus_b2)  # +inf at b2 = 0: the direct form handles it
    s = t * log_b2
    direct = rho_inf - 2 * t * jnp.exp(-s) / numerics.bias_correction_factor(b2, count)
    # Clamped so that the branch not taken stays finite.
    s_small = jnp.minimum(s, 1.0)
    log_small = jnp.minimum(log_b2, 1.0)
    series = _expm1_minus_identity(s_small) + t * _expm1_minus_identity(-log_small)
    stable = 2 * series / (one_minus_b2 * jnp.expm1(s_small)) - 1
    return jnp.where(s < 1, stable, direct), rho_inf


def scale_by_radam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    threshold: ArrayLike = 5.0,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Scales updates by Rectified Adam's ratio, momentum alone while v is unreliable.

    In its first steps Adam's :math:`\hat v_t` averages only a few gradients,
    so the adaptive step :math:`1/\sqrt{\hat v_t}` has a large, even
    unbounded, variance (Liu et al. 2020, Section 3). RAdam multiplies the
    adaptive step by a factor :math:`r_t` that equalises that variance, and
    uses plain momentum SGD while the variance is not yet finite. For each
    leaf, at step :math:`t = 1, 2, \dots`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2 \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad
        \hat v_t = v_t / (1 - \beta_2^t) \\
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\,\rho_\infty}
                          {(\rho_\infty - 4)(\rho_\infty - 2)\,\rho_t}} \\
        u_t &= \begin{cases}
            r_t\, \hat m_t / \bigl(\sqrt{\hat v_t + \epsilon_{root}} + \epsilon\bigr)
                & \rho_t \ge \rho_{min} \\
            \hat m_t & \text{otherwise}
        \end{cases}

    from :math:`m_0 = v_0 = 0`. :math:`\rho_t` is the length of the simple
    moving average that :math:`v_t` approximates; it grows from 1 to
    :math:`\rho_\infty`, and :math:`r_t` from 0 to 1, so RAdam becomes Adam.
    Symbols map to arguments as :math:`\beta_1` = ``b1``, :math:`\beta_2` =
    ``b2``, :math:`\epsilon` = ``eps``, :math:`\epsilon_{root}` =
    ``eps_root`` and :math:`\rho_{min}` = ``threshold``. At the default
    :math:`\beta_2 = 0.999` the first five steps are momentum SGD.

    **Conventions.** This matches ``optax.scale_by_radam``, which differs
    from the paper's Algorithm 2 in two details: it rectifies when
    :math:`\rho_t \ge 5` (the authors' released code) rather than
    :math:`\rho_t > 4`, and it adds :math:`\epsilon` to
    :math:`\sqrt{\hat v_t}`, where the paper has none. Pass ``threshold=4``
    for the paper's cut-off (only :math:`\rho_t = 4` exactly, where
    :math:`r_t = 0`, is treated differently).

    **Numerics.** The textbook :math:`\rho_t` subtracts two numbers near
    :math:`2/(1 - \beta_2)` to get one near :math:`t`. Evaluated in float32
    (as optax does) it puts :math:`r_t` off by about 0.4% at the first
    rectified steps for :math:`\beta_2 = 0.999` and by tens of percent for
    :math:`\beta_2 = 0.9999`. adamx uses the equivalent sum of non-negative
    terms

    .. math:: \rho_t = \frac{2\,\bigl[\phi(tL) + t\,\phi(-L)\bigr]}
        {(1 - \beta_2)\,(e^{tL} - 1)} - 1, \qquad
        L = -\log\beta_2, \quad \phi(y) = e^y - 1 - y,

    with :math:`\phi` from its Taylor series, while :math:`tL < 1`, and the
    textbook form (then well conditioned) after, so :math:`\rho_t` is
    within a few float32 ulps for every :math:`\beta_2`. Everything else is
    as in :func:`adamx.transforms.adam.scale_by_adam`: float32-or-wider
    arithmetic, stored dtypes kept, updates in the gradient's dtype.

    Args:
      b1: :math:`\beta_1`, decay of the first moment, in [0, 1).
      b2: :math:`\beta_2`, decay of the second moment, in [0, 1).
      eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v}`; >= 0.
      eps_root: :math:`\epsilon_{root}`, added under the square root; >= 0.
      threshold: :math:`\rho_{min}`, the :math:`\rho_t` from which the
        adaptive step is used; >= 4, below which :math:`r_t` is not real.
      mu_dtype: how :math:`m` is stored: a floating dtype; None for each
        parameter's dtype; ``"int8"``, ``"int4"`` or :class:`adamx.Quantized`
        for 8- or 4-bit block-wise codes; :class:`adamx.StochasticRounding`
        for bfloat16 with stochastic rounding; :class:`adamx.Rounded` to take
        the step from the stored moments (see :mod:`adamx.storage`).
      nu_dtype: how :math:`v` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's real dtype.
      nesterov: use Nesterov momentum: :math:`\hat m_t` becomes
        :func:`adamx.numerics.nesterov_momentum` in both branches, as in
        ``optax.scale_by_radam(nesterov=True)``.

    Returns:
      An ``optax.GradientTransformation`` with state
      :class:`adamx.transforms.adam.ScaleByAdamState`.

    Raises:
      ValueError: at construction, for a concrete hyperparameter out of range
        or an unknown dtype, quoting the call.

    Example:
      A constant gradient :math:`g = 3` has :math:`\hat m_t = 3` and
      :math:`\sqrt{\hat v_t} = 3`. The first five steps return
      :math:`\hat m_t` itself; step 6 is the first with
      :math:`\rho_6 \approx 5.994 \ge 5`, and :math:`r_6 \approx 0.0258`:

      >>> import jax.numpy as jnp
      >>> from adamx.transforms.radam import scale_by_radam
      >>> tx = scale_by_radam()
      >>> state = tx.init(jnp.zeros(1))
      >>> for t in range(1, 7):
      ...     u, state = tx.update(jnp.array([3.0]), state)
      ...     print(t, f"{float(u[0]):.4f}")
      1 3.0000
      2 3.0000
      3 3.0000
      4 3.0000
      5 3.0000
      6 0.0258

    References:
      Liu, Jiang, He, Chen, Liu, Gao & Han, *On the Variance of the Adaptive
      Learning Rate and Beyond*, ICLR 2020. https://arxiv.org/abs/1908.03265
    """
    caller = caller_name("scale_by_radam")
    hyperparameters = {
        **adam_hyperparameters(b1, b2, eps, eps_root),
        "threshold": Hyperparameter(threshold, RECTIFIABLE),
    }
    storages = moment_storages(caller, mu_dtype, nu_dtype)

    def direction(g, m, v, *, count, b1, b2, eps, eps_root, threshold):
        if nesterov:
            m_hat = numerics.nesterov_momentum(m, g, b1, count)
        else:
            m_hat = numerics.bias_correction(m, b1, count)
        v_hat = numerics.bias_correction(v, b2, count)
        rho, rho_inf = _rho(b2, count)
        rectify = rho >= threshold
        ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
        # 1 where unused, so the branch not taken holds no NaN for gradients.
        r = jnp.sqrt(jnp.where(rectify, ratio, 1.0))
        adaptive = r * numerics.scaled_direction(m_hat, v_hat, eps, eps_root)
        return jnp.where(rectify, adaptive, m_hat)

    return moment_transform(
        caller,
        ScaleByAdamState,
        storages,
        hyperparameters,
        moments=adam_moments,
        direction=direction,
        signal=debiased_signal,
        monotone=True,
    )


def radam(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    threshold: ArrayLike = 5.0,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""RAdam: :func:`scale_by_radam` followed by the step :math:`-\alpha_t u_t`.

    ``learning_rate`` is :math:`\alpha`, a float or an optax schedule. Matches
    ``optax.radam`` in float64; in float32 it stays closer to that float64
    trajectory than ``optax.radam`` does (see :func:`scale_by_radam`).
    """
    return optimizer(
        "radam",
        scale_by_radam,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        threshold=threshold,
        nesterov=nesterov,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
