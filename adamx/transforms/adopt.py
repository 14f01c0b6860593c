"""ADOPT: Adam with the current gradient left out of its own normalisation."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._alias import optimizer
from adamx._transform import Hyperparameter, moment_transform
from adamx._validation import REAL
from adamx.storage import moment_storages
from adamx.transforms.adam import adam_hyperparameters


class ScaleByAdoptState(NamedTuple):
    r"""State of :func:`scale_by_adopt`.

    Attributes:
      count: int32 scalar, the number of updates seen, saturating.
      mu: :math:`m_t`, the momentum of the normalised gradients, in
        ``mu_dtype``.
      nu: :math:`v_t`, the second moment of :math:`|g|`, in ``nu_dtype``
        (real even for complex parameters).
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def _quarter_power(step: jax.Array) -> jax.Array:
    """ADOPT's default clipping bound :math:`c_t = t^{1/4}`."""
    return step**0.25


def _clip_modulus(x: jax.Array, bound: jax.Array) -> jax.Array:
    """``clip(x, -bound, bound)``; a complex ``x`` keeps its phase, capped in size."""
    if jnp.iscomplexobj(x):
        modulus = jnp.abs(x)
        # Where modulus > bound >= 0 the division is safe; elsewhere x is kept.
        return jnp.where(modulus > bound, x * (bound / modulus), x)
    return jnp.clip(x, -bound, bound)


def scale_by_adopt(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.9999,
    eps: ArrayLike = 1e-6,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], ArrayLike] = _quarter_power,
    eps_root: ArrayLike = 0.0,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Scales updates by ADOPT's momentum of gradients normalised by past moments.

    Adam divides :math:`g_t` by a second moment that already contains
    :math:`g_t`, which correlates numerator and denominator and is why Adam
    can diverge unless :math:`\beta_2` suits the problem. ADOPT normalises
    :math:`g_t` by :math:`v_{t-1}` instead, and normalises *before* the
    momentum average rather than after it (Taniguchi et al. 2024).

    Gradients are numbered from 0. The first, :math:`g_0`, only initialises
    :math:`v` and its update is zero. Each later gradient :math:`g_t`,
    :math:`t = 1, 2, \dots`, gives

    .. math::

        v_0 &= |g_0|^2, \qquad m_0 = 0 \\
        \tilde g_t &= \mathrm{clip}\Bigl(
            \frac{g_t}{\max\bigl(\sqrt{v_{t-1} + \epsilon_{root}},\, \epsilon\bigr)},
            \, c_t\Bigr) \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, \tilde g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2 \\
        u_t &= m_t \quad\text{or, with Nesterov momentum,}\quad
            u_t = \beta_1 m_t + (1 - \beta_1)\, \tilde g_t

    where :math:`\mathrm{clip}(x, c)` limits :math:`x` to :math:`[-c, c]`
    (for complex :math:`x`, its modulus to :math:`c`, keeping the phase) and
    :math:`c_t = t^{1/4}` by default. Neither moment is bias-corrected, as in
    the paper: :math:`v` starts from :math:`|g_0|^2` rather than 0, and
    :math:`m` from 0. Symbols map to arguments as :math:`\beta_1` = ``b1``,
    :math:`\beta_2` = ``b2``, :math:`\epsilon` = ``eps``,
    :math:`\epsilon_{root}` = ``eps_root`` and :math:`c_t` =
    ``clip_value_fn(t)``; ``use_clipping=False`` gives unclipped ADOPT,
    :math:`\tilde g_t` without the clip. The update matches
    ``optax.contrib.scale_by_adopt``, with optax's arguments; adamx adds
    ``eps_root`` and a separate ``nu_dtype``.

    Computation is in float32 or wider whatever the storage dtypes; updates
    come out in the gradient's dtype.

    Args:
      b1: :math:`\beta_1`, decay of the momentum, in [0, 1).
      b2: :math:`\beta_2`, decay of the second moment, in [0, 1). ADOPT
        converges for any value in that range; the paper recommends 0.9999.
      eps: :math:`\epsilon`, the floor of the normalising
        :math:`\sqrt{v_{t-1}}`; >= 0. Keep it positive: a coordinate whose
        gradients have all been zero would otherwise divide 0 by 0.
      eps_root: :math:`\epsilon_{root}`, added under the square root; >= 0.
      mu_dtype: how :math:`m` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized` or :class:`adamx.StochasticRounding`
        (:mod:`adamx.storage`; not :class:`adamx.Rounded`: the step needs the
        old second moment); None for each parameter's dtype.
      nu_dtype: how :math:`v` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized` or :class:`adamx.StochasticRounding`
        (:mod:`adamx.storage`; not :class:`adamx.Rounded`: the step needs the
        old second moment); None for each parameter's real dtype.
      nesterov: use the Nesterov look-ahead :math:`\beta_1 m_t + (1 - \beta_1)
        \tilde g_t` as the update, as ``optax.contrib.scale_by_adopt`` does.
      use_clipping: clip the normalised gradient to :math:`[-c_t, c_t]`. The bound
        grows from 0, so early normalised gradients, divided by a
        :math:`v_{t-1}` built from very few gradients, cannot blow up.
      clip_value_fn: :math:`c_t` as a function of the step :math:`t` (the
        number of gradients already seen, 0 at step 1), or a number; default
        :math:`t^{1/4}`. Ignored when ``use_clipping`` is False.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByAdoptState`.

    Raises:
      ValueError: at construction, for a concrete hyperparameter out of range
        or an unknown dtype, quoting the call.

    Example:
      The first gradient sets :math:`v_0 = 4`; the second, 2, is normalised to
      1 and clipped to :math:`c_1 = 1`, so :math:`m_1 = 0.1`.

      >>> import jax.numpy as jnp
      >>> from adamx.transforms.adopt import scale_by_adopt
      >>> tx = scale_by_adopt()
      >>> state = tx.init(jnp.zeros(1))
      >>> u1, state = tx.update(jnp.array([2.0]), state)
      >>> u1
      Array([0.], dtype=float32)
      >>> u2, state = tx.update(jnp.array([2.0]), state)
      >>> u2
      Array([0.1], dtype=float32)

    References:
      Taniguchi, Harada, Minegishi, Oshima, Jeong, Nagahara, Iiyama, Suzuki,
      Iwasawa & Matsuo, *ADOPT: Modified Adam Can Converge with Any*
      :math:`\beta_2` *with the Optimal Rate*, NeurIPS 2024.
      https://arxiv.org/abs/2411.02853
    """
    caller = "scale_by_adopt"
    hyperparameters = adam_hyperparameters(b1, b2, eps, eps_root)
    if use_clipping:
        hyperparameters["clip_value"] = Hyperparameter(clip_value_fn, REAL)
    storages = moment_storages(caller, mu_dtype, nu_dtype)

    def leaf_update(g, m, v, *, count, b1, b2, eps, eps_root, clip_value=None):
        first = count == 1
        normalised = g / jnp.maximum(jnp.sqrt(v + eps_root), eps)
        if clip_value is not None:
            normalised = _clip_modulus(normalised, clip_value)
        new_m = numerics.update_moment(m, normalised, b1)
        # Nesterov looks one average ahead, reusing the current normalised gradient.
        update = numerics.update_moment(new_m, normalised, b1) if nesterov else new_m
        # Step 1 has no v_{t-1} to normalise by: g_0 only seeds v. `where`
        # (not a zero decay) keeps a 0/0 there from reaching m.
        new_m = jnp.where(first, m, new_m)
        update = jnp.where(first, jnp.zeros_like(update), update)
        seed = numerics.Decay(
            jnp.where(first, 0.0, b2.rate), jnp.where(first, 1.0, b2.complement)
        )
        v = numerics.update_moment(v, numerics.abs_sq(g), seed)
        return update, new_m, v

    return moment_transform(
        caller,
        ScaleByAdoptState,
        storages,
        hyperparameters,
        leaf_update,
        # m averages already-normalised gradients: |m| is the ratio itself.
        signal=lambda m, v, **_: jnp.abs(m),
    )


def adopt(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.9999,
    eps: ArrayLike = 1e-6,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], ArrayLike] = _quarter_power,
    eps_root: ArrayLike = 0.0,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""ADOPT: :func:`scale_by_adopt` followed by the step :math:`-\alpha_t u_t`.

    ``learning_rate`` is :math:`\alpha`, a float or an optax schedule; the
    other arguments are :func:`scale_by_adopt`'s. Matches
    ``optax.contrib.adopt``. The first step leaves the parameters unchanged.
    """
    return optimizer(
        "adopt",
        scale_by_adopt,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        use_clipping=use_clipping,
        clip_value_fn=clip_value_fn,
        eps_root=eps_root,
        nu_dtype=nu_dtype,
    )


def adoptw(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.9999,
    eps: ArrayLike = 1e-6,
    mu_dtype: DTypeLike | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], ArrayLike] = _quarter_power,
    eps_root: ArrayLike = 0.0,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""ADOPT with decoupled weight decay, as AdamW adds it to Adam.

    .. math:: \theta_t = \theta_{t-1} - \alpha_t\,(u_t + \lambda\,\theta_{t-1})

    with :math:`u_t` from :func:`scale_by_adopt` and :math:`\lambda` =
    ``weight_decay`` (a float or schedule). The decay applies from step 1,
    where :math:`u_1 = 0`, and never enters the moments. ``mask`` (a pytree
    of bools or a function of the params) limits it to some leaves, as in
    ``optax.add_decayed_weights``.

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
      https://arxiv.org/abs/1711.05101
    """
    return optimizer(
        "adoptw",
        scale_by_adopt,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        mask=mask,
        b1=b1,
        b2=b2,
        eps=eps,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        use_clipping=use_clipping,
        clip_value_fn=clip_value_fn,
        eps_root=eps_root,
        nu_dtype=nu_dtype,
    )
