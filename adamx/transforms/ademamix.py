"""AdEMAMix: Adam with a second, much slower momentum mixed into its numerator."""

from typing import Any, NamedTuple

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
from adamx._validation import DECAY, NON_NEGATIVE, check
from adamx.storage import moment_storages


class ScaleByAdemamixState(NamedTuple):
    r"""State of :func:`scale_by_ademamix`.

    Attributes:
      count: int32 scalar, the number of updates seen, saturating.
      mu: :math:`m^{(1)}_t`, the fast biased first moment, in ``mu_dtype``.
      mu_slow: :math:`m^{(2)}_t`, the slow first moment, in ``mu_dtype``.
      nu: :math:`v_t`, the biased second moment of :math:`|g|`, in
        ``nu_dtype`` (real even for complex parameters).
    """

    count: jax.Array
    mu: optax.Updates
    mu_slow: optax.Updates
    nu: optax.Updates


def scale_by_ademamix(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 6.0,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Scales updates by AdEMAMix's mixture of a fast and a slow momentum.

    One moving average cannot both follow the latest gradients and remember
    gradients from thousands of steps ago. AdEMAMix keeps Adam's fast,
    bias-corrected momentum and adds :math:`\alpha` times a slow one with
    decay :math:`\beta_3` close to 1. For each leaf, with gradient
    :math:`g_t` at step :math:`t = 1, 2, \dots`:

    .. math::

        m^{(1)}_t &= \beta_1 m^{(1)}_{t-1} + (1 - \beta_1)\, g_t \\
        m^{(2)}_t &= \beta_{3,t}\, m^{(2)}_{t-1} + (1 - \beta_{3,t})\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2 \\
        \hat m^{(1)}_t &= m^{(1)}_t / (1 - \beta_1^t), \qquad
        \hat v_t = v_t / (1 - \beta_2^t) \\
        u_t &= \frac{\hat m^{(1)}_t + \alpha_t\, m^{(2)}_t}
            {\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    from zero moments. The slow moment is deliberately *not* bias-corrected,
    so that it fills slowly: corrected, it would equal :math:`g_1` at step 1
    and make the first steps :math:`1 + \alpha` times Adam's. Symbols map to
    arguments as :math:`\beta_1` = ``b1``, :math:`\beta_2` = ``b2``,
    :math:`\beta_{3,t}` = ``b3``, :math:`\alpha_t` = ``alpha``,
    :math:`\epsilon` = ``eps`` and :math:`\epsilon_{root}` = ``eps_root``.
    ``b3`` and ``alpha`` may be schedules, called with the 0-based step like
    every optax schedule; the paper warms both up over the run, with
    :func:`ademamix_b3_schedule` and
    ``optax.linear_schedule(0.0, alpha, warmup_steps)``.

    The defaults are optax's: :math:`\alpha = 6` here, as in
    ``optax.contrib.scale_by_ademamix``, and :math:`\alpha = 5` in
    :func:`ademamix`, the authors' implementation's (apple/ml-ademamix) and
    ``optax.contrib.ademamix``'s; the paper tunes :math:`\alpha` per task.
    With equal arguments adamx and optax compute the same update.
    Unlike optax, adamx stores :math:`v` in ``nu_dtype`` rather than
    ``mu_dtype``.
    Computation is in float32 or wider; updates come out in the gradient's
    dtype.

    Args:
      b1: :math:`\beta_1`, decay of the fast first moment, in [0, 1).
      b2: :math:`\beta_2`, decay of the second moment, in [0, 1).
      b3: :math:`\beta_3`, decay of the slow first moment, in [0, 1), or a
        schedule.
      alpha: :math:`\alpha`, weight of the slow moment, >= 0, or a schedule.
      eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v}`; >= 0.
      eps_root: :math:`\epsilon_{root}`, added under the square root; >= 0.
      mu_dtype: how both first moments is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's dtype.
      nu_dtype: how :math:`v` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's real dtype.

    Returns:
      An ``optax.GradientTransformation`` with state
      :class:`ScaleByAdemamixState`.

    Raises:
      ValueError: at construction, for a concrete hyperparameter out of range
        or an unknown dtype, quoting the call.

    Example:
      At step 1 the fast moment is debiased to :math:`g_1` and the slow one
      holds :math:`(1 - \beta_3) g_1`, so the update is
      :math:`1 + \alpha (1 - \beta_3)`:

      >>> import jax.numpy as jnp
      >>> from adamx.transforms.ademamix import scale_by_ademamix
      >>> tx = scale_by_ademamix(b3=0.9, alpha=5.0, eps=0.0)
      >>> u, state = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
      >>> u
      Array([1.5], dtype=float32)

    References:
      Pagliardini, Ablin & Grangier, *The AdEMAMix Optimizer: Better, Faster,
      Older*, ICLR 2025. https://arxiv.org/abs/2409.03137
    """
    caller = "scale_by_ademamix"
    hyperparameters = {
        "b1": Hyperparameter(b1, DECAY),
        "b2": Hyperparameter(b2, DECAY),
        "b3": Hyperparameter(b3, DECAY),
        "alpha": Hyperparameter(alpha, NON_NEGATIVE),
        "eps": Hyperparameter(eps, NON_NEGATIVE),
        "eps_root": Hyperparameter(eps_root, NON_NEGATIVE),
    }
    mu_storage, nu_storage = moment_storages(caller, mu_dtype, nu_dtype)
    storages = (mu_storage, mu_storage, nu_storage)

    def moments(g, m, m_slow, v, *, b1, b2, b3, **_):
        m, v = adam_moments(g, m, v, b1=b1, b2=b2)
        return m, numerics.update_moment(m_slow, g, b3), v

    def direction(g, m, m_slow, v, *, count, b1, b2, alpha, eps, eps_root, **_):
        m_hat = numerics.bias_correction(m, b1, count)
        v_hat = numerics.bias_correction(v, b2, count)
        mixed = m_hat + alpha * m_slow
        return numerics.scaled_direction(mixed, v_hat, eps, eps_root)

    return moment_transform(
        caller,
        ScaleByAdemamixState,
        storages,
        hyperparameters,
        moments=moments,
        direction=direction,
        signal=lambda m, m_slow, v, **kw: debiased_signal(m, v, **kw),
        monotone=True,
    )


def ademamix(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 5.0,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    *,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdEMAMix with decoupled weight decay, as the paper defines it.

    .. math:: \theta_t = \theta_{t-1} - \eta_t\,(u_t + \lambda\,\theta_{t-1})

    with :math:`u_t` from :func:`scale_by_ademamix`, :math:`\eta` =
    ``learning_rate`` and :math:`\lambda` = ``weight_decay`` (floats or
    schedules; no decay by default). ``mask`` (a pytree of bools or a
    function of the params) limits the decay to some leaves, as in
    ``optax.add_decayed_weights``. Matches ``optax.contrib.ademamix``.
    """
    return optimizer(
        "ademamix",
        scale_by_ademamix,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        mask=mask,
        b1=b1,
        b2=b2,
        b3=b3,
        alpha=alpha,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )


def ademamix_b3_schedule(
    b3: float, warmup_steps: int, b_start: float = 0.9
) -> optax.Schedule:
    r"""The paper's warm-up of :math:`\beta_3`, linear in the moment's half-life.

    An average with decay :math:`\beta` halves a gradient's weight every
    :math:`\ln(1/2) / \ln\beta` steps. A linear ramp of :math:`\beta` itself
    would keep that half-life short for almost all of the warm-up, since it
    only grows as :math:`\beta` nears 1; this schedule ramps the half-life
    linearly instead, from that of ``b_start`` to that of ``b3``:

    .. math::

        \beta_3(s) = \exp\Bigl(\frac{\ln\beta_{start}\, \ln\beta_3}
            {(1 - a)\ln\beta_3 + a \ln\beta_{start}}\Bigr), \qquad
        a = \min(s / T, 1)

    at the 0-based step :math:`s`, with :math:`T` = ``warmup_steps``; from
    :math:`s = T` on it is ``b3``. The paper starts from
    :math:`\beta_{start} = \beta_1` and warms :math:`\alpha` up over the same
    :math:`T` with ``optax.linear_schedule(0.0, alpha, T)``.

    Args:
      b3: the final :math:`\beta_3`, in [0, 1).
      warmup_steps: :math:`T`, a Python int >= 0; 0 gives ``b3`` throughout.
      b_start: :math:`\beta_{start}`, the value at step 0, in [0, 1).

    Returns:
      A schedule, a function of the step, for ``b3`` of
      :func:`scale_by_ademamix` or :func:`ademamix`.

    Example:
      >>> sched = ademamix_b3_schedule(0.9999, warmup_steps=100, b_start=0.9)
      >>> float(sched(0)), float(sched(100))
      (0.9..., 0.9999...)
    """
    caller = "ademamix_b3_schedule"
    check(caller, DECAY, b3=b3, b_start=b_start)
    check(caller, NON_NEGATIVE, warmup_steps=warmup_steps)

    def schedule(step: ArrayLike) -> jax.Array:
        if warmup_steps == 0:
            return jnp.asarray(b3)
        # `float` is the default float dtype: float64 under x64, unlike the
        # float32 that jnp gives for an int32 step divided by an int.
        a = jnp.minimum(jnp.asarray(step, dtype=float) / warmup_steps, 1.0)
        # 1/ln(beta) is what moves linearly. Interpolating it (rather than
        # the quotient above) stays finite for a decay of 0, where ln is -inf.
        inverse_log = (1 - a) / jnp.log(b_start) + a / jnp.log(b3)
        value = jnp.exp(1 / inverse_log)
        return jnp.where(a >= 1, jnp.asarray(b3, value.dtype), value)

    return schedule
