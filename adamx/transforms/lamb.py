"""LAMB: Adam's direction rescaled layer by layer to the parameters' norm."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._alias import decay_steps, optimizer
from adamx._validation import caller_name, quoting
from adamx.transforms.adam import scale_by_adam


def scale_by_lamb(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-6,
    eps_root: ArrayLike = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Scales Adam's direction plus weight decay by each leaf's trust ratio.

    Large-batch training needs large learning rates, at which a layer whose
    update is large compared with its weights diverges. LAMB (You et al.
    2020) gives every layer — every leaf of the parameter tree — a step
    proportional to the norm of its own weights. For each leaf
    :math:`\theta`, at step :math:`t = 1, 2, \dots`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2 \\
        a_t &= \frac{m_t / (1 - \beta_1^t)}
                    {\sqrt{v_t / (1 - \beta_2^t) + \epsilon_{root}} + \epsilon}
              + \lambda\, \theta_{t-1} \\
        u_t &= \frac{\phi(\lVert \theta_{t-1} \rVert)}{\lVert a_t \rVert}\, a_t

    with :math:`\lVert\cdot\rVert` the Euclidean (Frobenius) norm of the whole
    leaf and :math:`\phi` the identity. The ratio is taken as 1 when either
    norm is 0, so a zero-initialised leaf still moves and a leaf without
    gradient stays put. The optimizer step is :math:`\theta_t =
    \theta_{t-1} - \alpha\, u_t`, whose size is therefore
    :math:`\alpha \lVert \theta_{t-1} \rVert` for every leaf. Symbols map to
    arguments as :math:`\beta_1` = ``b1``, :math:`\beta_2` = ``b2``,
    :math:`\epsilon` = ``eps``, :math:`\epsilon_{root}` = ``eps_root`` and
    :math:`\lambda` = ``weight_decay``.

    This is ``optax.chain(scale_by_adam, weight decay, trust ratio)``, as in
    ``optax.lamb``, with the decay and the norms computed in float32 or
    wider. The paper allows a clipped :math:`\phi(z) = \min(\max(z,
    \gamma_l), \gamma_u)`; for that, chain :func:`adamx.scale_by_adam`,
    ``optax.add_decayed_weights`` and ``optax.scale_by_trust_ratio(min_norm=...)``
    yourself.

    Args:
      b1: :math:`\beta_1`, decay of the first moment, in [0, 1).
      b2: :math:`\beta_2`, decay of the second moment, in [0, 1).
      eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v}`; >= 0. The
        paper's default is :math:`10^{-6}`.
      eps_root: :math:`\epsilon_{root}`, added under the square root; >= 0.
      weight_decay: :math:`\lambda`, a float or a schedule; >= 0. It is
        added before the trust ratio, so it is part of :math:`\lVert a_t
        \rVert`.
      mask: which leaves are decayed: a pytree of bools or a function of the
        params, as in ``optax.add_decayed_weights``.
      mu_dtype: how :math:`m` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's dtype.
      nu_dtype: how :math:`v` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's real dtype.
      nesterov: use Nesterov momentum in the Adam direction, as in
        :func:`adamx.transforms.adam.scale_by_adam`.

    Returns:
      An ``optax.GradientTransformation`` (an ``optax.chain``) whose state is
      the tuple (:class:`adamx.transforms.adam.ScaleByAdamState`, the decay's
      state, the trust ratio's empty state). ``update`` needs ``params``.

    Raises:
      ValueError: at construction, for a concrete hyperparameter out of range
        or an unknown dtype, quoting the call.

    Example:
      Every leaf's update has the norm of that leaf, whatever its gradient's
      scale:

      >>> import jax.numpy as jnp
      >>> from adamx.transforms.lamb import scale_by_lamb
      >>> params = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])}
      >>> tx = scale_by_lamb()
      >>> grads = {"w": jnp.array([0.5, -2.0]), "b": jnp.array([5.0])}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> print(updates["w"].round(4))  # Adam's (1, -1), rescaled to norm 5
      [ 3.5355 -3.5355]
      >>> print(updates["b"].round(4))  # zero weights: ratio 1, Adam's sign(g)
      [1.]

    References:
      You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer &
      Hsieh, *Large Batch Optimization for Deep Learning: Training BERT in 76
      minutes*, ICLR 2020. https://arxiv.org/abs/1904.00962
    """
    caller = caller_name("scale_by_lamb")
    with quoting(caller):  # errors are reported as this call's
        adam = scale_by_adam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            nesterov=nesterov,
        )
        decay = decay_steps(caller, weight_decay, mask)
    return optax.chain(adam, *decay, _trust_ratio())


def _trust_ratio() -> optax.GradientTransformation:
    """Per leaf, ``u · ‖θ‖/‖u‖`` (1 if either norm is 0), norms in float32 or wider.

    The same rule as ``optax.scale_by_trust_ratio()``, whose norms are summed
    in the parameters' dtype: a bfloat16 sum of squares over a large layer
    loses most of its digits.
    """

    def leaf(u, p):
        dtype = numerics.compute_dtype(u.dtype)
        wide = u.astype(dtype)
        param_sq = jnp.sum(numerics.abs_sq(p.astype(dtype)))
        update_sq = jnp.sum(numerics.abs_sq(wide))
        both = (param_sq > 0) & (update_sq > 0)
        # The square roots only see positive sums, so that gradients through
        # the update stay finite where a norm is 0 (sqrt' is infinite there).
        ratio = jnp.where(
            both,
            jnp.sqrt(jnp.where(both, param_sq, 1))
            / jnp.sqrt(jnp.where(both, update_sq, 1)),
            1,
        )
        return (wide * ratio).astype(u.dtype)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_lamb needs params: update(g, state, params)")
        return jax.tree.map(leaf, updates, params), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-6,
    eps_root: ArrayLike = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""LAMB: :func:`scale_by_lamb` followed by the step :math:`-\alpha_t u_t`.

    ``learning_rate`` is :math:`\alpha`, a float or an optax schedule; the
    weight decay is inside :func:`scale_by_lamb`, before the trust ratio.
    Matches ``optax.lamb``.
    """
    # LAMB's decay belongs inside the trust ratio, so it goes to the direction.
    direction = functools.partial(scale_by_lamb, weight_decay=weight_decay, mask=mask)
    return optimizer(
        "lamb",
        direction,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        nesterov=nesterov,
    )
