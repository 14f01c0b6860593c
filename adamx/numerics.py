"""Shared numerics: the few array functions every adamx transform is built from.

Each function is pure, works on one array (a leaf), and computes in
:func:`compute_dtype` — float32 or wider — whatever the dtype it was given.
Transforms read their stored state, call these, and store the results back in
the state's declared dtype; no transform carries its own copy of a moment
update or a bias correction.

Hyperparameters enter through :func:`hyperparameter`, which casts Python
numbers, arrays and tracers to the compute dtype. A ``b2=0.999`` therefore
stays 0.999 (to float32 precision) even for bfloat16 parameters, where a naive
cast would round it to 1.0 and silently turn the second moment into a constant.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx._tracing import is_concrete

__all__ = [
    "Decay",
    "abs_sq",
    "as_decay",
    "bias_correction",
    "bias_correction_factor",
    "compute_dtype",
    "epsilon_hat",
    "hyperparameter",
    "nesterov_momentum",
    "scaled_direction",
    "signal_to_noise",
    "update_moment",
]


def compute_dtype(dtype: DTypeLike) -> jnp.dtype:
    """The dtype adamx computes in for values stored as ``dtype``.

    Narrow floats (float16, bfloat16, 8-bit floats) are widened to float32;
    float64 and complex dtypes are kept, so nothing is computed in less than
    single precision.

    >>> compute_dtype(jnp.bfloat16)
    dtype('float32')
    >>> compute_dtype(jnp.complex64)
    dtype('complex64')
    """
    return jnp.promote_types(dtype, jnp.float32)


def hyperparameter(value: ArrayLike, dtype: DTypeLike) -> jax.Array:
    """Casts a hyperparameter to the real float32-or-wider compute dtype of ``dtype``.

    Python numbers, NumPy and JAX arrays and tracers are all accepted, so a
    hyperparameter may be a constant, an injected array or a traced value.
    """
    real = jnp.finfo(compute_dtype(dtype)).dtype
    if isinstance(value, jax.Array) and value.dtype == real:
        return value  # already cast; inside jit, casting again would trace it
    # A number stays a known constant even while a jit traces this call, so
    # that the transforms can fold it (see update_moment).
    with jax.ensure_compile_time_eval():
        return jnp.asarray(value, dtype=real)


class Decay(NamedTuple):
    r"""A decay rate :math:`\beta` carried with its complement :math:`1 - \beta`.

    Averages weigh the newest value by :math:`1 - \beta`, and for
    :math:`\beta` near 1 that difference is what matters. Rounding
    :math:`\beta = 0.9999` to float32 first and subtracting afterwards moves
    :math:`1 - \beta` by 1.7e-4 relative (1.3e-5 at 0.999); forming the
    complement in float64 before rounding keeps it to float32's 6e-8.
    :func:`as_decay` builds one; every function here that takes a decay accepts
    a :class:`Decay` or a plain number or array.

    Attributes:
      rate: :math:`\beta`.
      complement: :math:`1 - \beta`.
    """

    rate: jax.Array
    complement: jax.Array


def as_decay(value: ArrayLike | Decay, dtype: DTypeLike = jnp.float32) -> Decay:
    """A :class:`Decay` in the real float32-or-wider compute dtype of ``dtype``.

    For a concrete value (a Python number or a concrete array) the complement
    is formed in float64 before rounding; for a tracer it can only be formed
    in the compute dtype.

    >>> d = as_decay(0.9999)
    >>> print(f"{float(d.complement):.10f} {float(1 - d.rate):.10f}")
    0.0001000000 0.0001000166
    """
    if isinstance(value, Decay):
        return Decay(
            hyperparameter(value.rate, dtype), hyperparameter(value.complement, dtype)
        )
    rate = hyperparameter(value, dtype)
    if isinstance(value, jax.core.Tracer):
        return Decay(rate, 1 - rate)
    complement = 1 - np.asarray(value, dtype=np.float64)
    return Decay(rate, hyperparameter(complement, dtype))


def abs_sq(x: jax.Array) -> jax.Array:
    r"""The element-wise squared modulus :math:`|x|^2`, real for complex ``x``.

    For complex parameters Adam's second moment tracks :math:`|g|^2 =
    \mathrm{Re}(g)^2 + \mathrm{Im}(g)^2`, not :math:`g^2` (which is complex
    and can cancel).

    It saturates at the largest finite value of its dtype instead of
    overflowing: in float32 a finite :math:`|g| > 1.8 \times 10^{19}` would
    otherwise give :math:`|g|^2 = \infty`, and an infinite second moment
    never decays (every later step of that entry would be 0) and meets the
    next average as :math:`\infty - \infty` = NaN. NaN stays NaN.

    >>> abs_sq(jnp.array([3.0 + 4.0j]))
    Array([25.], dtype=float32)
    >>> abs_sq(jnp.array([1e20]))
    Array([3.4028235e+38], dtype=float32)
    """
    square = (
        jnp.square(x.real) + jnp.square(x.imag)
        if jnp.iscomplexobj(x)
        else jnp.square(x)
    )
    return jnp.minimum(square, jnp.finfo(square.dtype).max)


def update_moment(
    moment: jax.Array, value: jax.Array, decay: ArrayLike | Decay
) -> jax.Array:
    r"""One step of an exponential moving average.

    .. math:: m_t = \beta\, m_{t-1} + (1 - \beta)\, x_t
        = m_{t-1} + (1 - \beta)(x_t - m_{t-1})

    with :math:`\beta` = ``decay``, :math:`m_{t-1}` = ``moment`` and
    :math:`x_t` = ``value``. Started from :math:`m_0 = 0` this is Kingma & Ba's
    biased moment estimate (2015, Algorithm 1).

    It is evaluated as an interpolation whose two weights sum to 1 by
    construction: in float32 the rounded :math:`\beta` and :math:`1 - \beta`
    do not (at 0.9999 they miss by 1.7e-4), and the first form would scale a
    long-run average by their sum. For :math:`\beta > 1/2` the step is
    :math:`m + (1 - \beta)(x - m)`, from the precise complement (see
    :class:`Decay`); for :math:`\beta \le 1/2` it is
    :math:`x - \beta (x - m)`, which gives exactly :math:`x` at
    :math:`\beta = 0`. Where :math:`x - m` is infinite (a moment or a value
    that overflowed) both would subtract infinities, and the weighted sum is
    used instead: the average of a finite and an infinite number is infinite,
    not NaN, and a side whose weight is 0 is dropped (at :math:`\beta = 0`
    an infinite old moment gives way to a finite new value).

    >>> update_moment(jnp.array([0.0]), jnp.array([4.0]), 0.9)
    Array([0.4], dtype=float32)
    """
    rate, complement = as_decay(decay, jnp.result_type(moment))
    step = value - moment
    if is_concrete(complement):  # choose the form while tracing: one, not both
        if float(complement) < 0.5:
            interpolated = moment + complement * step
        else:
            interpolated = value - rate * step
    else:
        interpolated = jnp.where(
            complement < 0.5, moment + complement * step, value - rate * step
        )
    # Where one side is infinite the interpolation would subtract infinities;
    # the weighted sum gives the infinity, as the average should. A zero
    # weight drops its side, infinite or not (0 * inf would be NaN).
    kept = jnp.where(rate == 0, 0, rate * moment)
    added = jnp.where(complement == 0, 0, complement * value)
    return jnp.where(jnp.isinf(step), kept + added, interpolated)


def bias_correction_factor(decay: ArrayLike | Decay, count: ArrayLike) -> jax.Array:
    r"""The denominator :math:`1 - \beta^t` of Adam's bias correction.

    A moving average started at zero has expectation
    :math:`\mathbb{E}[m_t] = (1 - \beta^t)\,\mathbb{E}[x]` for a stationary
    input, because :math:`(1 - \beta) \sum_{i=1}^t \beta^{t-i}` is a geometric
    series summing to :math:`1 - \beta^t` (Kingma & Ba 2015, Section 3).

    The factor is evaluated as :math:`-\mathrm{expm1}(t\,\mathrm{log1p}(-(1 -
    \beta)))` from the complement :math:`1 - \beta` (see :class:`Decay`),
    which keeps full relative precision when :math:`\beta^t` is close to 1:
    forming :math:`\beta^t` first and subtracting it from 1 loses up to half
    the significant digits of float32 at ``decay=0.999``. It is computed in
    float32 or wider — a bfloat16 ``1 - 0.999**t`` would round to 0 — and
    ``count`` is the 1-based step :math:`t`; at ``count=0`` the factor is 0.

    >>> bias_correction_factor(0.9, 1)
    Array(0.1, dtype=float32)
    """
    dtype = decay.rate.dtype if isinstance(decay, Decay) else jnp.result_type(decay)
    rate, complement = as_decay(decay, dtype)
    t = jnp.asarray(count).astype(rate.dtype)
    at_least_one = jnp.where(t > 0, 1.0, 0.0).astype(rate.dtype)
    if is_concrete(complement):  # log(beta) is then a constant, taken in float64
        if float(complement) >= 1:  # beta = 0: the average is the newest value
            return at_least_one
        log_rate = np.log1p(-np.asarray(complement, dtype=np.float64))
        return -jnp.expm1(t * log_rate.astype(rate.dtype))
    # log1p(-1) is -inf at beta = 0, and -inf * 0 would be NaN at t = 0: guard.
    positive = complement < 1
    safe = jnp.where(positive, complement, 0.5)
    factor = -jnp.expm1(t * jnp.log1p(-safe))
    return jnp.where(positive, factor, at_least_one)


def bias_correction(
    value: jax.Array, decay: ArrayLike | Decay, count: ArrayLike
) -> jax.Array:
    r"""Divides a moving average by :math:`1 - \beta^t`.

    .. math:: \hat m_t = \frac{m_t}{1 - \beta^t}

    with :math:`\beta` = ``decay`` and :math:`t` = ``count`` (1-based: the first
    update is :math:`t = 1`, so :math:`\hat m_1 = g_1` exactly). The division
    runs in :func:`compute_dtype` and the result stays in that dtype.

    >>> bias_correction(jnp.array(0.4), 0.9, 1)
    Array(4., dtype=float32)
    """
    dtype = compute_dtype(value.dtype)
    factor = bias_correction_factor(as_decay(decay, dtype), count)
    return value.astype(dtype) / factor


def scaled_direction(
    mu_hat: jax.Array, nu_hat: jax.Array, eps: ArrayLike, eps_root: ArrayLike
) -> jax.Array:
    r"""Adam's direction :math:`\hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon)`.

    ``eps`` keeps the division finite when :math:`\hat v = 0`; ``eps_root``
    keeps the square root differentiable at zero for meta-learning. Both are
    added in float32 or wider, so ``eps=1e-8`` is never rounded to zero the
    way a float16 addition would round it.

    >>> scaled_direction(jnp.array([4.0]), jnp.array([16.0]), 0.0, 0.0)
    Array([1.], dtype=float32)
    """
    return mu_hat / (jnp.sqrt(nu_hat + eps_root) + eps)


def nesterov_momentum(
    mu: jax.Array, grad: jax.Array, decay: ArrayLike | Decay, count: ArrayLike
) -> jax.Array:
    r"""Nesterov's look-ahead first moment, as in NAdam (Dozat 2016).

    .. math:: \bar m_t = \frac{\beta\, m_t}{1 - \beta^{t+1}}
        + \frac{(1 - \beta)\, g_t}{1 - \beta^t}

    The momentum term is debiased one step ahead, because it is the part of
    :math:`m_{t+1}` that is already known at step :math:`t`.
    """
    # The look-ahead count saturates like the step count: an int32 wrap to
    # -2**31 would turn 1 - beta**(t+1) into -inf and drop the momentum.
    ahead = optax.safe_increment(jnp.asarray(count))
    beta = as_decay(decay, jnp.result_type(mu))
    return beta.rate * bias_correction(mu, beta, ahead) + (
        beta.complement * bias_correction(grad, beta, count)
    )


def epsilon_hat(
    eps: ArrayLike, eps_root: ArrayLike, decay: ArrayLike | Decay, count: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    r"""Moves :math:`\epsilon` and :math:`\epsilon_{root}` to the raw-moment scale.

    Kingma & Ba (2015, end of Section 2) note that the last lines of Adam can be
    reordered as :math:`\alpha_t = \alpha \sqrt{1 - \beta_2^t} / (1 - \beta_1^t)`
    and :math:`\theta_t = \theta_{t-1} - \alpha_t\, m_t / (\sqrt{v_t} + \hat\epsilon)`,
    with :math:`\hat\epsilon` added to the *uncorrected* :math:`\sqrt{v_t}`;
    Keras and TensorFlow use this form. It equals
    :math:`\hat m_t / (\sqrt{\hat v_t} + \hat\epsilon / \sqrt{1 - \beta_2^t})`,
    so the ε̂ form is the standard one with

    .. math:: \epsilon \to \hat\epsilon / \sqrt{1 - \beta_2^t}, \qquad
        \epsilon_{root} \to \epsilon_{root} / (1 - \beta_2^t)

    which is what this returns, for ``decay`` :math:`= \beta_2`.

    >>> eps, _ = epsilon_hat(1e-7, 0.0, 0.999, 1)
    >>> print(f"{float(eps):.4g}")
    3.162e-06
    """
    factor = bias_correction_factor(decay, count)
    return eps / jnp.sqrt(factor), eps_root / factor


def signal_to_noise(mu_hat: jax.Array, nu_hat: jax.Array) -> jax.Array:
    r"""The element-wise signal-to-noise ratio :math:`|\hat m| / \sqrt{\hat v}`.

    Kingma & Ba (2015, Section 2.1) read Adam's update as this ratio: near an
    optimum the gradients' mean is small against their spread, the ratio
    falls towards 0 and so do the steps. It is 0 where :math:`\hat v = 0`
    (no gradient seen), computed in float32 or wider, and real for complex
    moments.

    >>> signal_to_noise(jnp.array([3.0, 0.0]), jnp.array([36.0, 0.0]))
    Array([0.5, 0. ], dtype=float32)
    """
    dtype = compute_dtype(nu_hat.dtype)
    nu_hat = nu_hat.astype(dtype)
    seen = nu_hat > 0
    return jnp.where(
        seen, jnp.abs(mu_hat).astype(dtype) / jnp.sqrt(jnp.where(seen, nu_hat, 1)), 0
    )
