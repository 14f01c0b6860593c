"""adamx transforms compose with optax's wrappers, jit, eval_shape and checkpoints.

Expected values come from a float64 NumPy implementation of the Adam family
written out below (:func:`_reference`), never from adamx itself, except where
a test states that two adamx runs must agree with each other (jit against
no-jit, a restored checkpoint against the original).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalogue import count_state, moment_state

import adamx

# ---------------------------------------------------------------------------
# Float64 reference
# ---------------------------------------------------------------------------


def _reference(
    grads: list[np.ndarray],
    param0: np.ndarray,
    *,
    kind: str = "adam",
    lr: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> list[np.ndarray]:
    """Float64 updates of one leaf for a gradient sequence, params following them.

    ``kind`` is ``"adam"``, ``"amsgrad"`` (maximum of the debiased second
    moment, debiased first moment), ``"amsgrad-raw"`` (Reddi et al.: no
    debiasing) or ``"bias"`` (the incoming update divided by ``1 - b1**t``).
    The update is ``-lr * (direction + weight_decay * param)``; ``lr=-1``
    gives a bare direction.
    """
    param = np.asarray(param0, np.complex128 if np.iscomplexobj(param0) else np.float64)
    m = np.zeros_like(param)
    v = np.zeros(param.shape)
    v_max = np.zeros(param.shape)
    updates = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, param.dtype)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * np.abs(g) ** 2
        if kind == "bias":
            direction = g / (1 - b1**t)
        elif kind == "amsgrad-raw":
            v_max = np.maximum(v_max, v)
            direction = m / (np.sqrt(v_max + eps_root) + eps)
        else:
            m_hat = m / (1 - b1**t)
            if nesterov:
                m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            if kind == "amsgrad":
                v_max = np.maximum(v_max, v_hat)
                v_hat = v_max
            direction = m_hat / (np.sqrt(v_hat + eps_root) + eps)
        update = -lr * (direction + weight_decay * param)
        param = param + update
        updates.append(update)
    return updates


def _normal(rng: np.random.Generator, shape, dtype) -> jax.Array:
    x = rng.normal(size=shape)
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        x = x + 1j * rng.normal(size=shape)
    return jnp.asarray(x, dtype)


def _grad_stream(params, steps: int, seed: int, scale: float = 1.0) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda p: scale * _normal(rng, p.shape, p.dtype), params)
        for _ in range(steps)
    ]


def _leaf_grads(grads: list[Any], name: str) -> list[np.ndarray]:
    return [np.asarray(g[name], np.float64) for g in grads]


# Float32 against the float64 reference.
TOL = {"rtol": 2e-5, "atol": 1e-6}


@functools.cache
def _compiled(make: Callable[[], optax.GradientTransformation]):
    """One transformation per factory and its jitted update, compiled once per file."""
    tx = make()
    return tx, jax.jit(tx.update)


def _f32_params() -> dict[str, jax.Array]:
    rng = np.random.default_rng(7)
    return {
        "w": _normal(rng, (3, 2), jnp.float32),
        "b": _normal(rng, (2,), jnp.float32),
    }


# ---------------------------------------------------------------------------
# Composition with optax wrappers
# ---------------------------------------------------------------------------


def test_chain_with_clip_by_global_norm() -> None:
    params = _f32_params()
    max_norm = 1.0
    # Alternate large and small gradients, so some steps are clipped and some not.
    scales = [30.0, 0.05, 10.0, 0.2, 50.0, 0.01]
    grads = [
        jax.tree.map(lambda g, s=s: s * g, g)
        for g, s in zip(_grad_stream(params, len(scales), seed=1), scales, strict=True)
    ]
    tx = optax.chain(optax.clip_by_global_norm(max_norm), adamx.adam(0.1))
    step = jax.jit(tx.update)

    clipped = []
    for g in grads:
        norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in g.values()))
        clipped.append(
            {
                k: np.asarray(x, np.float64) * min(1.0, max_norm / norm)
                for k, x in g.items()
            }
        )
    assert any(s > 1 for s in scales) and any(s < 1 for s in scales)

    state = tx.init(params)
    updates = []
    for g in grads:
        u, state = step(g, state, params)
        updates.append(u)
    for name in params:
        expected = _reference([c[name] for c in clipped], params[name], lr=0.1)
        unclipped = _reference(_leaf_grads(grads, name), params[name], lr=0.1)
        actual = [np.asarray(u[name]) for u in updates]
        np.testing.assert_allclose(actual, expected, **TOL)
        # Clipping changed the trajectory, so the comparison above sees it.
        assert not np.allclose(actual, unclipped, rtol=1e-3)


# A large eps makes the update depend on the gradient's scale, so averaging
# the micro-batch gradients is told apart from summing them.
@pytest.mark.parametrize(
    ("make", "ref"),
    [
        (lambda: adamx.adam(0.1, eps=0.3), {"lr": 0.1, "eps": 0.3}),
        (
            lambda: adamx.amsgrad(0.1, b2=0.9, eps=0.3),
            {"lr": 0.1, "b2": 0.9, "eps": 0.3, "kind": "amsgrad"},
        ),
        (
            lambda: adamx.nadamw(0.1, eps=0.3, weight_decay=0.1),
            {"lr": 0.1, "eps": 0.3, "nesterov": True, "weight_decay": 0.1},
        ),
    ],
    ids=["adam", "amsgrad", "nadamw"],
)
def test_multi_steps_every_third_step_is_adam_on_mean_gradient(make, ref) -> None:
    k, macro_steps = 3, 3
    params = _f32_params()
    grads = _grad_stream(params, k * macro_steps, seed=2)
    tx = optax.MultiSteps(make(), every_k_schedule=k)
    step = jax.jit(tx.update)

    state = tx.init(params)
    p = params
    updates = []
    for g in grads:
        u, state = step(g, state, p)
        p = optax.apply_updates(p, u)
        updates.append(u)

    for name in params:
        mean_grads = [
            np.mean(np.stack(_leaf_grads(grads[i : i + k], name)), axis=0)
            for i in range(0, len(grads), k)
        ]
        # Weight decay sees the parameters as they stand at each macro step.
        expected = _reference(mean_grads, params[name], **ref)
        for i, u in enumerate(updates):
            if (i + 1) % k:
                np.testing.assert_array_equal(u[name], np.zeros_like(u[name]))
            else:
                np.testing.assert_allclose(u[name], expected[(i + 1) // k - 1], **TOL)
        summed = _reference([k * g for g in mean_grads], params[name], **ref)
        assert not np.allclose(expected, summed, rtol=1e-3)
    # The inner optimizer saw exactly one update per macro step.
    assert int(state.inner_opt_state[0].count) == macro_steps
    assert int(state.gradient_step) == macro_steps


MASKABLE = {
    "adam": (lambda: adamx.adam(0.1), {"lr": 0.1}),
    "adamw": (
        lambda: adamx.adamw(0.1, weight_decay=0.1),
        {"lr": 0.1, "weight_decay": 0.1},
    ),
    "nadam": (lambda: adamx.nadam(0.1), {"lr": 0.1, "nesterov": True}),
    "amsgrad": (lambda: adamx.amsgrad(0.1), {"lr": 0.1, "kind": "amsgrad"}),
    "scale_by_adam": (lambda: adamx.scale_by_adam(), {"lr": -1.0}),
    "scale_by_amsgrad-reddi": (
        lambda: adamx.scale_by_amsgrad(
            bias_correction_mu=False, bias_correction_nu=False
        ),
        {"lr": -1.0, "kind": "amsgrad-raw"},
    ),
}


@pytest.mark.parametrize("name", list(MASKABLE))
def test_masked(name: str) -> None:
    make, ref = MASKABLE[name]
    params = {**_f32_params(), "steps": jnp.zeros([], jnp.int32)}
    mask = {"w": True, "b": False, "steps": False}
    grads = [
        {**g, "steps": jnp.ones([], jnp.int32)}
        for g in _grad_stream(_f32_params(), 4, seed=3)
    ]
    tx = optax.masked(make(), mask)
    step = jax.jit(tx.update)

    state = tx.init(params)
    moments = moment_state(state.inner_state)
    for field in moments._fields[1:]:
        assert isinstance(getattr(moments, field)["b"], optax.MaskedNode), field
        assert isinstance(getattr(moments, field)["steps"], optax.MaskedNode), field

    p = params
    updates = []
    for g in grads:
        u, state = step(g, state, p)
        p = optax.apply_updates(p, u)
        updates.append(u)

    expected = _reference(_leaf_grads(grads, "w"), params["w"], **ref)
    np.testing.assert_allclose([u["w"] for u in updates], expected, **TOL)
    for g, u in zip(grads, updates, strict=True):
        # Masked-out leaves pass through untouched, integer leaf included.
        np.testing.assert_array_equal(u["b"], g["b"])
        assert u["steps"].dtype == jnp.int32
        np.testing.assert_array_equal(u["steps"], g["steps"])
    moments = moment_state(state.inner_state)
    assert int(moments.count) == len(grads)
    for field in moments._fields[1:]:
        assert isinstance(getattr(moments, field)["b"], optax.MaskedNode), field
        assert getattr(moments, field)["w"].shape == params["w"].shape


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("make", "ref"),
    [
        (
            lambda: optax.apply_if_finite(adamx.adam(0.1), max_consecutive_errors=3),
            {"lr": 0.1},
        ),
        (
            lambda: optax.apply_if_finite(
                adamx.amsgrad(0.1, b2=0.9), max_consecutive_errors=3
            ),
            {"lr": 0.1, "b2": 0.9, "kind": "amsgrad"},
        ),
    ],
    ids=["adam", "amsgrad"],
)
def test_apply_if_finite_skips_non_finite_step(make, ref, bad) -> None:
    params = _f32_params()
    grads = _grad_stream(params, 4, seed=4)
    grads[1] = {**grads[1], "b": grads[1]["b"].at[0].set(bad)}
    tx, step = _compiled(make)

    state = tx.init(params)
    p = params
    history = []
    for g in grads:
        u, new_state = step(g, state, p)
        new_p = optax.apply_updates(p, u)
        history.append((u, state, new_state, p, new_p))
        state, p = new_state, new_p

    u, before, after, p_before, p_after = history[1]
    assert not bool(after.last_finite)
    assert int(after.notfinite_count) == 1
    assert int(after.total_notfinite) == 1
    for name in params:
        np.testing.assert_array_equal(u[name], np.zeros_like(u[name]))
        np.testing.assert_array_equal(p_after[name], p_before[name])
    chex.assert_trees_all_equal(after.inner_state, before.inner_state)

    # The finite steps are Adam on the gradients without the skipped one.
    assert bool(state.last_finite)
    assert int(state.notfinite_count) == 0
    assert int(moment_state(state.inner_state).count) == 3
    finite = [grads[0], grads[2], grads[3]]
    for name in params:
        expected = _reference(_leaf_grads(finite, name), params[name], **ref)
        actual = [history[i][0][name] for i in (0, 2, 3)]
        np.testing.assert_allclose(actual, expected, **TOL)


def test_multi_transform() -> None:
    rng = np.random.default_rng(5)
    params = {
        "enc": {
            "w": _normal(rng, (3, 3), jnp.float32),
            "b": _normal(rng, (3,), jnp.float32),
        },
        "head": {"w": _normal(rng, (3, 1), jnp.float32)},
        "frozen": _normal(rng, (2,), jnp.float32),
    }
    labels = {
        "enc": {"w": "adamw", "b": "adam"},
        "head": {"w": "amsgrad"},
        "frozen": "freeze",
    }
    tx = optax.multi_transform(
        {
            "adam": adamx.adam(0.05),
            "adamw": adamx.adamw(0.1, weight_decay=0.2),
            "amsgrad": adamx.amsgrad(0.02, b2=0.9),
            "freeze": optax.set_to_zero(),
        },
        labels,
    )
    grads = _grad_stream(params, 5, seed=6)
    step = jax.jit(tx.update)

    state = tx.init(params)
    p = params
    updates = []
    for g in grads:
        u, state = step(g, state, p)
        p = optax.apply_updates(p, u)
        updates.append(u)

    def leaf(tree, path):
        for key in path:
            tree = tree[key]
        return tree

    refs = {
        ("enc", "w"): {"lr": 0.1, "weight_decay": 0.2},
        ("enc", "b"): {"lr": 0.05},
        ("head", "w"): {"lr": 0.02, "b2": 0.9, "kind": "amsgrad"},
    }
    for path, ref in refs.items():
        g_seq = [np.asarray(leaf(g, path), np.float64) for g in grads]
        expected = _reference(g_seq, leaf(params, path), **ref)
        np.testing.assert_allclose([leaf(u, path) for u in updates], expected, **TOL)
    np.testing.assert_array_equal(p["frozen"], params["frozen"])
    # Each adamx optimizer's state covers only its own labelled leaves.
    adamw_mu = state.inner_states["adamw"].inner_state[0].mu
    assert isinstance(adamw_mu["enc"]["b"], optax.MaskedNode)
    assert isinstance(adamw_mu["head"]["w"], optax.MaskedNode)
    assert adamw_mu["enc"]["w"].shape == (3, 3)


# ---------------------------------------------------------------------------
# Every transform: jit, eval_shape, dtypes, checkpoints
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    make: Callable[[], optax.GradientTransformation]
    state_type: type
    mu_dtype: Any = None
    nu_dtype: Any = None


VARIANTS = {
    "scale_by_adam": Variant(lambda: adamx.scale_by_adam(), adamx.ScaleByAdamState),
    "scale_by_adam-nesterov": Variant(
        lambda: adamx.scale_by_adam(nesterov=True), adamx.ScaleByAdamState
    ),
    "scale_by_adam-storage": Variant(
        lambda: adamx.scale_by_adam(mu_dtype=jnp.float32, nu_dtype=jnp.bfloat16),
        adamx.ScaleByAdamState,
        mu_dtype=jnp.float32,
        nu_dtype=jnp.bfloat16,
    ),
    "scale_by_amsgrad": Variant(
        lambda: adamx.scale_by_amsgrad(), adamx.ScaleByAmsgradState
    ),
    "scale_by_amsgrad-reddi": Variant(
        lambda: adamx.scale_by_amsgrad(
            bias_correction_mu=False, bias_correction_nu=False
        ),
        adamx.ScaleByAmsgradState,
    ),
    "scale_by_amsgrad-storage": Variant(
        lambda: adamx.scale_by_amsgrad(nu_dtype=jnp.float32),
        adamx.ScaleByAmsgradState,
        nu_dtype=jnp.float32,
    ),
    "bias_correction": Variant(
        lambda: adamx.bias_correction(0.9), adamx.BiasCorrectionState
    ),
    "adam": Variant(lambda: adamx.adam(0.1), adamx.ScaleByAdamState),
    "adamw": Variant(
        lambda: adamx.adamw(0.1, weight_decay=0.1), adamx.ScaleByAdamState
    ),
    "nadam": Variant(lambda: adamx.nadam(0.1), adamx.ScaleByAdamState),
    "nadamw": Variant(
        lambda: adamx.nadamw(0.1, weight_decay=0.1), adamx.ScaleByAdamState
    ),
    "amsgrad": Variant(lambda: adamx.amsgrad(0.1), adamx.ScaleByAmsgradState),
}

# Real part and complex counterpart, written out for the dtypes used here.
_REAL = {
    np.dtype(jnp.float32): np.dtype(jnp.float32),
    np.dtype(jnp.bfloat16): np.dtype(jnp.bfloat16),
    np.dtype(jnp.complex64): np.dtype(jnp.float32),
}
_COMPLEX = {np.dtype(jnp.float32): np.dtype(jnp.complex64)}


def _mixed_params() -> dict[str, jax.Array]:
    rng = np.random.default_rng(11)
    return {
        "w": _normal(rng, (3, 4), jnp.float32),
        "b": _normal(rng, (4,), jnp.bfloat16),
        "z": _normal(rng, (2,), jnp.complex64),
        "s": _normal(rng, (), jnp.float32),
    }


@functools.cache
def _variant(name: str):
    """The variant's transformation, its jitted update and that update's trace log."""
    tx = VARIANTS[name].make()
    traces: list[None] = []

    def update(g, state, params):
        traces.append(None)
        return tx.update(g, state, params)

    return tx, jax.jit(update), traces


def _run(name: str, params, grads, state=None, *, jit: bool = True):
    tx, jitted, _ = _variant(name)
    update = jitted if jit else tx.update
    state = tx.init(params) if state is None else state
    updates = []
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        updates.append(u)
    # Updates stacked over the steps, leaf by leaf.
    return jax.tree.map(lambda *steps: np.stack(steps), *updates), state, params


def _leaves_by_path(tree) -> dict[str, Any]:
    return {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def _assert_trees_equal(actual, expected, *, ulps: int = 0) -> None:
    """Same structure and dtypes; values equal, or within ``ulps`` units in the
    last place of each leaf's largest magnitude over all steps (integers
    always exactly)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    actual, expected = _leaves_by_path(actual), _leaves_by_path(expected)
    for path, a in actual.items():
        e = expected[path]
        assert a.dtype == e.dtype, path
        if ulps and jnp.issubdtype(a.dtype, jnp.inexact):
            real = np.dtype(jnp.finfo(a.dtype).dtype)
            a = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
            e = e.astype(a.dtype)
            atol = (
                ulps * float(jnp.finfo(real).eps) * float(np.max(np.abs(e), initial=0))
            )
            np.testing.assert_allclose(a, e, rtol=0, atol=atol, err_msg=path)
        else:
            np.testing.assert_array_equal(a, e, err_msg=path)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_jit_and_no_jit_agree(name: str) -> None:
    # XLA fuses and reorders the float32 arithmetic of a jitted update, so a
    # jitted and an eager run agree to a few units in the last place, not
    # bitwise; step counts agree exactly.
    params = _mixed_params()
    grads = _grad_stream(params, 4, seed=12)
    eager = _run(name, params, grads, jit=False)
    jitted = _run(name, params, grads, jit=True)
    _assert_trees_equal(jitted, eager, ulps=4)
    for leaf in jax.tree.leaves(eager[0]):
        assert np.all(np.isfinite(np.asarray(leaf, np.complex64)))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_eval_shape_of_init(name: str) -> None:
    variant = VARIANTS[name]
    tx = variant.make()
    params = _mixed_params()
    shapes = jax.eval_shape(tx.init, params)

    # The abstract state matches the real one leaf for leaf.
    real = tx.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    for s, r in zip(jax.tree.leaves(shapes), jax.tree.leaves(real), strict=True):
        assert isinstance(s, jax.ShapeDtypeStruct)
        assert (s.shape, s.dtype) == (r.shape, r.dtype)

    head = count_state(shapes)
    assert isinstance(head, variant.state_type)
    assert isinstance(head, tuple) and hasattr(head, "_fields")
    assert head.count.shape == ()
    assert head.count.dtype == jnp.int32

    expected_fields = {
        adamx.ScaleByAdamState: ("count", "mu", "nu"),
        adamx.ScaleByAmsgradState: ("count", "mu", "nu", "nu_max"),
        adamx.BiasCorrectionState: ("count",),
    }[variant.state_type]
    assert head._fields == expected_fields
    for field in expected_fields[1:]:
        tree = getattr(head, field)
        assert jax.tree.structure(tree) == jax.tree.structure(params)
        for key, p in params.items():
            pdt = np.dtype(p.dtype)
            if field == "mu":
                declared = variant.mu_dtype
                if declared is None:
                    want = pdt
                elif np.issubdtype(pdt, np.complexfloating):
                    want = _COMPLEX[np.dtype(declared)]
                else:
                    want = np.dtype(declared)
            else:
                declared = variant.nu_dtype
                want = _REAL[pdt] if declared is None else np.dtype(declared)
            assert tree[key].shape == p.shape, (field, key)
            assert np.dtype(tree[key].dtype) == want, (field, key)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_jitted_update_preserves_state_dtypes(name: str) -> None:
    tx, step, traces = _variant(name)
    params = _mixed_params()
    grads = _grad_stream(params, 3, seed=13)

    state0 = tx.init(params)
    state = state0
    for g in grads:
        updates, state = step(g, state, params)
        chex.assert_trees_all_equal_dtypes(updates, g)
        chex.assert_trees_all_equal_shapes(updates, g)
        chex.assert_trees_all_equal_dtypes(state, state0)
        chex.assert_trees_all_equal_shapes(state, state0)
    # Feeding the output state back in never retraced (this jitted update is
    # shared by every test of the variant): the state's dtypes, shapes and weak
    # types are stable.
    assert len(traces) == 1


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_checkpoint_round_trip_is_bitwise(name: str, jit: bool) -> None:
    params = _mixed_params()
    grads = _grad_stream(params, 5, seed=14)
    _, state, params_mid = _run(name, params, grads[:2], jit=jit)

    leaves, treedef = jax.tree_util.tree_flatten(state)
    saved = [np.array(leaf) for leaf in leaves]
    assert all(type(leaf) is np.ndarray for leaf in saved)
    restored = jax.tree_util.tree_unflatten(treedef, saved)

    original = _run(name, params_mid, grads[2:], state, jit=jit)
    resumed = _run(name, params_mid, grads[2:], restored, jit=jit)
    _assert_trees_equal(resumed, original)


DECAYED = ["adamw", "nadamw", "adamaxw", "adoptw", "lamb", "adam_atan2", "ademamix"]


@pytest.mark.parametrize("name", DECAYED)
def test_zero_weight_decay_computes_none_and_keeps_the_state_structure(name):
    """The builder's rule: a plain 0 (or None) computes no decay, an array or
    a schedule always does, and the state has the same structure either way,
    so that inject_hyperparams sees the same chain at init and jitted."""
    factory = getattr(adamx, name)
    params = {"w": jnp.arange(1.0, 5.0)}
    grads = {"w": jnp.ones(4)}
    without = factory(1e-2, weight_decay=0.0)
    with_step = factory(1e-2, weight_decay=jnp.asarray(0.0))

    def structure(tx):
        return jax.tree.structure(tx.init(params))

    assert structure(without) == structure(with_step)
    assert structure(
        optax.inject_hyperparams(factory)(1e-2, weight_decay=0.0)
    ).num_leaves
    if name != "lamb":  # no decay computed: no params needed (LAMB's ratio needs them)
        without.update(grads, without.init(params))
    u0, _ = without.update(grads, without.init(params), params)
    u1, _ = with_step.update(grads, with_step.init(params), params)
    np.testing.assert_array_equal(np.asarray(u0["w"]), np.asarray(u1["w"]))
    injected = optax.inject_hyperparams(factory)(learning_rate=1e-2, weight_decay=0.0)
    state = injected.init(params)
    updates, state = jax.jit(injected.update)(grads, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), np.asarray(u0["w"]), rtol=1e-6)
