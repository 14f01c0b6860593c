"""AdaMax: Adam with the infinity norm in place of the second moment."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._alias import optimizer
from adamx._transform import Hyperparameter, moment_transform
from adamx._validation import DECAY, NON_NEGATIVE
from adamx.storage import moment_storages


class ScaleByAdamaxState(NamedTuple):
    r"""State of :func:`scale_by_adamax`.

    Attributes:
      count: int32 scalar, the number of updates seen, saturating.
      mu: :math:`m_t`, the biased first moment, in ``mu_dtype``.
      nu: :math:`u_t`, the exponentially weighted infinity norm of
        :math:`|g|`, in ``nu_dtype`` (real even for complex parameters).
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adamax(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Scales updates by AdaMax's ratio of the first moment to a decaying maximum.

    Adam's :math:`L^2` second moment generalised to :math:`L^p` becomes, as
    :math:`p \to \infty`, a decaying maximum of :math:`|g|` (Kingma & Ba 2015,
    Section 7.1). For each leaf, at step :math:`t = 1, 2, \dots`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
        u_t &= \max\bigl(\beta_2\, u_{t-1},\; |g_t| + \epsilon\bigr) \\
        d_t &= \frac{m_t / (1 - \beta_1^t)}{u_t}

    from :math:`m_0 = u_0 = 0`; the optimizer step is
    :math:`\theta_t = \theta_{t-1} - \alpha\, d_t`. Symbols map to arguments
    as :math:`\beta_1` = ``b1``, :math:`\beta_2` = ``b2`` and
    :math:`\epsilon` = ``eps``. :math:`u_t` needs no bias correction: a
    maximum is not pulled towards its zero start the way an average is.

    **What ``eps`` does.** The paper's :math:`u_t = \max(\beta_2 u_{t-1},
    |g_t|)` has no :math:`\epsilon`; adamx adds it to :math:`|g_t|` *inside*
    the maximum, as ``optax.scale_by_adamax`` does, not to the denominator.
    So :math:`u_t \ge \epsilon` at every step, which keeps :math:`d_t` finite
    for all-zero gradients whenever ``eps > 0``; a coordinate whose
    :math:`|g|` stays far below :math:`\epsilon` moves by about
    :math:`\hat m_t / \epsilon`. It does not accumulate: each step's
    :math:`\epsilon` either wins the maximum or is forgotten. With
    ``eps=0`` this is exactly the paper's rule, and a coordinate that has
    only seen zero gradients gets :math:`0/0`.

    For complex parameters :math:`|g_t|` is the modulus, so :math:`u_t` is
    real. Arithmetic runs in float32 or wider; moments are stored in their
    declared dtypes and updates come out in the gradient's dtype.

    Args:
      b1: :math:`\beta_1`, decay of the first moment, in [0, 1).
      b2: :math:`\beta_2`, decay of the infinity norm, in [0, 1).
      eps: :math:`\epsilon`, added to :math:`|g_t|` inside the maximum; >= 0.
      mu_dtype: how :math:`m` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's dtype.
      nu_dtype: how :math:`u` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's real dtype.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByAdamaxState`.

    Example:
      The first update is :math:`g_1 / (|g_1| + \epsilon)`, about
      :math:`\mathrm{sign}(g_1)`:

      >>> import jax.numpy as jnp
      >>> from adamx.transforms.adamax import scale_by_adamax
      >>> tx = scale_by_adamax()
      >>> state = tx.init(jnp.zeros(2))
      >>> updates, state = tx.update(jnp.array([4.0, -0.5]), state)
      >>> updates
      Array([ 1., -1.], dtype=float32)
      >>> updates, state = tx.update(jnp.array([1.0, 0.0]), state)
      >>> state.nu  # max(0.999 * 4, 1) and max(0.999 * 0.5, 0)
      Array([3.996 , 0.4995], dtype=float32)

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015,
      Section 7.1 and Algorithm 2. https://arxiv.org/abs/1412.6980
    """
    caller = "scale_by_adamax"
    hyperparameters = {
        "b1": Hyperparameter(b1, DECAY),
        "b2": Hyperparameter(b2, DECAY),
        "eps": Hyperparameter(eps, NON_NEGATIVE),
    }
    storages = moment_storages(caller, mu_dtype, nu_dtype)

    def moments(g, m, u, *, b1, b2, eps, **_):
        m = numerics.update_moment(m, g, b1)
        return m, jnp.maximum(b2.rate * u, jnp.abs(g) + eps)

    def direction(g, m, u, *, count, b1, **_):
        return numerics.bias_correction(m, b1, count) / u

    return moment_transform(
        caller,
        ScaleByAdamaxState,
        storages,
        hyperparameters,
        moments=moments,
        direction=direction,
        signal=_signal,
        monotone=True,
    )


def _signal(m, u, *, count, b1, **_):
    """|m̂|/u: the infinity norm u takes the place of the root of v̂."""
    return numerics.signal_to_noise(numerics.bias_correction(m, b1, count), u * u)


def adamax(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaMax: :func:`scale_by_adamax` followed by the step :math:`-\alpha_t d_t`.

    ``learning_rate`` is :math:`\alpha`, a float or an optax schedule;
    Kingma & Ba suggest :math:`\alpha = 0.002`. Matches ``optax.adamax``.

    >>> import jax.numpy as jnp, optax
    >>> from adamx.transforms.adamax import adamax
    >>> opt = adamax(0.1)
    >>> w = jnp.array(0.5)
    >>> updates, _ = opt.update(jnp.array(-15.0), opt.init(w))
    >>> optax.apply_updates(w, updates)  # the first step is alpha * sign(g)
    Array(0.6, dtype=float32)
    """
    return optimizer(
        "adamax",
        scale_by_adamax,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )


def adamaxw(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaMaxW: :func:`adamax` with decoupled weight decay.

    .. math:: \theta_t = \theta_{t-1} - \alpha_t\,(d_t + \lambda\,\theta_{t-1})

    with :math:`\lambda` = ``weight_decay`` (a float or schedule), kept out of
    the moments; ``mask`` (a pytree of bools or a function of the params)
    limits it to some leaves, as in ``optax.add_decayed_weights``. Matches
    ``optax.adamaxw``.

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
      https://arxiv.org/abs/1711.05101
    """
    return optimizer(
        "adamaxw",
        scale_by_adamax,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        mask=mask,
        b1=b1,
        b2=b2,
        eps=eps,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
