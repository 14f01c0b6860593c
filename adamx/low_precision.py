r"""Low-precision parameters that move as if they were float32.

A bfloat16 parameter :math:`\theta` cannot take a step smaller than half its
spacing, :math:`|u| < 2^{-9}|\theta|`: ``optax.apply_updates`` rounds
:math:`\theta + u` back to :math:`\theta`, and late in training, with a
decayed learning rate, most steps are lost so. :func:`low_precision_params`
wraps any optimizer and rewrites its update :math:`u` into :math:`u'` such
that ``optax.apply_updates(params, updates)``, computed in the parameter's own
dtype, lands on a chosen value :math:`t` exactly:

- ``"kahan"``: :math:`t = \mathrm{rn}(\theta + u + c)`, round to nearest, and
  the part the dtype could not hold, :math:`c' = \theta + u + c - t`, is kept
  in the state for the next step (Kahan's compensated summation; Zamirai et
  al. 2021 for bfloat16 training);
- ``"stochastic"``: :math:`t` is one of the two neighbours of
  :math:`\theta + u` in the dtype, the upper with probability of the distance
  to the lower, so :math:`\mathbb{E}[t] = \theta + u` and no step is lost on
  average. The noise comes from the seed, the step and the leaf: the state
  carries a step count, no key.

Leaves in float32 or wider, complex, integer or absent (None) pass through
unchanged.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx import quantization
from adamx._tracing import is_abstract
from adamx._transform import abstract_init
from adamx._validation import caller_name, check_int

__all__ = ["LowPrecisionParamsState", "low_precision_params", "update_landing_on"]


class LowPrecisionParamsState(NamedTuple):
    """State of :func:`low_precision_params`.

    Attributes:
      count: int32, the number of updates seen (saturating); salts the noise.
      compensation: with ``"kahan"``, per narrow floating parameter leaf
        :math:`c`, what past updates could not add, in the parameter's dtype
        (or int8 codes, with ``compensation_dtype="int8"``); a float32 scalar
        0 for other leaves and with ``"stochastic"``.
      inner: the wrapped optimizer's state.
    """

    count: jax.Array
    compensation: Any
    inner: Any


def _narrow(leaf: Any) -> bool:
    """A real floating leaf narrower than float32: the ones this wrapper rounds."""
    if leaf is None or not hasattr(leaf, "dtype"):
        return False
    dtype = jnp.dtype(leaf.dtype)
    return jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4


def update_landing_on(param: jax.Array, target: jax.Array) -> jax.Array:
    r"""The float32 update with which ``optax.apply_updates`` lands on ``target``.

    ``target`` is a value of the parameter's dtype, given in float32.
    ``apply_updates`` adds a float32 update to a bfloat16 parameter in
    float32 and rounds the sum to bfloat16: :math:`t - \theta` is exact in
    float32 for two 16-bit values within 16 binades of each other, and
    otherwise off by far less than half a spacing of :math:`t`, so the sum
    rounds to :math:`t` either way. An update in the parameter's own dtype
    could not always do so: for :math:`\theta` in the binade just below
    :math:`t`, every :math:`\theta + u'` is a tie between two values of
    :math:`t`'s binade, and round-half-to-even reaches only the even one.

    One exception: XLA flushes float32 subnormals to 0, so a difference
    :math:`|t - \theta| < 2^{-126}` (both within a few of bfloat16's
    smallest normals of 0) is lost and the parameter stays.
    """
    return target - param.astype(jnp.float32)


def _round_stochastically(value: jax.Array, dtype: Any, noise: jax.Array) -> jax.Array:
    r"""``value`` (float32) to a neighbour in ``dtype``, unbiased, as float32.

    Rounds up with probability :math:`(x - \ell)/(h - \ell)`, where
    :math:`\ell \le x \le h` are the two neighbours of :math:`x` in
    ``dtype``; the 24 high bits of ``noise`` make the uniform draw.
    """
    nearest = value.astype(dtype)
    near = nearest.astype(jnp.float32)
    up = jnp.nextafter(nearest, jnp.asarray(jnp.inf, dtype)).astype(jnp.float32)
    down = jnp.nextafter(nearest, jnp.asarray(-jnp.inf, dtype)).astype(jnp.float32)
    low = jnp.where(near <= value, near, down)
    high = jnp.where(near <= value, up, near)
    uniform = (noise >> 8).astype(jnp.float32) * np.float32(2.0**-24)
    fraction = (value - low) / (high - low)
    chosen = jnp.where(uniform < fraction, high, low)
    # exact values, infinities and NaN keep their nearest rounding
    keep = (near == value) | ~jnp.isfinite(value) | ~jnp.isfinite(high - low)
    return jnp.where(keep, near, chosen)


def low_precision_params(
    inner: optax.GradientTransformation,
    rounding: Literal["kahan", "stochastic"] = "kahan",
    seed: int = 0,
    *,
    compensation_dtype: Literal["int8"] | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Updates for bfloat16 or float16 parameters that lose no small steps.

    For each real floating parameter leaf narrower than float32, with the
    inner update :math:`u_t` and the parameter :math:`\theta_{t-1}`:

    .. math::

        s_t &= \theta_{t-1} + (u_t + c_{t-1}) \qquad (c \equiv 0
            \text{ for stochastic rounding}) \\
        \theta_t &= \mathrm{rn}(s_t) \ \text{(kahan)}, \qquad
            \theta_t = \mathrm{sr}(s_t),\
            \mathbb{E}[\theta_t] = s_t \ \text{(stochastic)} \\
        c_t &= (\theta_{t-1} - \theta_t) + (u_t + c_{t-1})
            \ \text{(kahan, stored in the parameter's dtype)}

    and the update returned, :math:`u'_t = \theta_t - \theta_{t-1}`, is
    float32 for these leaves, so that ``optax.apply_updates(params,
    updates)``, which adds in float32 and rounds to the parameter's dtype,
    gives exactly :math:`\theta_t` (:func:`update_landing_on` says why an
    update in the parameter's dtype could not always). The sums are formed in
    float32 in Kahan's order: the small terms together first, and the
    remainder from :math:`\theta_{t-1} - \theta_t`, which is exact, so
    float32 rounds :math:`c_t` relative to its own size, not the parameter's.
    Training loops keep calling ``apply_updates``.

    ``"kahan"`` stores :math:`c` in the parameter's dtype (2 bytes per
    bfloat16 parameter) and is deterministic; ``"stochastic"`` stores nothing
    per parameter and is unbiased at every step. Other leaves (float32 or
    wider, complex, integer, None) pass through, as does a non-finite step.

    With ``compensation_dtype="int8"``, ``"kahan"`` stores :math:`c` in one
    byte, as a multiple of the parameter's own spacing. Round to nearest
    leaves :math:`|c_t| \le \tfrac12 \operatorname{ulp}(\theta_t)`, so

    .. math::

        c_t \approx q_t \, \frac{\operatorname{ulp}(\theta_t)}{254}, \qquad
        q_t = \mathrm{sr}\Big(\frac{254\, c_t}{\operatorname{ulp}(\theta_t)}\Big)
        \in [-127, 127]

    with :math:`\operatorname{ulp}(\theta)` the spacing of the dtype at
    :math:`\theta` (its smallest normal's below that). Half a spacing is a
    whole code, so a remainder that has grown to a tie is kept and the next
    step crosses it. The code is rounded stochastically, with noise from the
    seed, the step and the leaf, so the kept remainder is unbiased and no
    step is lost on average, however small. Each step's error is below
    :math:`1/254` of a spacing (:math:`2^{-15}` of :math:`|\theta|` in
    bfloat16) and independent of the others, so after :math:`T` steps they
    add up to about :math:`\sqrt{T}/508` of a spacing: 254 times less than
    stochastic rounding of the parameter itself. Near 0 in bfloat16 it keeps
    less: XLA flushes float32 subnormals, so for :math:`|\theta| < 2^{-111}`
    the code's unit is 0 and nothing is kept, and at :math:`\theta = 0` a
    remainder can exceed the code's range and is clipped.

    Args:
      inner: the optimizer whose updates are rewritten.
      rounding: ``"kahan"`` or ``"stochastic"``.
      seed: the base of the stochastic rounding's noise, an int >= 0; with
        the step count and the leaf's position it salts each step's noise.
      compensation_dtype: None (the parameter's dtype) or ``"int8"`` (one
        byte per parameter, see above); only with ``"kahan"``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`LowPrecisionParamsState`; its ``update`` needs ``params``.

    Raises:
      ValueError: for an unknown ``rounding``, a bad ``seed`` or
        ``compensation_dtype``, and at ``update`` without ``params``.

    Example:
      A step of 1e-3 on a bfloat16 weight of 1 is lost by plain rounding
      (the spacing there is 2^-7); with compensation, 16 of them move it.

      >>> import jax.numpy as jnp, optax, adamx
      >>> from adamx.low_precision import low_precision_params
      >>> opt = low_precision_params(optax.sgd(1e-3))
      >>> w = jnp.ones(1, jnp.bfloat16)
      >>> state = opt.init(w)
      >>> for _ in range(16):
      ...     updates, state = opt.update(-jnp.ones(1, jnp.bfloat16), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> w
      Array([1.01562], dtype=bfloat16)

    References:
      Kahan, *Further remarks on reducing truncation errors*, CACM 8(1), 1965.

      Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
      SIAM 2002, section 4.3 (compensated summation).

      Zamirai, Zhang, Aberger & De Sa, *Revisiting BFloat16 Training*, 2021.
      https://arxiv.org/abs/2010.06192
    """
    caller = caller_name(f"low_precision_params(rounding={rounding!r}, seed={seed!r})")
    if rounding not in ("kahan", "stochastic"):
        raise ValueError(f'{caller}: rounding must be "kahan" or "stochastic"')
    check_int("low_precision_params", "seed", seed, 0)
    if compensation_dtype is not None:
        if not _names_int8(compensation_dtype):
            raise ValueError(
                f"{caller}: compensation_dtype must be None (the parameter's dtype) "
                f'or "int8", got {compensation_dtype!r}'
            )
        if rounding != "kahan":
            raise ValueError(
                f"{caller}: compensation_dtype={compensation_dtype!r} needs "
                'rounding="kahan"; stochastic rounding keeps no compensation'
            )
    inner = optax.with_extra_args_support(inner)
    kahan = rounding == "kahan"
    packed = compensation_dtype is not None

    def init_fn(params):
        if any(is_abstract(p) for p in jax.tree.leaves(params)):
            return abstract_init(init_fn, params)

        def compensation(p):
            if not (kahan and _narrow(p)):
                # A scalar 0, not None (nnx.Optimizer drops None subtrees) nor
                # an empty array (Orbax refuses to save those).
                return jnp.zeros([], jnp.float32)
            # From p, not a constant: under jit the compiler then shards it
            # like p (a constant would be replicated). |p| * 0 is +0.
            zero = jnp.abs(jnp.where(jnp.isfinite(p), p, 0)) * 0
            return zero.astype(jnp.int8) if packed else zero

        return LowPrecisionParamsState(
            jnp.zeros([], jnp.int32),
            jax.tree.map(compensation, params),
            inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{caller}: update needs params: update(g, state, params)")
        updates, inner_state = inner.update(updates, state.inner, params, **extra_args)
        count = optax.safe_increment(state.count)
        flat_params, treedef = jax.tree.flatten(params, is_leaf=lambda x: x is None)
        flat_updates = treedef.flatten_up_to(updates)
        flat_comp = treedef.flatten_up_to(state.compensation)
        new_updates, new_comp = [], []
        for index, (p, u, c) in enumerate(
            zip(flat_params, flat_updates, flat_comp, strict=True)
        ):
            if u is None or not _narrow(p) or not jnp.issubdtype(u.dtype, jnp.floating):
                new_updates.append(u)
                new_comp.append(c)
                continue
            wide = p.astype(jnp.float32)
            step = u.astype(jnp.float32)
            if kahan:  # Kahan's order: the small terms together first
                step = step + (
                    _decode(c, wide, p.dtype) if packed else c.astype(jnp.float32)
                )
            total = wide + step
            if kahan:
                target = total.astype(p.dtype).astype(jnp.float32)
            else:
                salt = _salt(seed, count, index)
                noise = quantization.rounding_noise(p.shape, salt)
                target = _round_stochastically(total, p.dtype, noise)
            rewritten = update_landing_on(p, target)
            finite = jnp.isfinite(total)
            new_updates.append(jnp.where(finite, rewritten, u.astype(jnp.float32)))
            if kahan:
                # theta - target is exact: two nearby values of a 16-bit dtype
                remainder = (wide - target) + step
                if packed:
                    noise = quantization.rounding_noise(
                        p.shape, _salt(seed, count, index)
                    )
                    remainder = _encode(remainder, target, p.dtype, noise)
                new_comp.append(jnp.where(finite, remainder.astype(c.dtype), c))
            else:
                new_comp.append(c)
        return treedef.unflatten(new_updates), LowPrecisionParamsState(
            count, treedef.unflatten(new_comp), inner_state
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _names_int8(dtype: Any) -> bool:
    try:
        return not isinstance(dtype, bool) and jnp.dtype(dtype) == jnp.int8
    except TypeError:
        return False


def _code_unit(param: jax.Array, dtype: Any) -> jax.Array:
    """1/254 of the spacing of ``dtype`` at ``param`` (float32, a value of dtype).

    The spacing is 2^(e - mantissa bits) for |param| in [2^e, 2^(e+1)); below
    the dtype's smallest normal it is the smallest normal's. Half a spacing,
    the largest remainder of a rounding to nearest, is then code 127.
    """
    info = jnp.finfo(dtype)
    magnitude = jnp.maximum(jnp.abs(param), np.float32(info.smallest_normal))
    # clearing the mantissa leaves the power of two at or below |param|
    bits = jax.lax.bitcast_convert_type(magnitude, jnp.uint32) & jnp.uint32(0x7F800000)
    binade = jax.lax.bitcast_convert_type(bits, jnp.float32)
    return binade * np.float32(2.0**-info.nmant / 254)


def _decode(code: jax.Array, param: jax.Array, dtype: Any) -> jax.Array:
    """The float32 compensation an int8 code stands for at ``param``."""
    return code.astype(jnp.float32) * _code_unit(param, dtype)


def _encode(
    remainder: jax.Array, param: jax.Array, dtype: Any, noise: jax.Array
) -> jax.Array:
    """``remainder`` as an int8 multiple of ``param``'s code unit, rounded unbiased."""
    unit = _code_unit(param, dtype)
    # a unit below float32's normals is flushed to 0: nothing can be kept there
    scaled = jnp.where(unit > 0, remainder / jnp.where(unit > 0, unit, 1), 0)
    low = jnp.floor(scaled)
    uniform = (noise >> 8).astype(jnp.float32) * np.float32(2.0**-24)
    code = low + (uniform < scaled - low).astype(jnp.float32)
    return jnp.clip(code, -127, 127).astype(jnp.int8)


def _salt(seed: int, count: jax.Array, leaf: int) -> jax.Array:
    """A scalar uint32 from (seed, step, leaf) for the rounding noise."""
    step = jnp.asarray(count, jnp.uint32) * jnp.uint32(0x9E3779B9)
    place = jnp.uint32((leaf * 0xC2B2AE35 + seed * 0x85EBCA6B) % 2**32)
    return step ^ place
