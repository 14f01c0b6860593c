"""The one skeleton every adamx ``scale_by_*`` is built on.

A variant supplies only its per-leaf maths, in the compute dtype, given the
step count and the hyperparameters cast to that dtype: how its moments move
(``moments``) and the step they give (``direction``), declared apart, or one
``leaf_update`` doing both where the step needs more than the new moments. It
also declares whether its moments are ``monotone`` in the magnitudes of their
inputs. This module does the rest once for all variants: the saturating int32
count, the starting moments at ``init`` (zero unless given), reading and
writing the declared storage (sizing low-bit blocks from the monotone bound,
taking the step from the stored moments where the storage asks for it),
casting the update back to the gradient's dtype, and the leaf-by-leaf walk
with its errors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx import numerics, quantization
from adamx._reduce import sum_and_max
from adamx._signals import SignalSummary, report_signal
from adamx._tracing import is_abstract, is_concrete, is_staged
from adamx._tree import init_leaves, map_leaves
from adamx._validation import Rule, caller_name, check
from adamx.storage import Storage

LeafUpdate = Callable[..., tuple[jax.Array, ...]]


class Hyperparameter(NamedTuple):
    r"""A variant's hyperparameter, declared with the rule it must satisfy.

    Attributes:
      value: a number, an array, a tracer (``optax.inject_hyperparams``) or a
        schedule, a function of the 0-based step as optax schedules are.
      rule: checked when the transform is built (``adamx._validation``). A
        decay rate's rule (``DECAY``) also makes it reach the leaf maths as
        :class:`adamx.numerics.Decay`, with :math:`1 - \beta` formed before
        rounding.
    """

    value: Any
    rule: Rule


def moment_transform(
    caller: str,
    state_type: type[NamedTuple],
    storages: Sequence[Storage],
    hyperparameters: Mapping[str, Hyperparameter],
    leaf_update: LeafUpdate | None = None,
    *,
    moments: LeafUpdate | None = None,
    direction: LeafUpdate | None = None,
    initial_values: Sequence[Any] | None = None,
    signal: LeafUpdate | None,
    monotone: bool = False,
) -> optax.GradientTransformation:
    r"""Builds a transformation whose state is ``state_type(count, *moments)``.

    Args:
      caller: the public name, quoted in errors.
      state_type: a NamedTuple whose first field is ``count`` and whose other
        fields are the moments, in the order of ``storages``.
      storages: how each moment is stored.
      hyperparameters: name to :class:`Hyperparameter`, each checked against
        its declared rule here, quoting ``caller``. Each reaches the leaf maths
        evaluated (a schedule at the step) and cast to the leaf's compute
        dtype; the decay rates as :class:`adamx.numerics.Decay`.
      leaf_update: ``leaf_update(g, *moments, count=t, **hyperparameters) ->
        (update, *new_moments)``, all in the compute dtype; ``t`` is the
        1-based step. For a variant whose update depends on more than the
        gradient and the new moments (ADOPT normalizes by the old one).
      moments: ``moments(g, *moments, count=t, **hyperparameters) ->
        new_moments``; with ``direction``, in place of ``leaf_update``.
      direction: ``direction(g, *new_moments, count=t, **hyperparameters) ->
        update``. Declaring the two apart lets a storage that takes the step
        from its stored (rounded) moments, :class:`adamx.Rounded`, have the
        update recomputed from them.
      initial_values: the scalar each moment starts from, in the order of
        ``storages`` (a number, array or tracer); None starts every moment at
        zero.
      signal: ``signal(*new_moments, count=t, **hyperparameters)``, the
        element-wise signal-to-noise ratio :math:`|\hat m|/\sqrt{\hat v}` of
        the new moments, for :func:`adamx.with_stats`; it is evaluated only on
        the steps that record statistics. Every variant declares it: None only
        for a transform without moments.
      monotone: the variant declares that each new moment, in magnitude, is
        at most ``moments`` applied to :math:`|g|` and the old moments'
        magnitudes (true of moving averages of :math:`g` and :math:`|g|^2`
        and of running maxima). Low-bit storage then sizes each block from
        that bound, evaluated on per-block maxima read cheaply from the stored
        codes and the gradient, instead of a pass over the new values.

    Returns:
      The ``optax.GradientTransformation``.
    """
    caller = caller_name(caller)
    for name, declared in hyperparameters.items():
        check(caller, declared.rule, **{name: declared.value})
    if (leaf_update is None) == (moments is None or direction is None):
        raise TypeError("moment_transform takes leaf_update, or moments and direction")
    if leaf_update is None:

        def leaf_update(g, *old, **kwargs):
            new = moments(g, *old, **kwargs)
            return (direction(g, *new, **kwargs), *new)

    from_stored = [s.step_from_stored for s in storages]
    if any(from_stored) and direction is None:
        raise ValueError(
            f"{caller}: adamx.Rounded storage takes the step from the stored "
            f"moments, and {caller}'s step depends on more than its new moments; "
            "use a plain dtype"
        )

    def init_fn(params: optax.Params) -> Any:
        if any(is_abstract(p) for p in jax.tree.leaves(params)):
            return abstract_init(init_fn, params)
        starts = (0.0,) * len(storages) if initial_values is None else initial_values
        moments = [
            init_leaves(caller, lambda p, s=storage, v=start: s.init(p, v), params)
            for storage, start in zip(storages, starts, strict=True)
        ]
        return state_type(jnp.zeros([], jnp.int32), *moments)

    def leaf_step(g, stored, count, traced, leaf, *, fixed):
        dtype = numerics.compute_dtype(g.dtype)
        moments = [
            s.read(x, g.shape, count) for s, x in zip(storages, stored, strict=True)
        ]
        update, *new = leaf_update(
            g.astype(dtype), *moments, count=count, **fixed, **traced
        )
        bounds = block_bounds(g, stored, count, {**fixed, **traced})
        written = [
            s.write(n, x, count=count, leaf=leaf, slot=slot, bound=bound)
            for slot, (s, n, x, bound) in enumerate(
                zip(storages, new, stored, bounds, strict=True)
            )
        ]
        if any(from_stored):
            new = [
                s.read(w, g.shape) if s.step_from_stored else n
                for s, w, n in zip(storages, written, new, strict=True)
            ]
            update = direction(g.astype(dtype), *new, count=count, **fixed, **traced)
        return update.astype(g.dtype), written

    def block_bounds(g, stored, count, hyper):
        """Per-block bounds of the new moments' magnitudes, where they are cheap.

        For a ``monotone`` variant whose coded moments share one block size:
        ``moments`` applied to each block's max |g| and old max |moment|.
        None elsewhere: the storage then takes the exact maximum.
        """
        none = [None] * len(storages)
        coded = [s for s in storages if s.coded(g.shape)]
        sizes = {s.block_size for s in coded}
        if not (monotone and moments) or len(sizes) != 1 or jnp.iscomplexobj(g):
            return none
        (size,) = sizes
        largest = [
            s.block_abs_max(x, g.shape, size)
            for s, x in zip(storages, stored, strict=True)
        ]
        g_max = quantization.blocked_abs_max(g, size).astype(largest[0].dtype)
        bounds = moments(g_max, *largest, count=count, **hyper)
        return [
            b if s.coded(g.shape) else None
            for s, b in zip(storages, bounds, strict=True)
        ]

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        values = {
            name: value(state.count) if callable(value) else value
            for name, (value, _) in hyperparameters.items()
        }
        steps: dict[Any, tuple[Callable[..., Any], Callable[..., Any], dict, dict]] = {}

        def steps_for(dtype):
            """The leaf step for one compute dtype, and its traced arguments.

            Hyperparameters are cast once per dtype, not once per leaf. Those
            known while tracing are fixed into the step, where numerics can
            fold them; only traced ones (schedules, injected values) are
            passed. Under jit the step is itself jitted, so a model with many
            leaves of a few shapes traces it once per shape rather than once
            per leaf; eagerly it runs as it is (a jit per call would recompile
            on every step).
            """
            if dtype not in steps:
                cast = {
                    k: (
                        numerics.as_decay
                        if hyperparameters[k].rule.is_decay
                        else numerics.hyperparameter
                    )(v, dtype)
                    for k, v in values.items()
                }
                fixed = {k: v for k, v in cast.items() if is_concrete(v)}
                traced = {k: v for k, v in cast.items() if k not in fixed}
                plain = functools.partial(leaf_step, fixed=fixed)
                steps[dtype] = (plain, jax.jit(plain), traced, cast)
            return steps[dtype]

        def leaf(index, path, g, *stored):
            for storage, x in zip(storages, stored, strict=True):
                problem = storage.mismatch(x, g.shape)
                if problem is not None:
                    raise ValueError(
                        f"{caller}: the state leaf for update {path} {problem}"
                    )
            plain, jitted, traced, _ = steps_for(numerics.compute_dtype(g.dtype))
            step = jitted if is_staged(g) else plain
            leaf_index = jnp.asarray(index, jnp.uint32)  # traced: one trace per shape
            update, written = step(g, stored, count, traced, leaf_index)
            signal_inputs.append((g.dtype, g.shape, written))
            return (update, *written)

        signal_inputs: list[tuple[Any, tuple[int, ...], list[Any]]] = []
        updates, *moments = map_leaves(caller, leaf, updates, tuple(state)[1:])
        if signal is not None:
            report_signal(functools.partial(summarize, signal_inputs, count, steps_for))
        return updates, state_type(count, *moments)

    def summarize(signal_inputs, count, steps_for) -> SignalSummary:
        total = jnp.zeros([], jnp.float32)
        largest = jnp.zeros([], jnp.float32)
        size = 0
        for grad_dtype, shape, written in signal_inputs:
            dtype = numerics.compute_dtype(grad_dtype)
            cast = steps_for(dtype)[3]
            moments = [s.read(x, shape) for s, x in zip(storages, written, strict=True)]
            ratio = signal(
                *(m.astype(numerics.compute_dtype(m.dtype)) for m in moments),
                count=count,
                **cast,
            ).astype(jnp.float32)
            # Leaf after leaf, so that only one leaf's ratio is in memory.
            leaf_total, leaf_largest = sum_and_max(ratio, after=total)
            total = total + leaf_total
            largest = jnp.maximum(largest, leaf_largest)
            size += ratio.size
        return SignalSummary(total, largest, size)

    return optax.GradientTransformation(init_fn, update_fn)


def adam_moments(
    g: jax.Array, m: jax.Array, v: jax.Array, *, b1: Any, b2: Any, **_: Any
) -> tuple[jax.Array, jax.Array]:
    r"""Adam's moments: moving averages of :math:`g` and of :math:`|g|^2`."""
    return (
        numerics.update_moment(m, g, b1),
        numerics.update_moment(v, numerics.abs_sq(g), b2),
    )


def debiased_direction(
    g: jax.Array,
    m: jax.Array,
    v: jax.Array,
    *,
    count: jax.Array,
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    **_: Any,
) -> jax.Array:
    r"""Adam's step :math:`\hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon)`.

    The moments are debiased by ``b1`` and ``b2`` at step ``count``.
    """
    return numerics.scaled_direction(
        numerics.bias_correction(m, b1, count),
        numerics.bias_correction(v, b2, count),
        eps,
        eps_root,
    )


def debiased_signal(
    m: jax.Array, v: jax.Array, *, count: jax.Array, b1: Any, b2: Any, **_: Any
) -> jax.Array:
    """``signal`` from a first and a second moment debiased by b1 and b2."""
    return numerics.signal_to_noise(
        numerics.bias_correction(m, b1, count), numerics.bias_correction(v, b2, count)
    )


def abstract_init(init_fn: Callable[[Any], Any], params: Any) -> Any:
    """``init_fn(params)`` for ``jax.ShapeDtypeStruct`` leaves, without running it.

    The state comes back as ``ShapeDtypeStruct`` leaves, as ``jax.eval_shape``
    gives them, each with the sharding that :func:`adamx.state_shardings`
    computes from the parameters' own: memory and shardings can be planned
    before a parameter exists.
    """
    from adamx.sharding import abstract_state  # sharding builds on transforms

    return abstract_state(optax.GradientTransformation(init_fn, None), params)
