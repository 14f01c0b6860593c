r"""Diagnostics a training loop can log, carried in the optimizer state.

:func:`with_stats` wraps any transformation and records, every ``every``
steps, the quantities that tell whether Adam is healthy: the global norms of
the gradient and of the update, the signal-to-noise ratio
:math:`|\hat m|/\sqrt{\hat v}` that Kingma & Ba (2015, Section 2.1) read into
the update, the size of the per-parameter steps and the number of non-finite
gradient entries. Everything is computed on the device inside the update; a
loop reads the arrays (one host transfer) only when it logs.

The signal-to-noise ratio comes from the adamx transform inside: while
:func:`with_stats` traces its inner update, every adamx ``scale_by_*`` it
reaches reports how to compute its ratio from its new moments (the plumbing
is in the private ``adamx._signals``). The computation itself runs only on
the steps that record statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx._reduce import norm_and_largest, one_after, times_one
from adamx._signals import collecting, trace_state
from adamx._tree import count_nonfinite, floating_leaves
from adamx._validation import check_int, quoting

__all__ = ["Stats", "WithStatsState", "with_stats"]


class Stats(NamedTuple):
    r"""What :func:`with_stats` records. All float32 scalars but ``nonfinite``.

    Attributes:
      step: int32, the step these statistics describe (1-based; 0 before the
        first update).
      grad_norm: :math:`\lVert g_t \rVert_2` over the whole tree.
      update_norm: :math:`\lVert u_t \rVert_2` of the update returned.
      snr_mean: the mean over all parameters of :math:`|\hat m_t| /
        \sqrt{\hat v_t}` (0 where :math:`\hat v_t = 0`).
      snr_max: its maximum.
      step_rms: the root mean square of :math:`u_t`, the effective
        per-parameter step (with the learning rate when the wrapped
        transformation includes it).
      step_max: the largest :math:`|u_{t,i}|`.
      nonfinite: int32, the number of NaN or infinite gradient entries (a
        complex entry counts once).
    """

    step: jax.Array
    grad_norm: jax.Array
    update_norm: jax.Array
    snr_mean: jax.Array
    snr_max: jax.Array
    step_rms: jax.Array
    step_max: jax.Array
    nonfinite: jax.Array


class WithStatsState(NamedTuple):
    """State of :func:`with_stats`: the inner state, the statistics, a step count."""

    inner: Any
    stats: Stats
    count: jax.Array


def with_stats(
    inner: optax.GradientTransformation, *, every: int = 1, snr: bool = True
) -> optax.GradientTransformationExtraArgs:
    r"""Records gradient, update and signal-to-noise statistics in the state.

    On step :math:`t` (1-based), when :math:`t - 1` is a multiple of
    ``every``, the state's :class:`Stats` are set to

    .. math::

        \lVert g_t \rVert_2, \quad \lVert u_t \rVert_2, \quad
        \operatorname{mean}_i \frac{|\hat m_{t,i}|}{\sqrt{\hat v_{t,i}}}, \quad
        \max_i \frac{|\hat m_{t,i}|}{\sqrt{\hat v_{t,i}}}, \quad
        \sqrt{\operatorname{mean}_i u_{t,i}^2}, \quad \max_i |u_{t,i}|, \quad
        \#\{i : g_{t,i} \notin \mathbb{R}\}

    with :math:`g_t` the incoming gradient, :math:`u_t` the update ``inner``
    returns and :math:`\hat m, \hat v` the bias-corrected moments of the adamx
    transform inside ``inner``. On other steps they keep their last values
    (``Stats.step`` says which step they describe). Seed 004's reading of
    :math:`\hat m/\sqrt{\hat v}` as a signal-to-noise ratio makes the ratio fall
    towards 0 as training nears an optimum, where gradients are mostly noise.

    Norms are computed in float32 or wider, rescaled by the largest magnitude
    where the plain sum of squares over- or underflows, so that gradients up
    to the float32 maximum count. Under ``jax.jit`` nothing syncs with the
    host: read ``state.stats`` (after ``jax.device_get``) in the training loop
    every ``every`` steps, for example

    >>> import jax.numpy as jnp, optax, adamx
    >>> opt = adamx.with_stats(adamx.adam(0.1), every=10)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(2 * params, state, params)
    >>> print(f"{float(state.stats.grad_norm):.4f} {float(state.stats.snr_mean):.1f}")
    4.4721 1.0

    For the ratio the wrapped transformation must contain an adamx
    ``scale_by_*`` (any adamx optimizer does) and be reached without a
    ``jax.lax.cond`` in between: place ``with_stats`` inside wrappers that
    branch, such as ``optax.MultiSteps`` or :func:`adamx.nonfinite_policy`.
    With several adamx transforms inside, the ratio covers all their moments.

    Args:
      inner: the transformation to observe.
      every: record on steps 1, 1 + every, 1 + 2 every, ...; a positive int.
        Under ``jax.jit`` recording is a ``lax.cond`` whose branch runs
        ``inner.update`` a second time, from the same inputs, and reduces
        the update, gradient and moments; the step itself is ordered after
        the branch, so a donated state is still updated in place. A step
        that does not record so writes no extra buffer and adds only scalar
        work: 1.03x a plain Adam step, measured with 10M parameters in 100
        leaves on a 2-core CPU (``examples/diagnostics.py``). A recording
        step computes the update twice and writes each leaf of it out to
        reduce it: about 2.5x a plain step there. Every reduction (update,
        gradient, the signal-to-noise ratio of the moments) runs leaf after
        leaf, so the temporaries are about the largest leaf (0.17 bytes per
        parameter in that measurement). A side effect inside ``inner`` (a
        callback) runs twice on recording steps.
        Called eagerly, the step count is read (an explicit transfer) to
        decide in Python, and nothing is recompiled from step to step.
      snr: record the signal-to-noise ratio (needs an adamx transform inside);
        False sets its fields to 0.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`WithStatsState`.

    Raises:
      ValueError: for ``every`` < 1, and at the first update when ``snr`` is
        True and ``inner`` holds no adamx transform.

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015,
      Section 2.1. https://arxiv.org/abs/1412.6980
    """
    caller = f"with_stats(every={every!r}, snr={snr!r})"
    check_int("with_stats", "every", every, 1)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        # Distinct arrays, not one shared zero: a donated state may not hold
        # the same buffer twice.
        stats = Stats(
            jnp.zeros([], jnp.int32),
            *(jnp.zeros([], jnp.float32) for _ in range(6)),
            jnp.zeros([], jnp.int32),
        )
        return WithStatsState(inner.init(params), stats, jnp.zeros([], jnp.int32))

    def observed(updates, inner_state, params, extra_args):
        """``inner.update``, with the signal summaries of the moments it reached."""
        with quoting(caller), collecting() as signals:
            new_updates, new_state = inner.update(
                updates, inner_state, params, **extra_args
            )
        if snr and not signals:
            raise ValueError(
                f"{caller}: the wrapped transformation reported no adamx moments, so "
                "there is no signal-to-noise ratio; wrap an adamx optimizer (not "
                "through a wrapper that uses jax.lax.cond) or pass snr=False"
            )
        if snr and any(trace != trace_state() for trace, _ in signals):
            raise ValueError(
                f"{caller}: the adamx transform inside was reached through a "
                "jax.lax.cond or another trace (optax.MultiSteps, "
                "adamx.nonfinite_policy, ...); put with_stats inside that wrapper"
            )
        return new_updates, new_state, [summary for _, summary in signals if snr]

    def update_fn(updates, state, params=None, **extra_args):
        count = optax.safe_increment(state.count)
        if not isinstance(state.count, jax.core.Tracer):
            return eager(updates, state, params, extra_args, count)
        records = state.count % every == 0

        def record(_):
            new_updates, _, summaries = observed(
                updates, state.inner, params, extra_args
            )
            grad_stats = _grad_stats(updates)
            return _stats(
                count,
                grad_stats,
                _update_stats(new_updates, grad_stats[0]),
                _signal_stats(summaries),
            )

        stats = jax.lax.cond(records, record, lambda _: state.stats, None)
        # The branch reads the old state, which the step overwrites in place
        # when the state is donated, so XLA would keep a copy of it. Inputs
        # tied to the branch's outputs order the step after it instead: times
        # a 1 that XLA cannot fold (adamx._reduce.one_after), which leaves
        # every value as it is.
        one = one_after(jnp.minimum(stats.step, stats.nonfinite))
        tied = jax.tree.map(
            lambda x: times_one(one, x) if _is_float_array(x) else x,
            (updates, state.inner, params),
        )
        new_updates, inner_state = inner.update(*tied, **extra_args)
        return new_updates, WithStatsState(inner_state, stats, count)

    def eager(updates, state, params, extra_args, count):
        # The count is known: decide here (an explicit transfer, which a
        # transfer guard allows) and run no lax.cond, which would be traced
        # and compiled afresh on every call.
        if int(jax.device_get(state.count)) % every:
            new_updates, inner_state = inner.update(
                updates, state.inner, params, **extra_args
            )
            return new_updates, WithStatsState(inner_state, state.stats, count)
        new_updates, inner_state, summaries = observed(
            updates, state.inner, params, extra_args
        )
        grad_stats = _grad_stats(updates)
        stats = _stats(
            count,
            grad_stats,
            _update_stats(new_updates, grad_stats[0]),
            _signal_stats(summaries),
        )
        return new_updates, WithStatsState(inner_state, stats, count)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# Jitted at module level, so that eager steps reuse one program per tree
# structure; under a jit they are inlined.


@jax.jit
def _grad_stats(grads: Any) -> tuple[jax.Array, jax.Array]:
    """The gradients' norm and non-finite count: reductions of stored arrays.

    Behind an optimization barrier: otherwise XLA would merge the square of
    the gradient in the sum of squares with the one in the step's second
    moment, and write it out in full for both.
    """
    grads = jax.lax.optimization_barrier(grads)
    norm, _ = norm_and_largest(floating_leaves(grads), stored=True)
    # The count runs only when the norm is not finite: when an entry is not,
    # or (finding 0) when the norm overflows float32.
    return norm, count_nonfinite(grads, norm)


@jax.jit
def _update_stats(
    updates: Any, after: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The update's norm, RMS and largest magnitude, computed after ``after``.

    Leaf after leaf (:mod:`adamx._reduce`): the update is often computed just
    for them, and then only one leaf of it is in memory at a time.
    """
    norm, largest = norm_and_largest(floating_leaves(updates), after=after)
    size = sum(jnp.size(x) for x in jax.tree.leaves(updates))
    return norm, norm / max(size, 1) ** 0.5, largest


def _signal_stats(summaries: list[Callable[[], Any]]) -> tuple[jax.Array, jax.Array]:
    """Mean and maximum signal-to-noise ratio over every reporting transform."""
    signal = [summary() for summary in summaries]
    zero = jnp.zeros([], jnp.float32)
    total = sum((s.total for s in signal), zero)
    largest = jnp.max(jnp.stack([s.maximum for s in signal])) if signal else zero
    return total / max(sum(s.size for s in signal), 1), largest


def _stats(
    step: jax.Array,
    grad_stats: tuple[jax.Array, jax.Array],
    update_stats: tuple[jax.Array, jax.Array, jax.Array],
    signal_stats: tuple[jax.Array, jax.Array],
) -> Stats:
    grad_norm, nonfinite = grad_stats
    update_norm, step_rms, step_max = update_stats
    snr_mean, snr_max = signal_stats
    return Stats(
        step, grad_norm, update_norm, snr_mean, snr_max, step_rms, step_max, nonfinite
    )


def _is_float_array(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)
