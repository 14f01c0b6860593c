"""adamx.guards: non-finite and spiking steps never reach an optimizer's state.

Every behaviour is checked over a table of adamx optimizers (adam, adamw,
amsgrad, lamb, adopt, ademamix and 8-bit adam) and, where it applies, both
non-finite policies and both measured norms. Expected values come from runs
of the plain, unguarded optimizer fed the steps a guard should let through
(skipped steps left out, non-finite entries set to 0 by NumPy), from a
float64 NumPy recomputation of the spike rule, from ``optax.apply_if_finite``,
or from hand counts; never from the guards themselves.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import adamx
from adamx import _tree
from adamx.guards import nonfinite_policy, skip_spikes

INT32_MAX = 2**31 - 1

# "w" has 4096 entries, so 8-bit adam quantizes it; "b" stays float32.
PARAMS = {
    "w": jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32),
    "b": jnp.zeros((7,), jnp.float32),
}

OPTIMIZERS = {
    "adam": lambda: adamx.adam(1e-2),
    "adamw": lambda: adamx.adamw(1e-2, weight_decay=1e-2),
    "amsgrad": lambda: adamx.amsgrad(1e-2),
    "lamb": lambda: adamx.lamb(1e-2),
    "adopt": lambda: adamx.adopt(1e-2),
    "ademamix": lambda: adamx.ademamix(1e-2),
    "adam[int8]": lambda: adamx.adam(1e-2, mu_dtype="int8", nu_dtype="int8"),
}
POLICIES = ("skip", "zero")


# ----------------------------------------------------------------------------
# Helpers: jitted steps built once per transformation, bitwise comparisons.


@functools.cache
def plain(name: str) -> optax.GradientTransformation:
    return OPTIMIZERS[name]()


@functools.cache
def guarded(name: str, policy: str) -> optax.GradientTransformation:
    return nonfinite_policy(OPTIMIZERS[name](), policy)


@functools.cache
def spiky(name: str, norm_of: str) -> optax.GradientTransformation:
    return skip_spikes(
        OPTIMIZERS[name](), factor=6.0, decay=0.9, warmup=4, norm_of=norm_of
    )


@functools.cache
def jitted_update(tx: optax.GradientTransformation):
    return jax.jit(tx.update)


apply_updates = jax.jit(optax.apply_updates)


def step(tx, params, state, grads, *, jit=True):
    update = jitted_update(tx) if jit else tx.update
    updates, state = update(grads, state, params)
    return (
        (apply_updates if jit else optax.apply_updates)(params, updates),
        state,
        updates,
    )


def assert_bitwise(actual: Any, expected: Any) -> None:
    """Same structure, dtypes and bits (NaN payloads included)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape
        assert a.tobytes() == e.tobytes()


def assert_finite(tree: Any) -> None:
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            assert np.all(np.isfinite(np.asarray(leaf)))


def moments_of(state: Any) -> list[Any]:
    """The leaves of a (guarded) optimizer state, less ``SpikeState.last_norm``.

    ``last_norm`` records the last candidate's norm, NaN included.
    """
    return [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if "last_norm" not in jax.tree_util.keystr(path)
    ]


def assert_zero(tree: Any) -> None:
    for leaf in jax.tree.leaves(tree):
        assert not np.any(np.asarray(leaf))


def normal_grads(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Gradients of global norm ``scale``, as float32 NumPy arrays."""
    rng = np.random.default_rng(seed)
    g = {k: rng.normal(size=v.shape) for k, v in PARAMS.items()}
    norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
    return {k: (x * scale / norm).astype(np.float32) for k, x in g.items()}


def as_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


# Bad entries of a burst: (leaf, flat indices, values), per burst kind.
BURSTS = {
    "nan": [("w", [0, 5, 4095], [np.nan] * 3), ("b", [2], [np.nan])],
    "inf": [("w", [17, 18], [np.inf, -np.inf]), ("b", [0, 6], [-np.inf, np.inf])],
    "both": [("w", [40, 41, 42], [np.nan, np.inf, -np.inf])],
}


def with_bad_entries(grads, burst):
    bad = {k: v.copy() for k, v in grads.items()}
    for leaf, where, values in BURSTS[burst]:
        bad[leaf].reshape(-1)[where] = values
    return bad


def zeroed(grads):
    return {k: np.where(np.isfinite(v), v, 0).astype(v.dtype) for k, v in grads.items()}


# ----------------------------------------------------------------------------
# nonfinite_policy: a burst never reaches the moments.

# A burst of three consecutive bad steps: NaNs, then infinities, then both.
BURST_STEPS = {3: "nan", 4: "inf", 5: "both"}
BURST_SIZES = {"nan": 4, "inf": 4, "both": 3}  # bad entries, counted by hand
N_STEPS = 8


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_burst_never_reaches_the_state(name, policy):
    tx, ref_tx = guarded(name, policy), plain(name)
    params, state = PARAMS, tx.init(PARAMS)
    ref_params, ref_state = PARAMS, ref_tx.init(PARAMS)
    for t in range(N_STEPS):
        clean = normal_grads(t)
        fed = with_bad_entries(clean, BURST_STEPS[t]) if t in BURST_STEPS else clean
        before = state.inner_state
        params, state, updates = step(tx, params, state, as_jax(fed))
        assert int(state.nonfinite) == BURST_SIZES.get(BURST_STEPS.get(t), 0)
        if t in BURST_STEPS and policy == "skip":
            # Skipped: zero updates, the inner state handed back bit for bit.
            assert_zero(updates)
            assert_bitwise(state.inner_state, before)
        else:
            # The reference sees the clean steps, and the burst with its bad
            # entries set to 0 by NumPy.
            ref_params, ref_state, _ = step(
                ref_tx, ref_params, ref_state, as_jax(zeroed(fed))
            )
        assert_finite(state.inner_state)
        assert_finite(params)
        assert_bitwise(state.inner_state, ref_state)
        assert_bitwise(params, ref_params)


@pytest.mark.parametrize("policy", POLICIES)
def test_zero_policy_differs_from_skip_on_a_burst(policy):
    """The two policies really do different things: the zeroed step moves the params."""
    tx = guarded("adam", policy)
    state = tx.init(PARAMS)
    params, state, _ = step(
        tx, PARAMS, state, as_jax(with_bad_entries(normal_grads(1), "nan"))
    )
    moved = not np.array_equal(np.asarray(params["w"]), np.asarray(PARAMS["w"]))
    assert moved == (policy == "zero")


# ----------------------------------------------------------------------------
# nonfinite_policy: counters.


def _counting_grads():
    """Four steps with hand-counted non-finite entries: 4, 0, 5, 2 (and 0)."""
    g = normal_grads(7)
    first = with_bad_entries(g, "nan")  # 3 in w, 1 in b: 4
    third = {k: v.copy() for k, v in g.items()}
    third["w"][0, :5] = -np.inf  # 5
    fourth = {k: v.copy() for k, v in g.items()}
    fourth["w"][3, 3] = np.nan
    fourth["b"][6] = np.inf  # 2
    return [first, g, third, fourth, g]


NONFINITE_COUNTS = [4, 0, 5, 2, 0]
CONSECUTIVE = [1, 0, 1, 2, 0]

# Expected ``skipped`` after each step, per (policy, max_consecutive).
SKIPPED = {
    ("skip", None): [1, 1, 2, 3, 3],
    ("skip", 1): [1, 1, 2, 2, 2],  # step 4 is the second in a row: let through
    ("skip", 0): [0, 0, 0, 0, 0],
    ("zero", None): [0, 0, 0, 0, 0],
    ("zero", 1): [0, 0, 0, 0, 0],
}


@pytest.mark.parametrize(("policy", "max_consecutive"), sorted(SKIPPED, key=str))
def test_counters(policy, max_consecutive):
    tx = nonfinite_policy(adamx.adam(1e-2), policy, max_consecutive)
    params, state = PARAMS, tx.init(PARAMS)
    seen = []
    for grads in _counting_grads():
        params, state, _ = step(tx, params, state, as_jax(grads))
        for counter in (state.nonfinite, state.skipped, state.consecutive):
            assert counter.dtype == jnp.int32 and counter.shape == ()
        seen.append((int(state.nonfinite), int(state.skipped), int(state.consecutive)))
    expected = list(
        zip(
            NONFINITE_COUNTS, SKIPPED[policy, max_consecutive], CONSECUTIVE, strict=True
        )
    )
    assert seen == expected
    # The inner Adam counted exactly the steps that were not skipped.
    assert int(state.inner_state[0].count) == 5 - expected[-1][1]


@pytest.mark.parametrize("max_consecutive", [0, 2])
def test_max_consecutive_gives_up_like_optax_apply_if_finite(max_consecutive):
    """With an int N the guard gives up after N bad steps in a row, as optax does."""
    inner = adamx.adam(1e-2)
    tx = nonfinite_policy(inner, "skip", max_consecutive)
    ref = optax.apply_if_finite(inner, max_consecutive)
    bad = [1, 2, 4, 5, 6]  # steps with infinities: runs of 2 and of 3
    params, state = PARAMS, tx.init(PARAMS)
    ref_params, ref_state = PARAMS, ref.init(PARAMS)
    for t in range(8):
        g = normal_grads(t)
        if t in bad:
            g = with_bad_entries(g, "inf")
        params, state, _ = step(tx, params, state, as_jax(g))
        ref_params, ref_state, _ = step(ref, ref_params, ref_state, as_jax(g))
        np.testing.assert_array_equal(params["w"], ref_params["w"])
        assert_bitwise(state.inner_state, ref_state.inner_state)
        assert int(state.consecutive) == int(ref_state.notfinite_count)


@pytest.mark.parametrize("policy", POLICIES)
def test_counters_saturate(policy):
    tx = nonfinite_policy(adamx.adam(1e-2), policy)
    state = tx.init(PARAMS)
    full = jnp.asarray(INT32_MAX, jnp.int32)
    state = state._replace(skipped=full, consecutive=full)
    _, state, updates = step(
        tx, PARAMS, state, as_jax(with_bad_entries(normal_grads(0), "nan"))
    )
    # Saturated, not wrapped (under "zero", skipped is left as it was).
    assert int(state.consecutive) == INT32_MAX
    assert int(state.skipped) == INT32_MAX
    # A saturated run of bad steps is still guarded: nothing non-finite got through.
    assert_finite(state.inner_state)
    assert_finite(updates)


def test_count_is_exact_and_saturates_beyond_int32():
    """Leaves above 2**31 entries are summed saturating; smaller ones exactly."""
    x = jnp.asarray(np.where(np.arange(50) % 3 == 0, np.nan, 1.0), jnp.float32)
    assert int(_tree.count_nonfinite(x)) == 17
    # The saturating path, forced on a small leaf, counts the same.
    assert int(_tree.count_nonfinite(x, exact_limit=10)) == 17
    big = jnp.asarray(INT32_MAX - 5, jnp.int32)
    assert int(_tree._saturating_add(big, jnp.asarray(5, jnp.int32))) == INT32_MAX
    assert int(_tree._saturating_add(big, jnp.asarray(6, jnp.int32))) == INT32_MAX
    assert (
        int(_tree._saturating_add(big, jnp.asarray(INT32_MAX, jnp.int32))) == INT32_MAX
    )
    assert int(_tree._saturating_add(big, jnp.asarray(4, jnp.int32))) == INT32_MAX - 1


def test_trees_of_any_dtype_are_counted():
    """Narrow floats and complex entries count; integer and boolean leaves never do."""
    grads = {
        "bf16": jnp.asarray([np.inf, 1.0, np.nan], jnp.bfloat16),
        "f16": jnp.asarray([1.0, -np.inf], jnp.float16),
        "c64": jnp.asarray(
            [complex(np.nan, 0), complex(1, np.inf), 1 + 1j, complex(np.inf, np.nan)],
            jnp.complex64,
        ),
        "f32": jnp.asarray([-np.inf, 0.0], jnp.float32),
        "i32": jnp.asarray([1, 2], jnp.int32),
        "bool": jnp.asarray([True, False]),
    }
    tx = nonfinite_policy(optax.identity(), "skip")
    updates, state = jax.jit(tx.update)(grads, tx.init(grads))
    assert int(state.nonfinite) == 2 + 1 + 3 + 1
    assert int(state.skipped) == 1
    # The skipped step's zeros come in each leaf's own dtype.
    for k, u in updates.items():
        assert u.dtype == grads[k].dtype
        assert not np.any(np.asarray(u))


def test_skipped_updates_take_the_inner_updates_dtypes():
    """Zeros of a skipped step have the dtypes ``inner`` returns, not the input's."""
    widen = optax.GradientTransformation(
        lambda p: optax.EmptyState(),
        lambda g, s, p=None: (jax.tree.map(lambda x: x.astype(jnp.float32), g), s),
    )
    grads = {"h": jnp.asarray([1.0, np.nan], jnp.bfloat16)}
    for tx in (
        nonfinite_policy(widen),
        skip_spikes(widen),
        skip_spikes(widen, norm_of="gradients"),
    ):
        updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
        assert updates["h"].dtype == jnp.float32
        assert_zero(updates)


def test_zero_policy_on_complex_and_narrow_leaves():
    """Under "zero" a complex entry with a bad part is zeroed as a whole."""
    params = {
        "c": jnp.asarray([1 + 1j, 2 - 1j, 0.5j], jnp.complex64),
        "h": jnp.asarray([1.0, -2.0, 3.0], jnp.bfloat16),
    }
    grads = {
        "c": np.asarray(
            [complex(1, np.inf), 0.5 - 0.25j, complex(np.nan, 2)], np.complex64
        ),
        "h": np.asarray([np.inf, 0.5, -0.5], jnp.bfloat16),
    }
    expected_in = {
        "c": np.asarray([0, 0.5 - 0.25j, 0], np.complex64),
        "h": np.asarray([0.0, 0.5, -0.5], jnp.bfloat16),
    }
    tx, ref = nonfinite_policy(adamx.adam(1e-2), "zero"), adamx.adam(1e-2)
    updates, state = jax.jit(tx.update)(as_jax(grads), tx.init(params), params)
    ref_updates, ref_state = jax.jit(ref.update)(
        as_jax(expected_in), ref.init(params), params
    )
    assert int(state.nonfinite) == 3
    assert_bitwise(updates, ref_updates)
    assert_bitwise(state.inner_state, ref_state)


# ----------------------------------------------------------------------------
# skip_spikes: the rule, against a float64 NumPy recomputation.

FACTOR, DECAY, WARMUP = 6.0, 0.9, 4
# Step 2 is a spike within the warmup; 9 a spike after it; 12 a NaN.
SPIKE_STEPS = {2: 1e3, 9: 1e3}
NAN_STEP = 12
SPIKE_RUN = 16


def _spike_grads(t):
    g = normal_grads(100 + t, SPIKE_STEPS.get(t, 1.0))
    if t == NAN_STEP:
        g["b"][3] = np.nan
    return g


def _norm64(tree) -> float:
    return float(
        np.sqrt(
            sum(
                np.sum(np.abs(np.asarray(x, np.float64)) ** 2)
                for x in jax.tree.leaves(tree)
            )
        )
    )


class Decision(NamedTuple):
    accept: bool
    norm: float
    average: float
    accepted: int


def _reference_spike_run(name, norm_of):
    """The rule in float64, driving the plain optimizer: one Decision per step."""
    tx = plain(name)
    params, state = PARAMS, tx.init(PARAMS)
    average, k = 0.0, 0
    decisions = []
    for t in range(SPIKE_RUN):
        g = as_jax(_spike_grads(t))
        updates, new_state = jitted_update(tx)(g, state, params)
        norm = _norm64(g if norm_of == "gradients" else updates)
        limit = FACTOR * average
        if np.isfinite(norm) and k >= max(WARMUP, 1):
            # No decision may sit within float32 rounding of the threshold.
            assert abs(norm - limit) > 1e-4 * limit
        accept = bool(np.isfinite(norm) and (k < max(WARMUP, 1) or norm <= limit))
        if accept:
            k += 1
            average += (1 - DECAY) / (1 - DECAY**k) * (norm - average)
            params, state = apply_updates(params, updates), new_state
        decisions.append(Decision(accept, norm, average, k))
    return decisions, params, state


@pytest.mark.parametrize("norm_of", ["updates", "gradients"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_spike_rule_matches_float64_reference(name, norm_of):
    decisions, ref_params, ref_state = _reference_spike_run(name, norm_of)
    tx = spiky(name, norm_of)
    params, state = PARAMS, tx.init(PARAMS)
    for t, expected in enumerate(decisions):
        before = state
        params_before = params
        params, state, updates = step(tx, params, state, as_jax(_spike_grads(t)))
        accepted = int(state.accepted) == int(before.accepted) + 1
        assert accepted == expected.accept, f"step {t}"
        assert int(state.skipped) == t + 1 - expected.accepted
        assert int(state.accepted) == expected.accepted
        if np.isfinite(expected.norm):
            np.testing.assert_allclose(float(state.last_norm), expected.norm, rtol=2e-6)
        else:
            assert not np.isfinite(float(state.last_norm))
        np.testing.assert_allclose(
            float(state.norm_average), expected.average, rtol=2e-6
        )
        assert state.norm_average.dtype == jnp.float32
        assert state.last_norm.dtype == jnp.float32
        if not expected.accept:
            assert_zero(updates)
            assert_bitwise(state.inner_state, before.inner_state)
            assert_bitwise(params, params_before)
            assert float(state.norm_average) == float(before.norm_average)
        assert_finite(state.inner_state)
    assert_bitwise(state.inner_state, ref_state)
    assert_bitwise(params, ref_params)
    if norm_of == "gradients":
        # On gradient norms the scenario is clear-cut for every optimizer: the
        # warmup spike is accepted, the later spike and the NaN step skipped,
        # and the steps after them accepted.
        accepted = [d.accept for d in decisions]
        assert accepted == [t not in (9, NAN_STEP) for t in range(SPIKE_RUN)]


@pytest.mark.parametrize("norm_of", ["updates", "gradients"])
def test_spike_skipped_when_update_follows_gradient(norm_of):
    """With SGD the update is the scaled gradient: both norms see the spike."""
    tx = skip_spikes(optax.sgd(0.1), factor=6.0, decay=0.99, warmup=2, norm_of=norm_of)
    params = {"x": jnp.zeros((3,))}
    state = tx.init(params)
    grads = [[1, 0, 0], [0, 2, 0], [0, 0, 1e3], [0, 0, 3], [0, np.nan, 0], [1.5, 0, 0]]
    accepted = []
    for g in grads:
        before, params_before = state, params
        params, state, updates = step(
            tx, params, state, {"x": jnp.asarray(g, jnp.float32)}
        )
        accepted.append(int(state.accepted) > int(before.accepted))
        if not accepted[-1]:
            assert_zero(updates)
            assert_bitwise(state.inner_state, before.inner_state)
            assert_bitwise(params, params_before)
            assert float(state.norm_average) == float(before.norm_average)
    # Update norms 0.1, 0.2, 100, 0.3, NaN, 0.15. After the 2 warmup steps
    # the average is about 0.15 (bias-corrected), so 100 > 6 * 0.15 is
    # skipped and the next normal step accepted; NaN is skipped.
    assert accepted == [True, True, False, True, False, True]
    # The gradient norms are 10 times the update norms (learning rate 0.1).
    norms = np.array([0.1, 0.2, 0.3, 0.15]) * (10.0 if norm_of == "gradients" else 1.0)
    weights = 0.99 ** np.arange(len(norms))[::-1]
    np.testing.assert_allclose(
        float(state.norm_average), np.sum(weights * norms) / np.sum(weights), rtol=2e-6
    )
    np.testing.assert_allclose(params["x"], [-0.25, -0.2, -0.3], rtol=1e-6)


@pytest.mark.parametrize("norm_of", ["updates", "gradients"])
def test_spike_during_warmup_is_accepted(norm_of):
    tx = skip_spikes(optax.sgd(0.1), warmup=3, norm_of=norm_of)
    params = {"x": jnp.zeros((2,))}
    state = tx.init(params)
    for g in ([1.0, 0.0], [0.0, 1e3], [np.inf, 0.0], [1.0, 0.0]):
        params, state, _ = step(tx, params, state, {"x": jnp.asarray(g, jnp.float32)})
    # The spike is accepted; the infinite step is skipped even within warmup.
    assert (int(state.accepted), int(state.skipped)) == (3, 1)
    np.testing.assert_allclose(params["x"], [-0.2, -100.0], rtol=1e-6)


def test_lamb_update_norm_does_not_see_gradient_spikes():
    """Documented limit: LAMB's update norm ignores the gradient's scale."""
    tx = skip_spikes(adamx.lamb(1e-2), warmup=2, norm_of="updates")
    params, state = PARAMS, tx.init(PARAMS)
    for t in range(6):
        params, state, _ = step(
            tx, params, state, as_jax(normal_grads(t, 1e6 if t == 4 else 1.0))
        )
    assert int(state.skipped) == 0


def test_warmup_zero_still_accepts_the_first_step():
    tx = skip_spikes(optax.sgd(1.0), warmup=0)
    state = tx.init(PARAMS)
    _, state, updates = step(tx, PARAMS, state, as_jax(normal_grads(0, 5.0)))
    assert int(state.accepted) == 1 and int(state.skipped) == 0
    np.testing.assert_allclose(float(state.norm_average), 5.0, rtol=1e-6)
    # The next step is compared with the average at once: a 7x step is skipped.
    _, state, updates = step(tx, PARAMS, state, as_jax(normal_grads(1, 35.0)))
    assert int(state.skipped) == 1
    assert_zero(updates)


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (1e30, jnp.float32),
        (1e-30, jnp.float32),
        (1e4, jnp.float16),
        (3e38, jnp.float32),
    ],
)
def test_norm_neither_overflows_nor_underflows(value, dtype):
    """The norm of entries whose squares leave float32's range is still right."""
    grads = {"a": jnp.full((100,), value, dtype), "b": jnp.full((44,), -value, dtype)}
    tx = skip_spikes(optax.identity())
    _, state = jax.jit(tx.update)(grads, tx.init(grads))
    expected = float(np.asarray(value, dtype).astype(np.float64)) * 12.0  # sqrt(144)
    if expected > float(np.finfo(np.float32).max):
        # Beyond float32: an infinite norm, skipped.
        assert float(state.last_norm) == np.inf and int(state.skipped) == 1
    else:
        np.testing.assert_allclose(float(state.last_norm), expected, rtol=1e-6)
        assert int(state.accepted) == 1


def test_norm_of_complex_updates_uses_the_modulus():
    grads = {"c": jnp.asarray([3 + 4j, 0], jnp.complex64), "r": jnp.asarray([12.0])}
    tx = skip_spikes(optax.identity())
    _, state = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(float(state.last_norm), 13.0, rtol=1e-7)


def test_spike_counters_saturate():
    tx = skip_spikes(optax.sgd(1.0), warmup=1)
    state = tx.init(PARAMS)
    full = jnp.asarray(INT32_MAX, jnp.int32)
    state = state._replace(accepted=full, skipped=full, norm_average=jnp.float32(1.0))
    _, state, _ = step(tx, PARAMS, state, as_jax(normal_grads(0, 100.0)))  # skipped
    assert int(state.skipped) == INT32_MAX and int(state.accepted) == INT32_MAX
    _, state, _ = step(tx, PARAMS, state, as_jax(normal_grads(0, 2.0)))  # accepted
    assert int(state.accepted) == INT32_MAX
    # At k = 2**31 - 1, 1 - 0.99**k is 1: the average moves by 1 - decay.
    np.testing.assert_allclose(
        float(state.norm_average), 1.0 + 0.01 * (2.0 - 1.0), rtol=1e-6
    )


# ----------------------------------------------------------------------------
# Errors at construction.

ERRORS = [
    (
        lambda: nonfinite_policy(optax.identity(), "drop"),
        r"nonfinite_policy\(policy='drop'\): policy",
    ),
    (
        lambda: nonfinite_policy(optax.identity(), None),
        r"nonfinite_policy\(policy=None\): policy",
    ),
    (
        lambda: nonfinite_policy(optax.identity(), max_consecutive=-1),
        r"nonfinite_policy\(max_consecutive=-1\): max_consecutive",
    ),
    (
        lambda: nonfinite_policy(optax.identity(), max_consecutive=1.5),
        r"nonfinite_policy\(max_consecutive=1.5\): max_consecutive",
    ),
    (
        lambda: nonfinite_policy(optax.identity(), max_consecutive=True),
        r"nonfinite_policy\(max_consecutive=True\): max_consecutive",
    ),
    (
        lambda: skip_spikes(optax.identity(), factor=1.0),
        r"skip_spikes\(factor=1.0\): factor must be > 1",
    ),
    (
        lambda: skip_spikes(optax.identity(), factor=0.5),
        r"skip_spikes\(factor=0.5\): factor must be > 1",
    ),
    (
        lambda: skip_spikes(optax.identity(), factor=float("nan")),
        r"skip_spikes\(factor=nan\): factor",
    ),
    (
        lambda: skip_spikes(optax.identity(), factor="big"),
        r"skip_spikes\(factor='big'\): factor",
    ),
    (
        lambda: skip_spikes(optax.identity(), decay=0.0),
        r"skip_spikes\(decay=0.0\): decay must be in \(0, 1\)",
    ),
    (
        lambda: skip_spikes(optax.identity(), decay=1.0),
        r"skip_spikes\(decay=1.0\): decay must be in \(0, 1\)",
    ),
    (
        lambda: skip_spikes(optax.identity(), decay=-0.5),
        r"skip_spikes\(decay=-0.5\): decay",
    ),
    (
        lambda: skip_spikes(optax.identity(), warmup=-1),
        r"skip_spikes\(warmup=-1\): warmup must be an int >= 0",
    ),
    (
        lambda: skip_spikes(optax.identity(), warmup=2.5),
        r"skip_spikes\(warmup=2.5\): warmup",
    ),
    (
        lambda: skip_spikes(optax.identity(), norm_of="loss"),
        r"skip_spikes\(norm_of='loss'\): norm_of",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"),
    ERRORS,
    ids=[m.split(")")[0].replace("\\", "") for _, m in ERRORS],
)
def test_construction_errors_name_the_argument(build, message):
    # A value of the wrong type (factor="big") is a TypeError.
    with pytest.raises((TypeError, ValueError), match=message):
        build()


@pytest.mark.parametrize("max_consecutive", [None, 0, 3])
def test_valid_max_consecutive_is_accepted(max_consecutive):
    tx = nonfinite_policy(optax.identity(), max_consecutive=max_consecutive)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)


class _Drift(NamedTuple):
    acc: jax.Array


def _dtype_changing_inner():
    """A faulty inner whose state changes dtype: a skip could not hand it back."""

    def update(g, state, params=None):
        return g, _Drift(state.acc.astype(jnp.float16))

    return optax.GradientTransformation(
        lambda p: _Drift(jnp.zeros([], jnp.float32)), update
    )


@pytest.mark.parametrize(
    "wrap",
    [
        lambda inner: nonfinite_policy(inner, "skip"),
        lambda inner: skip_spikes(inner, norm_of="updates"),
        lambda inner: skip_spikes(inner, norm_of="gradients"),
    ],
    ids=["nonfinite_policy", "skip_spikes[updates]", "skip_spikes[gradients]"],
)
def test_inner_state_changing_dtype_is_a_clear_error(wrap):
    tx = wrap(_dtype_changing_inner())
    x = jnp.zeros(3)
    with pytest.raises(
        TypeError, match=r"state leaf \.acc from shape \(\) float32 to \(\) float16"
    ):
        tx.update(x, tx.init(x))


# ----------------------------------------------------------------------------
# Composition: jit, extra args, optax.chain, optax.MultiSteps, flax TrainState.


GUARDS = {
    "nonfinite[skip]": lambda inner: nonfinite_policy(inner, "skip"),
    "nonfinite[zero]": lambda inner: nonfinite_policy(inner, "zero", 3),
    "spikes[updates]": lambda inner: skip_spikes(inner, warmup=2),
    "spikes[gradients]": lambda inner: skip_spikes(
        inner, warmup=2, norm_of="gradients"
    ),
    "spikes(nonfinite)": lambda inner: skip_spikes(nonfinite_policy(inner), warmup=2),
    "nonfinite(spikes)": lambda inner: nonfinite_policy(skip_spikes(inner, warmup=2)),
}


@pytest.mark.parametrize("wrap", list(GUARDS.values()), ids=list(GUARDS))
def test_jit_equals_eager(wrap):
    tx = wrap(adamx.adam(1e-2))
    runs = []
    for jit in (False, True):
        params, state = PARAMS, tx.init(PARAMS)
        for t in range(4):  # past the warmup of 2: a NaN step, then a spike
            g = normal_grads(t, 1e3 if t == 3 else 1.0)
            if t == 2:
                g = with_bad_entries(g, "nan")
            params, state, _ = step(tx, params, state, as_jax(g), jit=jit)
        runs.append((params, state))
    (p_eager, s_eager), (p_jit, s_jit) = runs
    assert jax.tree.structure(s_eager) == jax.tree.structure(s_jit)
    for a, b in zip(
        jax.tree.leaves((p_eager, s_eager)),
        jax.tree.leaves((p_jit, s_jit)),
        strict=True,
    ):
        assert a.dtype == b.dtype
        if jnp.issubdtype(a.dtype, jnp.inexact):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(a, b)


def _extra_args_inner():
    """An inner transform that needs a keyword argument at update time."""

    def update(g, state, params=None, *, gain):
        return jax.tree.map(lambda x: x * gain, g), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


@pytest.mark.parametrize("wrap", list(GUARDS.values()), ids=list(GUARDS))
def test_extra_args_reach_the_inner_transform(wrap):
    tx = wrap(_extra_args_inner())
    x = jnp.asarray([1.0, -2.0])
    updates, _ = jax.jit(tx.update)(x, tx.init(x), None, gain=jnp.float32(3.0))
    np.testing.assert_array_equal(updates, [3.0, -6.0])


@pytest.mark.parametrize("policy", POLICIES)
def test_inside_optax_chain(policy):
    """Guarding the direction in a chain: the plain chain on the repaired steps."""
    tx = optax.chain(
        nonfinite_policy(adamx.scale_by_adam(), policy), optax.scale(-1e-2)
    )
    ref = optax.chain(adamx.scale_by_adam(), optax.scale(-1e-2))
    params, state = PARAMS, tx.init(PARAMS)
    ref_params, ref_state = PARAMS, ref.init(PARAMS)
    for t in range(5):
        g = normal_grads(t)
        fed = with_bad_entries(g, "inf") if t in (1, 2) else g
        params, state, _ = step(tx, params, state, as_jax(fed))
        if policy == "zero" or t not in (1, 2):
            ref_params, ref_state, _ = step(
                ref, ref_params, ref_state, as_jax(zeroed(fed))
            )
    assert_bitwise(params, ref_params)
    assert_bitwise(state[0].inner_state, ref_state[0])


@pytest.mark.parametrize("policy", POLICIES)
def test_inside_optax_multisteps(policy):
    """Inside MultiSteps the guard sees the accumulated step, NaN included."""
    k = 2
    tx = optax.MultiSteps(
        nonfinite_policy(adamx.adam(1e-2), policy), every_k_schedule=k
    )
    ref = adamx.adam(1e-2)
    params, state = PARAMS, tx.init(PARAMS)
    ref_params, ref_state = PARAMS, ref.init(PARAMS)
    micro = [normal_grads(t) for t in range(4)]
    micro[3] = with_bad_entries(micro[3], "nan")  # the second step's second half
    for g in micro:
        params, state, _ = step(tx, params, state, as_jax(g))
    first = {key: (micro[0][key] + micro[1][key]) / k for key in micro[0]}
    second = {key: (micro[2][key] + micro[3][key]) / k for key in micro[0]}
    ref_params, ref_state, _ = step(ref, ref_params, ref_state, as_jax(first))
    if policy == "zero":
        ref_params, ref_state, _ = step(
            ref, ref_params, ref_state, as_jax(zeroed(second))
        )
    inner = state.inner_opt_state
    assert int(inner.skipped) == (policy == "skip")
    assert int(inner.nonfinite) == 4
    assert_finite(inner.inner_state)
    assert_finite(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(inner.inner_state[0].count) == int(ref_state[0].count)


def test_around_optax_multisteps():
    """Outside MultiSteps the guard drops a NaN micro-batch before it is accumulated."""
    k = 2
    tx = nonfinite_policy(
        optax.MultiSteps(adamx.adam(1e-2), every_k_schedule=k).gradient_transformation()
    )
    ref = adamx.adam(1e-2)
    params, state = PARAMS, tx.init(PARAMS)
    ref_params, ref_state = PARAMS, ref.init(PARAMS)
    micro = [normal_grads(t) for t in range(5)]
    micro[2] = with_bad_entries(micro[2], "inf")
    for g in micro:
        params, state, _ = step(tx, params, state, as_jax(g))
    for a, b in ((0, 1), (3, 4)):  # micro-batch 2 is dropped, 3 takes its place
        mean = {key: (micro[a][key] + micro[b][key]) / k for key in micro[0]}
        ref_params, ref_state, _ = step(ref, ref_params, ref_state, as_jax(mean))
    assert int(state.skipped) == 1
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_skip_spikes_under_optax_multisteps():
    tx = optax.MultiSteps(
        skip_spikes(optax.sgd(1.0), warmup=1, norm_of="gradients"), every_k_schedule=2
    )
    params, state = PARAMS, tx.init(PARAMS)
    scales = [1.0, 1.0, 1e3, 1e3, 1.0, 1.0]  # the second accumulated step spikes
    for s in scales:
        params, state, _ = step(tx, params, state, as_jax(normal_grads(0, s)))
    inner = state.inner_opt_state
    assert (int(inner.accepted), int(inner.skipped)) == (2, 1)
    np.testing.assert_allclose(
        params["w"], PARAMS["w"] - 2 * normal_grads(0)["w"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("wrap", list(GUARDS.values()), ids=list(GUARDS))
def test_flax_train_state(wrap):
    """A flax TrainState with a guarded tx: a NaN step never reaches the params."""
    state = train_state.TrainState.create(
        apply_fn=None, params=PARAMS, tx=wrap(adamx.adamw(1e-2))
    )
    apply = jax.jit(lambda s, g: s.apply_gradients(grads=g))
    state = apply(state, as_jax(normal_grads(0)))
    before = state.params
    state = apply(state, as_jax(with_bad_entries(normal_grads(1), "nan")))
    assert_finite(state.params)
    assert_finite(moments_of(state.opt_state))
    bad_step_moved = not np.array_equal(state.params["w"], before["w"])
    assert bad_step_moved == (wrap is GUARDS["nonfinite[zero]"])
    state = apply(state, as_jax(normal_grads(2)))
    assert not np.array_equal(state.params["w"], before["w"])
