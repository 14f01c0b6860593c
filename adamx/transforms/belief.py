"""AdaBelief: Adam whose second moment tracks the gradient's deviation from m."""

from typing import NamedTuple

import jax
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._alias import optimizer
from adamx._transform import debiased_signal, moment_transform
from adamx.storage import moment_storages
from adamx.transforms.adam import adam_hyperparameters


class ScaleByBeliefState(NamedTuple):
    r"""State of :func:`scale_by_belief`.

    Attributes:
      count: int32 scalar, the number of updates seen, saturating.
      mu: :math:`m_t`, the biased first moment, in ``mu_dtype``.
      nu: :math:`s_t`, the biased second moment of :math:`|g - m|`, with the
        accumulated :math:`\epsilon_{root}`, in ``nu_dtype`` (real even for
        complex parameters).
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_belief(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-16,
    eps_root: ArrayLike = 1e-16,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Scales updates like Adam, but by the second moment of :math:`g - m`.

    Where Adam divides by the root mean square of :math:`g`, AdaBelief
    divides by that of :math:`g - m`, the gradient's surprise relative to the
    "belief" :math:`m`: steps are large where the gradient is predictable and
    small where it is noisy. For each leaf, at step :math:`t = 1, 2, \dots`
    (Zhuang et al. 2020, Algorithm 2):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2)\, |g_t - m_t|^2
               + \epsilon_{root} \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad
        \hat s_t = s_t / (1 - \beta_2^t) \\
        d_t &= \hat m_t \,/\, \bigl(\sqrt{\hat s_t} + \epsilon\bigr)

    from :math:`m_0 = s_0 = 0`; the optimizer step is
    :math:`\theta_t = \theta_{t-1} - \alpha\, d_t`. Symbols map to arguments
    as :math:`\beta_1` = ``b1``, :math:`\beta_2` = ``b2``, :math:`\epsilon` =
    ``eps`` and :math:`\epsilon_{root}` = ``eps_root``. The residual uses the
    *updated* :math:`m_t`.

    **Where** ``eps_root`` **goes.** As in the paper and in
    ``optax.scale_by_belief``, :math:`\epsilon_{root}` is added to the stored
    :math:`s_t` every step, not only under the square root, so it
    accumulates: its share of :math:`s_t` is :math:`\epsilon_{root}(1 -
    \beta_2^t)/(1 - \beta_2)`, and of :math:`\hat s_t` exactly
    :math:`\epsilon_{root}/(1 - \beta_2)` at every step, 1000 times
    ``eps_root`` at the default :math:`\beta_2`. A positive value keeps the
    square root differentiable when :math:`g_t = m_t` (meta-learning).

    Arithmetic runs in float32 or wider; moments are stored in their declared
    dtypes and updates come out in the gradient's dtype.

    Args:
      b1: :math:`\beta_1`, decay of the first moment, in [0, 1).
      b2: :math:`\beta_2`, decay of the second moment, in [0, 1).
      eps: :math:`\epsilon`, added to :math:`\sqrt{\hat s}`; >= 0.
      eps_root: :math:`\epsilon_{root}`, added to :math:`s_t` at every step;
        >= 0.
      mu_dtype: how :math:`m` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's dtype.
      nu_dtype: how :math:`s` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's real dtype.
      nesterov: replace :math:`\hat m_t` by the Nesterov look-ahead
        :func:`adamx.numerics.nesterov_momentum`, as
        ``optax.scale_by_belief(nesterov=True)`` does.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByBeliefState`.

    Example:
      Adam's first step is :math:`\mathrm{sign}(g_1)`; AdaBelief's is larger,
      because :math:`s_1` measures :math:`g_1` against :math:`m_1 = 0.1 g_1`:

      >>> import jax.numpy as jnp
      >>> from adamx.transforms.belief import scale_by_belief
      >>> tx = scale_by_belief(eps=0.0, eps_root=0.0)
      >>> state = tx.init(jnp.zeros(1))
      >>> d, state = tx.update(jnp.array([1.0]), state)
      >>> d  # s_1 = 0.001 * (1 - 0.1)**2, so d_1 = 1 / sqrt(0.81) = 1 / 0.9
      Array([1.1111112], dtype=float32)

    References:
      Zhuang, Tang, Ding, Tatikonda, Dvornek, Papademetris & Duncan,
      *AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients*, NeurIPS 2020. https://arxiv.org/abs/2010.07468
    """
    caller = "scale_by_belief"
    hyperparameters = adam_hyperparameters(b1, b2, eps, eps_root)
    storages = moment_storages(caller, mu_dtype, nu_dtype)

    def moments(g, m, s, *, b1, b2, eps_root, **_):
        m = numerics.update_moment(m, g, b1)
        return m, numerics.update_moment(s, numerics.abs_sq(g - m), b2) + eps_root

    def direction(g, m, s, *, count, b1, b2, eps, **_):
        if nesterov:
            m_hat = numerics.nesterov_momentum(m, g, b1, count)
        else:
            m_hat = numerics.bias_correction(m, b1, count)
        s_hat = numerics.bias_correction(s, b2, count)
        # eps_root is already inside s, so none is added under the root again.
        return numerics.scaled_direction(m_hat, s_hat, eps, 0.0)

    return moment_transform(
        caller,
        ScaleByBeliefState,
        storages,
        hyperparameters,
        moments=moments,
        direction=direction,
        signal=debiased_signal,
    )


def adabelief(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-16,
    eps_root: ArrayLike = 1e-16,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaBelief: :func:`scale_by_belief` followed by the step :math:`-\alpha_t d_t`.

    ``learning_rate`` is :math:`\alpha`, a float or an optax schedule.
    Matches ``optax.adabelief``.
    """
    return optimizer(
        "adabelief",
        scale_by_belief,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        nesterov=nesterov,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
