"""Yogi: Adam with an additive, sign-controlled second moment."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._alias import optimizer
from adamx._transform import debiased_direction, debiased_signal, moment_transform
from adamx._validation import NON_NEGATIVE, check
from adamx.storage import moment_storages
from adamx.transforms.adam import adam_hyperparameters


class ScaleByYogiState(NamedTuple):
    """State of :func:`scale_by_yogi`.

    Attributes:
      count: int32 scalar, the number of updates seen, saturating.
      mu: :math:`m_t`, the first moment, in ``mu_dtype``.
      nu: :math:`v_t`, the second moment of :math:`|g|`, in ``nu_dtype``
        (real even for complex parameters).
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_yogi(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-3,
    eps_root: ArrayLike = 0.0,
    initial_accumulator_value: ArrayLike = 1e-6,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Scales updates by Yogi's ratio, whose second moment changes additively.

    Adam's :math:`v_t - v_{t-1} = -(1 - \beta_2)(v_{t-1} - g_t^2)` shrinks
    :math:`v` fast after a few small gradients, which can blow up the
    effective step. Yogi (Zaheer et al. 2018) keeps only the *sign* of
    :math:`v_{t-1} - g_t^2`. For each leaf, at step :math:`t = 1, 2, \dots`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
        v_t &= v_{t-1} - (1 - \beta_2)\,
               \mathrm{sign}\bigl(v_{t-1} - |g_t|^2\bigr)\, |g_t|^2 \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad
        \hat v_t = v_t / (1 - \beta_2^t) \\
        d_t &= \hat m_t \,/\, \bigl(\sqrt{\hat v_t + \epsilon_{root}} + \epsilon\bigr)

    from :math:`m_0 = v_0 = v_{init}`. Symbols map to arguments as
    :math:`\beta_1` = ``b1``, :math:`\beta_2` = ``b2``, :math:`\epsilon` =
    ``eps``, :math:`\epsilon_{root}` = ``eps_root`` and :math:`v_{init}` =
    ``initial_accumulator_value``. From :math:`v_0 \ge 0`, :math:`v_t` stays
    non-negative: it either grows or falls to no less than
    :math:`\beta_2 v_{t-1}`.

    **Differences from the paper.** Zaheer et al.'s Algorithm 2 writes the
    step as :math:`m_t / (\sqrt{v_t} + \epsilon)`, without bias correction,
    from :math:`m_0 = v_0 = 0`. adamx matches ``optax.scale_by_yogi``
    instead: both moments start at ``initial_accumulator_value`` and both are
    divided by :math:`1 - \beta^t` (which then no longer removes the start's
    bias exactly; at the default :math:`10^{-6}` the difference is
    negligible). ``eps=1e-3`` is the paper's recommended value.

    Arithmetic runs in float32 or wider; moments are stored in their declared
    dtypes and updates come out in the gradient's dtype.

    Args:
      b1: :math:`\beta_1`, decay of the first moment, in [0, 1).
      b2: :math:`\beta_2`, the second moment's rate, in [0, 1).
      eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v}`; >= 0.
      eps_root: :math:`\epsilon_{root}`, added under the square root; >= 0.
      initial_accumulator_value: :math:`v_{init}`, the value both moments
        start from; >= 0.
      mu_dtype: how :math:`m` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's dtype.
      nu_dtype: how :math:`v` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's real dtype.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByYogiState`.

    Example:
      A gradient far above :math:`\sqrt{v}` raises :math:`v` by
      :math:`(1 - \beta_2) g^2`, as Adam would; one below it lowers :math:`v`
      by only :math:`(1 - \beta_2) g^2`, where Adam would lower it by
      :math:`(1 - \beta_2)(v - g^2)`:

      >>> import jax.numpy as jnp
      >>> from adamx.transforms.yogi import scale_by_yogi
      >>> tx = scale_by_yogi(b2=0.9, initial_accumulator_value=0.0)
      >>> state = tx.init(jnp.zeros(1))
      >>> _, state = tx.update(jnp.array([10.0]), state)
      >>> state.nu  # 0 + 0.1 * 100
      Array([10.], dtype=float32)
      >>> _, state = tx.update(jnp.array([1.0]), state)
      >>> state.nu  # 10 - 0.1 * 1; Adam would give 0.9 * 10 + 0.1 * 1 = 9.1
      Array([9.9], dtype=float32)

    References:
      Zaheer, Reddi, Sachan, Kale & Kumar, *Adaptive Methods for Nonconvex
      Optimization*, NeurIPS 2018.
      https://papers.nips.cc/paper_files/paper/2018/hash/90365351ccc7437a1309dc64e4db32a3-Abstract.html
    """
    caller = "scale_by_yogi"
    hyperparameters = adam_hyperparameters(b1, b2, eps, eps_root)
    check(caller, NON_NEGATIVE, initial_accumulator_value=initial_accumulator_value)
    storages = moment_storages(caller, mu_dtype, nu_dtype)

    def moments(g, m, v, *, b1, b2, **_):
        m = numerics.update_moment(m, g, b1)
        g_sq = numerics.abs_sq(g)
        return m, v - b2.complement * jnp.sign(v - g_sq) * g_sq

    return moment_transform(
        caller,
        ScaleByYogiState,
        storages,
        hyperparameters,
        moments=moments,
        direction=debiased_direction,
        initial_values=(initial_accumulator_value, initial_accumulator_value),
        signal=debiased_signal,
    )


def yogi(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-3,
    *,
    eps_root: ArrayLike = 0.0,
    initial_accumulator_value: ArrayLike = 1e-6,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Yogi: :func:`scale_by_yogi` followed by the step :math:`-\alpha_t d_t`.

    ``learning_rate`` is :math:`\alpha`, a float or an optax schedule. With
    the default ``eps_root`` and ``initial_accumulator_value`` this matches
    ``optax.yogi``, which exposes neither.
    """
    return optimizer(
        "yogi",
        scale_by_yogi,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        initial_accumulator_value=initial_accumulator_value,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
