"""Adam and its Nesterov and decoupled-weight-decay forms."""

from typing import Any, NamedTuple

import jax
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
from adamx._validation import DECAY, NON_NEGATIVE
from adamx.storage import moment_storages


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`.

    Attributes:
      count: int32 scalar, the number of updates seen, saturating at the int32
        maximum.
      mu: :math:`m_t`, the biased first moment, shaped like the parameters and
        stored in ``mu_dtype``.
      nu: :math:`v_t`, the biased second moment of :math:`|g|`, stored in
        ``nu_dtype`` (real even for complex parameters).
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: DTypeLike | None = None,
    epsilon_hat: bool = False,
) -> optax.GradientTransformation:
    r"""Scales updates by Adam's bias-corrected moment ratio.

    For each leaf, with gradient :math:`g_t` at step :math:`t = 1, 2, \dots`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2 \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad
        \hat v_t = v_t / (1 - \beta_2^t) \\
        u_t &= \hat m_t \,/\, \bigl(\sqrt{\hat v_t + \epsilon_{root}} + \epsilon\bigr)

    from :math:`m_0 = v_0 = 0`. The optimizer step is
    :math:`\theta_t = \theta_{t-1} - \alpha\, u_t`, which :func:`adamx.adam`
    adds. Symbols map to arguments as :math:`\beta_1` = ``b1``,
    :math:`\beta_2` = ``b2``, :math:`\epsilon` = ``eps`` and
    :math:`\epsilon_{root}` = ``eps_root``.

    **Why the first step uses t = 1.** :math:`1 - \beta^t` is the total weight
    that :math:`t` gradients carry in a zero-started average. After the first
    gradient that weight is :math:`1 - \beta`, so :math:`\hat m_1 = g_1` and
    :math:`\hat v_1 = g_1^2` exactly and the first step is
    :math:`\alpha\,\mathrm{sign}(g_1)`. Bias-correcting step 1 with
    :math:`t = 2`, a slip some worked examples make, divides by
    :math:`1 - \beta^2` instead and shrinks the first step (to about
    :math:`0.74\,\alpha` at the default betas).

    **Properties** (Kingma & Ba 2015, Section 2.1): with :math:`\epsilon = 0`
    the update is invariant to rescaling the gradient by any :math:`c > 0`,
    and :math:`|u_t| \le \max\bigl(1, (1 - \beta_1)/\sqrt{1 - \beta_2}\bigr)`,
    so a step never exceeds that multiple of :math:`\alpha`.
    :math:`\hat m_t / \sqrt{\hat v_t}` reads as a signal-to-noise ratio that
    shrinks near an optimum.

    **Numerics.** Everything is computed in float32 or wider
    (:func:`adamx.numerics.compute_dtype`), whatever the parameter or state
    dtype; hyperparameters are never rounded to a narrow state dtype;
    :math:`1 - \beta^t` is evaluated without cancellation. Updates come out in
    the gradient's dtype, moments are stored in their declared dtypes. A
    float16 model with all-zero gradients therefore gets zero updates, not
    NaN. With float16 parameters, prefer ``nu_dtype=jnp.float32``: float16
    cannot hold :math:`(1 - \beta_2) g^2` for :math:`|g| < 10^{-2}` or so, and
    an underflowed :math:`v` turns the next step into :math:`m/\epsilon`.

    Args:
      b1: :math:`\beta_1`, decay of the first moment, in [0, 1).
      b2: :math:`\beta_2`, decay of the second moment, in [0, 1).
      eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v}`; >= 0.
      eps_root: :math:`\epsilon_{root}`, added under the square root; >= 0.
        A positive value keeps gradients *through* the update finite at
        :math:`g = 0` (meta-learning).
      mu_dtype: how :math:`m` is stored: a floating dtype (for complex
        parameters it names the precision: float32 or complex64 store
        complex64; a complex dtype gives real parameters the real one);
        None for each parameter's dtype; ``"int8"``, ``"int4"`` or
        :class:`adamx.Quantized` for 8- or 4-bit block-wise codes;
        :class:`adamx.StochasticRounding` for bfloat16 with stochastic
        rounding; :class:`adamx.Rounded` to take the step from the stored
        moments (see :mod:`adamx.storage`).
      nu_dtype: how :math:`v` is stored, as ``mu_dtype``; None follows each
        parameter's real dtype.
      nesterov: use Nesterov momentum (NAdam, Dozat 2016):
        :math:`\hat m_t` becomes :func:`adamx.numerics.nesterov_momentum`.
        Matches ``optax.scale_by_adam(nesterov=True)``.
      epsilon_hat: add ``eps`` to the *uncorrected* :math:`\sqrt{v_t}`, as in
        Kingma & Ba's reordered update :math:`\alpha_t = \alpha
        \sqrt{1-\beta_2^t}/(1-\beta_1^t)`, :math:`u_t \propto m_t /
        (\sqrt{v_t} + \hat\epsilon)` (Keras and TensorFlow):
        see :func:`adamx.numerics.epsilon_hat`. It matters while
        :math:`\sqrt{v}` is comparable to ``eps``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByAdamState`.

    Raises:
      ValueError: at construction, for a concrete hyperparameter out of range
        or an unknown dtype, quoting the call.
      TypeError: at ``init``/``update``, for an integer or boolean leaf,
        naming its path.

    Example:
      Seed example: :math:`f(\theta) = \theta^2` from :math:`\theta_0 = 2`.

      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = optax.chain(adamx.scale_by_adam(), optax.scale(-0.1))
      >>> theta = jnp.array(2.0)
      >>> updates, _ = tx.update(2 * theta, tx.init(theta))
      >>> optax.apply_updates(theta, updates)
      Array(1.9, dtype=float32)

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
      https://arxiv.org/abs/1412.6980

      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR Workshop 2016.
      https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    """
    caller = "scale_by_adam"
    hyperparameters = adam_hyperparameters(b1, b2, eps, eps_root)
    storages = moment_storages(caller, mu_dtype, nu_dtype)

    def direction(g, m, v, *, count, b1, b2, eps, eps_root):
        if nesterov:
            m_hat = numerics.nesterov_momentum(m, g, b1, count)
        else:
            m_hat = numerics.bias_correction(m, b1, count)
        v_hat = numerics.bias_correction(v, b2, count)
        if epsilon_hat:
            eps, eps_root = numerics.epsilon_hat(eps, eps_root, b2, count)
        return numerics.scaled_direction(m_hat, v_hat, eps, eps_root)

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


def adam_hyperparameters(
    b1: ArrayLike, b2: ArrayLike, eps: ArrayLike, eps_root: ArrayLike
) -> dict[str, Hyperparameter]:
    """Adam's four, declared: two decay rates and two non-negative epsilons."""
    return {
        "b1": Hyperparameter(b1, DECAY),
        "b2": Hyperparameter(b2, DECAY),
        "eps": Hyperparameter(eps, NON_NEGATIVE),
        "eps_root": Hyperparameter(eps_root, NON_NEGATIVE),
    }


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: DTypeLike | None = None,
    epsilon_hat: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam: :func:`scale_by_adam` followed by the step :math:`-\alpha_t u_t`.

    ``learning_rate`` is :math:`\alpha`, a float or an optax schedule; the
    other arguments are :func:`scale_by_adam`'s.

    >>> import jax.numpy as jnp, optax, adamx
    >>> opt = adamx.adam(0.1)
    >>> w = jnp.array(0.5)  # seed 002: MSE of w * 3 against 4 gives g = -15
    >>> updates, _ = opt.update(jnp.array(-15.0), opt.init(w))
    >>> optax.apply_updates(w, updates)
    Array(0.6, dtype=float32)
    """
    return optimizer(
        "adam",
        scale_by_adam,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        epsilon_hat=epsilon_hat,
    )


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: DTypeLike | None = None,
    epsilon_hat: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    .. math:: \theta_t = \theta_{t-1} - \alpha_t\,(u_t + \lambda\,\theta_{t-1})

    with :math:`u_t` from :func:`scale_by_adam` and :math:`\lambda` =
    ``weight_decay`` (a float or schedule). The decay never enters the
    moments. ``mask`` (a pytree of bools or a function of the params) limits
    the decay to some leaves, as in ``optax.add_decayed_weights``.

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
      https://arxiv.org/abs/1711.05101
    """
    return optimizer(
        "adamw",
        scale_by_adam,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        mask=mask,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        epsilon_hat=epsilon_hat,
    )


def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: DTypeLike | None = None,
    epsilon_hat: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""NAdam: :func:`adam` with Nesterov momentum, as ``optax.nadam``.

    :math:`\hat m_t` is replaced by the look-ahead
    :math:`\beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`
    (:func:`adamx.numerics.nesterov_momentum`).

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR Workshop 2016.
      https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    """
    return optimizer(
        "nadam",
        scale_by_adam,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        epsilon_hat=epsilon_hat,
    )


def nadamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = True,
    nu_dtype: DTypeLike | None = None,
    epsilon_hat: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """NAdamW: :func:`adamw` with the Nesterov momentum of :func:`nadam`.

    Matches ``optax.nadamw``; decoupled weight decay as in :func:`adamw`.
    """
    return optimizer(
        "nadamw",
        scale_by_adam,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        mask=mask,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        epsilon_hat=epsilon_hat,
    )
