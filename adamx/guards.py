r"""Guards: wrappers that keep bad steps out of any optimizer's state.

A single step with a NaN, an infinity or a huge outlier in its gradient can
ruin a run for good: Adam's moments remember it for hundreds of steps, and a
NaN in a moment never leaves. The wrappers here sit around any
``optax.GradientTransformation`` — an adamx optimizer, an optax one, a chain —
and decide, step by step and under ``jax.jit``, whether the step may reach
it:

- :func:`nonfinite_policy` skips steps whose gradients hold NaN or
  :math:`\pm\infty` entries, or zeroes those entries, and counts them;
- :func:`skip_spikes` skips steps whose update norm jumps far above its
  running average.

A skipped step returns zero updates and hands back the inner state
unchanged, bit for bit, so parameters and moments are exactly those of a run
that never saw the step. Both keep their counters in their state, as int32
scalars that saturate instead of wrapping, so a training loop can read them,
log them and stop itself.

The two compose either way. Put :func:`nonfinite_policy` outermost,
``nonfinite_policy(skip_spikes(adamx.adam(1e-3)))``, so that a non-finite
step never reaches :func:`skip_spikes` at all; the other way round,
:func:`skip_spikes` sees the zero update of a skipped non-finite step as an
accepted step of norm 0, which lowers its average.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx import numerics
from adamx._tree import count_nonfinite, global_norm
from adamx._validation import (
    ABOVE_ONE,
    OPEN_UNIT,
    caller_name,
    check_choice,
    check_int,
    check_number,
)

__all__ = [
    "NonfiniteState",
    "SpikeState",
    "nonfinite_policy",
    "skip_spikes",
]


class NonfiniteState(NamedTuple):
    r"""State of :func:`nonfinite_policy`.

    Attributes:
      inner_state: the wrapped transformation's state; untouched on skipped
        steps.
      nonfinite: int32 scalar, the number of non-finite entries (NaN,
        :math:`\pm\infty`; for complex entries, either part) in the last
        step's incoming updates, saturating at the int32 maximum.
      skipped: int32 scalar, the number of steps skipped so far, saturating
        (always 0 under ``policy="zero"``, which skips nothing).
      consecutive: int32 scalar, the number of consecutive steps, up to and
        including the last one, whose updates held a non-finite entry (0
        after a finite step), saturating.
    """

    inner_state: optax.OptState
    nonfinite: jax.Array
    skipped: jax.Array
    consecutive: jax.Array


class SpikeState(NamedTuple):
    """State of :func:`skip_spikes`.

    Attributes:
      inner_state: the wrapped transformation's state; untouched on skipped
        steps.
      norm_average: float32 scalar, :math:`a_k`, the bias-corrected moving
        average of the accepted update norms (0 before the first).
      accepted: int32 scalar, :math:`k`, the number of steps accepted so far,
        saturating at the int32 maximum.
      skipped: int32 scalar, the number of steps skipped so far, saturating.
      last_norm: float32 scalar, :math:`n_t`, the global L2 norm of the last
        step's candidate update, whether it was accepted or not.
    """

    inner_state: optax.OptState
    norm_average: jax.Array
    accepted: jax.Array
    skipped: jax.Array
    last_norm: jax.Array


def _check_state_unchanged_in_type(caller: str, old: Any, new: Any) -> None:
    """Raises TypeError unless ``new`` has ``old``'s structure, shapes and dtypes.

    A skipped step hands back the old inner state in place of the new one,
    so both must be interchangeable.
    """
    old_paths = jax.tree_util.tree_leaves_with_path(old)
    old_def = jax.tree.structure(old)
    new_def = jax.tree.structure(new)
    if old_def != new_def:
        raise TypeError(
            f"{caller}: the inner transformation's update changed its state's "
            f"structure from {old_def} to {new_def}; a skipped step must be able "
            "to keep the old state"
        )
    for (path, o), n in zip(old_paths, jax.tree.leaves(new), strict=True):
        o_type = (jnp.shape(o), jnp.result_type(o))
        n_type = (jnp.shape(n), jnp.result_type(n))
        if o_type != n_type:
            raise TypeError(
                f"{caller}: the inner transformation's update changed state leaf "
                f"{jax.tree_util.keystr(path) or '<root>'} from shape {o_type[0]} "
                f"{o_type[1]} to {n_type[0]} {n_type[1]}; a skipped step must be "
                "able to keep the old state"
            )


def _count_if(flag: jax.Array, counter: jax.Array) -> jax.Array:
    """``counter`` plus one where ``flag`` holds, saturating."""
    return jnp.where(flag, optax.safe_increment(counter), counter)


def _guarded_step(caller, run, updates, state, take, ran=None):
    """Both guards' step: ``run(updates)``, the inner update, if ``take`` holds.

    Otherwise the step is skipped: zero updates (in the inner updates' dtypes),
    ``state.inner_state`` handed back bit for bit and ``state.skipped`` counted.
    With ``ran``, ``run(updates)`` already computed to decide ``take``, the two
    are selected between; without, ``run`` runs under ``jax.lax.cond``, only on
    a taken step. Returns the updates, the inner state and the skipped count.
    """
    old = state.inner_state
    if ran is None:
        shapes = jax.eval_shape(run, updates)
        _check_state_unchanged_in_type(caller, old, shapes[1])

        def skip(g):
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[0]), old

        new_updates, new_state = jax.lax.cond(take, run, skip, updates)
    else:
        _check_state_unchanged_in_type(caller, old, ran[1])
        new_updates = jax.tree.map(
            lambda u: jnp.where(take, u, jnp.zeros_like(u)), ran[0]
        )
        new_state = jax.tree.map(lambda n, o: jnp.where(take, n, o), ran[1], old)
    return new_updates, new_state, _count_if(~take, state.skipped)


def nonfinite_policy(
    inner: optax.GradientTransformation,
    policy: Literal["skip", "zero"] = "skip",
    max_consecutive: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Keeps NaN and :math:`\pm\infty` gradients out of ``inner``'s state.

    Each step counts the non-finite entries of the incoming updates
    :math:`g_t` (NaN, :math:`+\infty`, :math:`-\infty`; a complex entry
    counts once if either part is non-finite):

    .. math::

        c_t = \#\{\, i : g_{t,i} \notin \mathbb{R} \,\}

    and, when :math:`c_t > 0`, applies ``policy``:

    - ``"skip"``: the step is skipped. The updates are zeros (in the dtypes
      ``inner`` would have returned) and ``inner``'s state is handed back
      unchanged, bit for bit: :math:`(u_t, s_t) = (0, s_{t-1})`. The inner
      update runs under ``jax.lax.cond`` and is not run at all on a skipped
      step, so nothing non-finite ever reaches it, and its step count does
      not advance.
    - ``"zero"``: the non-finite entries are replaced by 0 and the step runs:
      :math:`(u_t, s_t) = \mathrm{inner}(\tilde g_t, s_{t-1})` with
      :math:`\tilde g_{t,i} = g_{t,i}` if finite, else 0. The moments then
      decay a little on those entries, as for a zero gradient.

    ``max_consecutive`` chooses what happens when non-finite steps persist.
    With None (the default, recommended) the guard never gives up: a run
    whose gradients stay non-finite stops moving, and its counters say so —
    a training loop should read ``state.consecutive`` and stop itself. With
    an int :math:`N`, after :math:`N` consecutive steps with non-finite
    entries the guard stands aside and the next ones reach ``inner``
    unchanged, as ``optax.apply_if_finite(inner, N)`` does: the failure then
    shows in the parameters and the loss instead of being held back. A
    finite step re-arms it.

    With ``optax.MultiSteps``, put the guard outside:
    ``nonfinite_policy(optax.MultiSteps(opt, k).gradient_transformation())``
    drops a non-finite micro-batch before it is accumulated. Inside, it sees
    the accumulated step and guards it, but MultiSteps resets its accumulator
    by multiplying it by 0, which keeps a NaN, so every later accumulated step
    is non-finite too.

    Compared with ``optax.apply_if_finite`` (which this generalizes) and
    ``optax.zero_nans`` (which zeroes NaNs only, not infinities): entries are
    counted, not just detected; complex leaves are handled; the default
    never lets a non-finite step through; the skipped updates take the
    dtypes of ``inner``'s updates; extra arguments reach ``inner``.

    Args:
      inner: the transformation to guard, e.g. ``adamx.adam(1e-3)``. Its
        state must keep its structure, shapes and dtypes from step to step
        (every optax and adamx transformation does), because a skipped step
        hands the old one back.
      policy: ``"skip"`` or ``"zero"``, as above.
      max_consecutive: None to guard forever, or an int :math:`N \ge 0`: the
        number of consecutive non-finite steps guarded before the guard
        gives up (0 never guards, and only counts).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      :class:`NonfiniteState`. ``update`` passes ``params`` and extra
      arguments on to ``inner``.

    Raises:
      ValueError: at construction, for an unknown ``policy`` or a
        ``max_consecutive`` that is not None or an int >= 0, quoting the call.
      TypeError: at ``update``, if ``inner`` changes its state's structure or
        dtypes, naming the leaf.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> from adamx.guards import nonfinite_policy
      >>> tx = nonfinite_policy(adamx.adam(0.1))
      >>> params = jnp.array([1.0, 2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([jnp.nan, 1.0]), state, params)
      >>> updates, state.nonfinite, state.skipped
      (Array([0., 0.], dtype=float32), Array(1, dtype=int32), Array(1, dtype=int32))
      >>> updates, state = tx.update(jnp.array([1.0, -1.0]), state, params)
      >>> updates, state.consecutive
      (Array([-0.1,  0.1], dtype=float32), Array(0, dtype=int32))

    References:
      ``optax.apply_if_finite`` and ``optax.zero_nans``, the transformations
      this one generalizes. https://optax.readthedocs.io
    """
    caller = caller_name("nonfinite_policy")
    check_choice(caller, "policy", policy, ("skip", "zero"))
    check_int(caller, "max_consecutive", max_consecutive, 0, or_none=True, numpy=True)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        zero = jnp.zeros([], jnp.int32)
        return NonfiniteState(inner.init(params), zero, zero, zero)

    def update_fn(updates, state, params=None, **extra_args):
        nonfinite = count_nonfinite(updates)
        bad = nonfinite > 0
        consecutive = jnp.where(
            bad, optax.safe_increment(state.consecutive), jnp.zeros([], jnp.int32)
        )
        guarding = (
            jnp.ones([], bool)
            if max_consecutive is None
            else consecutive <= max_consecutive
        )

        def run(g):
            return inner.update(g, state.inner_state, params, **extra_args)

        if policy == "zero":

            def repair(g):
                if not jnp.issubdtype(jnp.result_type(g), jnp.inexact):
                    return g
                return jnp.where(guarding & ~jnp.isfinite(g), jnp.zeros_like(g), g)

            new_updates, new_inner = run(jax.tree.map(repair, updates))
            skipped = state.skipped
        else:
            new_updates, new_inner, skipped = _guarded_step(
                caller, run, updates, state, ~(bad & guarding)
            )
        return new_updates, NonfiniteState(new_inner, nonfinite, skipped, consecutive)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def skip_spikes(
    inner: optax.GradientTransformation,
    factor: float = 6.0,
    decay: float = 0.99,
    warmup: int = 100,
    *,
    norm_of: Literal["updates", "gradients"] = "updates",
) -> optax.GradientTransformationExtraArgs:
    r"""Skips steps whose update norm jumps above ``factor`` times its running average.

    Each step runs ``inner`` to get its candidate update :math:`u_t` and
    takes the global L2 norm over all leaves, in float32 and scaled so that
    it cannot overflow:

    .. math:: n_t = \lVert u_t \rVert_2

    (with ``norm_of="gradients"``, :math:`n_t = \lVert g_t \rVert_2` of the
    incoming updates instead). With :math:`k` steps accepted so far and
    :math:`a_k` the average of their norms, the step is accepted when

    .. math::

        n_t \text{ is finite} \quad\text{and}\quad
        \bigl(k < \max(w, 1) \;\text{ or }\; n_t \le f\, a_k\bigr)

    with :math:`f` = ``factor`` and :math:`w` = ``warmup``. An accepted step
    returns :math:`u_t` and ``inner``'s new state, and enters the average:

    .. math::

        k \leftarrow k + 1, \qquad
        a_k = a_{k-1} + \frac{1 - \beta}{1 - \beta^k}\,(n_t - a_{k-1})

    with :math:`\beta` = ``decay``. This is exactly the bias-corrected
    exponential moving average :math:`a_k = \tilde a_k / (1 - \beta^k)`,
    :math:`\tilde a_k = \beta \tilde a_{k-1} + (1 - \beta) n_t`,
    :math:`\tilde a_0 = 0`, as Adam debiases its moments: the weights of the
    norms seen so far sum to 1 from the first step on (:math:`a_1 = n_1`),
    and the first norm weighs no more than the others. Starting the average
    at :math:`n_1` instead would let the first step — Adam's is
    :math:`\alpha\,\mathrm{sign}(g_1)`, often the largest — weigh
    :math:`\beta^{k-1}` (0.37 after 100 steps at :math:`\beta = 0.99`). A
    skipped step returns zero updates, hands back ``inner``'s state
    unchanged (bit for bit) and leaves :math:`a` and :math:`k` alone, so a
    spike never raises the threshold it is compared with.

    The first :math:`w` accepted steps are always accepted (at least one,
    since there is no average before it) unless non-finite: a non-finite norm
    is skipped even during warmup.

    **Which norm.** Skipping steps on a spike of the loss or the gradient
    norm against its recent history is established practice in large-model
    training: MaxText has a ``skip_step_on_spikes`` option and OLMo-core a
    skip-step optimizer, both comparing each step with a rolling window's
    mean and standard deviation. This transform uses a cheaper rule, a ratio
    to a moving average held in two scalars, and by default watches the
    *update*, which is what reaches the weights; ``inner`` then runs on every
    step, skipped or not, since the decision needs its update. Normalizing
    optimizers bound their update, though, so a gradient spike shows in it
    only in part: Adam's update is at most :math:`(1 - \beta_1)/\sqrt{1 -
    \beta_2} \approx 3.16` per entry times the learning rate, and early in
    training, while :math:`1 - \beta_2^t` is small, a spike's update is
    hardly larger than a usual one; LAMB's update norm is the parameters'
    norm whatever the gradient. To catch gradient spikes with such
    optimizers, pass ``norm_of="gradients"``: the norm is then that of the
    incoming gradients, and ``inner`` runs (under ``jax.lax.cond``) only on
    accepted steps.

    If the measured scale legitimately grows by more than ``factor`` within
    the averaging window (about :math:`1/(1-\beta)` steps), for example
    through a learning-rate warmup longer than ``warmup``, every later step
    is skipped: watch ``state.skipped``.

    Args:
      inner: the transformation to guard, e.g. ``adamx.adam(1e-3)``. Its
        state must keep its structure, shapes and dtypes from step to step.
      factor: :math:`f > 1`, how many times the average norm a step may reach.
      decay: :math:`\beta \in (0, 1)`, the decay of the norm's moving average.
      warmup: :math:`w \ge 0`, the number of first accepted steps never
        skipped for their size, while the average settles.
      norm_of: ``"updates"`` (the default) to measure ``inner``'s update,
        ``"gradients"`` to measure the incoming updates.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      :class:`SpikeState`. ``update`` passes ``params`` and extra arguments on
      to ``inner``.

    Raises:
      ValueError: at construction, for ``factor <= 1``, ``decay`` outside
        (0, 1), ``warmup`` not an int >= 0 or an unknown ``norm_of``,
        quoting the call.
      TypeError: at ``update``, if ``inner`` changes its state's structure or
        dtypes, naming the leaf.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from adamx.guards import skip_spikes
      >>> tx = skip_spikes(optax.sgd(0.1), factor=6.0, warmup=2)
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for g in ([3.0, 4.0], [4.0, 3.0], [300.0, 400.0]):
      ...     updates, state = tx.update(jnp.array(g), state, params)
      >>> updates, state.accepted, state.skipped, state.norm_average
      (Array([0., 0.], dtype=float32), Array(2, dtype=int32), Array(1, dtype=int32),
       Array(0.5, dtype=float32))

    References:
      MaxText, ``skip_step_on_spikes`` (AI-Hypercomputer/maxtext,
      ``optimizers.py``). https://github.com/AI-Hypercomputer/maxtext

      OLMo-core, ``SkipStepOptimizer``; Team OLMo, *2 OLMo 2 Furious*, 2025.
      https://github.com/allenai/OLMo-core, https://arxiv.org/abs/2501.00656

      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015
      (the bias correction of a zero-started average).
      https://arxiv.org/abs/1412.6980
    """
    caller = caller_name("skip_spikes")
    check_number(caller, ABOVE_ONE, factor=factor)
    check_number(caller, OPEN_UNIT, decay=decay)
    check_int(caller, "warmup", warmup, 0, numpy=True)
    check_choice(caller, "norm_of", norm_of, ("updates", "gradients"))
    inner = optax.with_extra_args_support(inner)
    # The first step is measured against nothing, so it is always accepted.
    always_accepted = max(int(warmup), 1)

    def init_fn(params):
        zero = jnp.zeros([], jnp.int32)
        zero_norm = jnp.zeros([], jnp.float32)
        return SpikeState(inner.init(params), zero_norm, zero, zero, zero_norm)

    def decide(norm, state):
        """Whether to accept, and the count and average that follow."""
        average = state.norm_average.astype(jnp.float32)
        limit = numerics.hyperparameter(factor, jnp.float32) * average
        in_warmup = state.accepted < always_accepted
        accept = jnp.isfinite(norm) & (in_warmup | (norm <= limit))
        accepted = _count_if(accept, state.accepted)
        beta = numerics.as_decay(decay, jnp.float32)
        # At k = 0 (nothing accepted yet) the weight is unused; keep it finite.
        total = numerics.bias_correction_factor(beta, jnp.maximum(accepted, 1))
        weight = beta.complement / total
        norm_average = jnp.where(accept, average + weight * (norm - average), average)
        return accept, norm_average, accepted

    def update_fn(updates, state, params=None, **extra_args):
        def run(g):
            return inner.update(g, state.inner_state, params, **extra_args)

        # By the gradients, the step is decided before inner runs; by the
        # updates, inner runs first and its candidate update is measured.
        ran = None if norm_of == "gradients" else run(updates)
        norm = global_norm(updates if ran is None else ran[0])
        accept, norm_average, accepted = decide(norm, state)
        out, kept, skipped = _guarded_step(caller, run, updates, state, accept, ran)
        return out, SpikeState(kept, norm_average, accepted, skipped, norm)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
