"""AMSGrad: Adam with a non-decreasing second moment."""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._alias import optimizer
from adamx._transform import adam_moments, debiased_signal, moment_transform
from adamx._validation import caller_name
from adamx.storage import moment_storages
from adamx.transforms.adam import adam_hyperparameters


class ScaleByAmsgradState(NamedTuple):
    r"""State of :func:`scale_by_amsgrad`.

    Attributes:
      count: int32 scalar, the number of updates seen, saturating.
      mu: :math:`m_t`, the biased first moment, in ``mu_dtype``.
      nu: :math:`v_t`, the biased second moment, in ``nu_dtype``.
      nu_max: :math:`\hat v_t`, the running maximum (of corrected or raw
        :math:`v`, per ``max_of``), in ``nu_dtype``.
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
    mu_dtype: DTypeLike | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: DTypeLike | None = None,
    max_of: Literal["corrected", "raw"] | None = None,
    nesterov: bool = False,
    epsilon_hat: bool = False,
) -> optax.GradientTransformation:
    r"""Scales updates by AMSGrad's ratio, whose denominator never shrinks.

    Adam's :math:`v_t` forgets large past gradients, so its effective step
    :math:`\alpha/\sqrt{v_t}` can grow and Adam can fail to converge even on
    convex problems (Reddi et al. 2018, Section 3). AMSGrad divides by a
    running maximum instead. With ``bias_correction_mu=False`` and
    ``bias_correction_nu=False`` it is exactly the paper's Algorithm 2 (with
    constant :math:`\beta_1`):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \\
        u_t &= m_t \,/\, \bigl(\sqrt{\hat v_t + \epsilon_{root}} + \epsilon\bigr)

    By default (``bias_correction_mu=True, bias_correction_nu=True``, as in
    ``optax.scale_by_amsgrad``) both moments are debiased first and the
    maximum is taken over the debiased second moment:

    .. math::

        \hat v_t = \max\bigl(\hat v_{t-1},\, v_t / (1 - \beta_2^t)\bigr), \qquad
        u_t = \frac{m_t / (1 - \beta_1^t)}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    With ``max_of="raw"`` the maximum is taken over the raw :math:`v_t` and
    only then debiased, as PyTorch (``amsgrad=True``) and Keras do:

    .. math::

        \hat v_t = \max(\hat v_{t-1}, v_t), \qquad
        u_t = \frac{m_t / (1 - \beta_1^t)}
        {\sqrt{\hat v_t / (1 - \beta_2^t) + \epsilon_{root}} + \epsilon}

    The two differ because :math:`1 - \beta_2^t` grows: a maximum of corrected
    values remembers an early :math:`v_1/(1-\beta_2)`, one of raw values does not.
    The two flags are independent, as in optax: ``bias_correction_mu`` decides
    whether :math:`m_t` or :math:`m_t/(1-\beta_1^t)` is the numerator,
    ``bias_correction_nu`` whether the maximum is over corrected or raw
    :math:`v_t` (and, with ``max_of="raw"``, whether that maximum is debiased).

    Symbols map to arguments as in :func:`adamx.scale_by_adam`, and so do the
    numerics: float32-or-wider arithmetic, stored dtypes kept, updates in the
    gradient's dtype.

    Args:
      b1: :math:`\beta_1`, decay of the first moment, in [0, 1).
      b2: :math:`\beta_2`, decay of the second moment, in [0, 1).
      eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v}`; >= 0.
      eps_root: :math:`\epsilon_{root}`, added under the square root; >= 0.
      mu_dtype: how :math:`m` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's dtype.
      nu_dtype: how :math:`v` and :math:`\hat v` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's real dtype.
      bias_correction_mu: debias the first moment (optax's default) or not
        (Reddi et al.'s).
      bias_correction_nu: debias the second moment before the maximum
        (optax's default) or not (Reddi et al.'s).
      max_of: with ``bias_correction_nu``, take the maximum over the corrected
        :math:`v_t/(1-\beta_2^t)` (``"corrected"``, the default, optax's) or
        over the raw :math:`v_t` (``"raw"``, PyTorch's and Keras's). Without
        bias correction the maximum is over raw :math:`v_t` and only
        ``None`` or ``"raw"`` are accepted.
      nesterov: use the Nesterov look-ahead first moment, as in
        :func:`adamx.scale_by_adam`; without bias correction it is
        :math:`\beta_1 m_t + (1-\beta_1) g_t`.
      epsilon_hat: add ``eps`` on the uncorrected scale, as Keras does
        (:func:`adamx.numerics.epsilon_hat`); needs ``bias_correction_nu``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByAmsgradState`.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.scale_by_amsgrad(bias_correction_mu=False,
      ...                             bias_correction_nu=False)
      >>> state = tx.init(jnp.zeros(1))
      >>> u1, state = tx.update(jnp.array([1.0]), state)
      >>> u2, state = tx.update(jnp.array([0.0]), state)
      >>> state.nu_max  # the maximum keeps step 1's v = 0.001
      Array([0.001], dtype=float32)

    References:
      Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018.
      https://openreview.net/forum?id=ryQu7f-RZ
    """
    caller = caller_name("scale_by_amsgrad")
    hyperparameters = adam_hyperparameters(b1, b2, eps, eps_root)
    mu_storage, nu_storage = moment_storages(caller, mu_dtype, nu_dtype)
    storages = (mu_storage, nu_storage, nu_storage)
    debias_mu, debias_nu = bias_correction_mu, bias_correction_nu
    if max_of not in (None, "corrected", "raw"):
        raise ValueError(f'{caller}(max_of={max_of!r}): use "corrected" or "raw"')
    if not debias_nu and max_of == "corrected":
        raise ValueError(
            f'{caller}(bias_correction_nu=False, max_of="corrected"): there is no '
            "corrected moment to take the maximum of"
        )
    if not debias_nu and epsilon_hat:
        raise ValueError(
            f"{caller}(bias_correction_nu=False, epsilon_hat=True): epsilon-hat "
            "only differs from eps when the second moment is bias-corrected"
        )
    raw_max = max_of == "raw" or not debias_nu

    def moments(g, m, v, v_max, *, count, b1, b2, **_):
        m, v = adam_moments(g, m, v, b1=b1, b2=b2)
        corrected = v if raw_max else numerics.bias_correction(v, b2, count)
        return m, v, jnp.maximum(v_max, corrected)

    def direction(g, m, v, v_max, *, count, b1, b2, eps, eps_root):
        if nesterov and debias_mu:
            m_hat = numerics.nesterov_momentum(m, g, b1, count)
        elif nesterov:
            m_hat = numerics.update_moment(m, g, b1)
        else:
            m_hat = numerics.bias_correction(m, b1, count) if debias_mu else m
        if raw_max and debias_nu:
            v_hat = numerics.bias_correction(v_max, b2, count)
        else:
            v_hat = v_max
        if epsilon_hat:
            eps, eps_root = numerics.epsilon_hat(eps, eps_root, b2, count)
        return numerics.scaled_direction(m_hat, v_hat, eps, eps_root)

    return moment_transform(
        caller,
        ScaleByAmsgradState,
        storages,
        hyperparameters,
        moments=moments,
        direction=direction,
        signal=lambda m, v, v_max, **kw: debiased_signal(m, v, **kw),
        monotone=True,
    )


def amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: DTypeLike | None = None,
    max_of: Literal["corrected", "raw"] | None = None,
    nesterov: bool = False,
    epsilon_hat: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AMSGrad: :func:`scale_by_amsgrad` followed by the step :math:`-\alpha_t u_t`.

    ``learning_rate`` is :math:`\alpha`, a float or an optax schedule.
    Reddi et al. use :math:`\alpha_t = \alpha/\sqrt{t}` in their analysis;
    pass ``lambda t: alpha / jnp.sqrt(t + 1)`` to reproduce it.
    """
    return optimizer(
        "amsgrad",
        scale_by_amsgrad,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        bias_correction_mu=bias_correction_mu,
        bias_correction_nu=bias_correction_nu,
        nu_dtype=nu_dtype,
        max_of=max_of,
        nesterov=nesterov,
        epsilon_hat=epsilon_hat,
    )
