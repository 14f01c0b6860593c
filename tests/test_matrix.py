"""A test matrix over every adamx transform, option by option.

The table :data:`catalogue.VARIANTS` holds every catalogued ``scale_by_*``
direction (with its defaults and with each boolean switch flipped),
``bias_correction`` and every optimizer alias, each built with the
non-default hyperparameters of :data:`catalogue.TEST_HP`; a transform added
to the catalogue joins every test here. Expected values come from the float64
reference :func:`reference.family_updates`, written on the (real, imaginary)
parts of each leaf, or from hand arithmetic; two adamx runs are compared only
where the claim is that they agree (jit against no jit, vmap against one by
one, a restored state against the original).

Each variant is checked for:

1. complex64 leaves: updates equal the reference on the (real, imaginary)
   split (first moments average the parts, second moments hold
   :math:`|g|^2`), in complex64, with real second moments; a transform the
   catalogue marks as refusing complex leaves (AdamAtan2, defined on real
   numbers only) refuses them at ``init`` and ``update``, naming the leaf
   and the reason;
2. float32, float16 and bfloat16 parameters: updates in the parameter dtype,
   moments in their declared dtypes, values within a dtype-dependent tolerance
   of the float64 reference; float32 parameters with bfloat16 moments, to
   the reference; float16 parameters with all-zero gradients at the
   factory's defaults (eps underflows in float16): the reference's update,
   exactly zero where it is zero, and a finite state;
3. empty trees (``{}`` and ``[]``) under jit (the int32 count still
   advances), zero-size leaves and scalar leaves;
4. None leaves, and leaves masked out by ``optax.masked`` (left untouched,
   ``optax.MaskedNode`` in the state);
5. jit against no jit over 5 steps, every hyperparameter a float32 array
   (traced under jit), both against the reference;
6. ``jax.vmap`` over 3 independent problems against running them one by one;
7. meta-gradients in float64: ``jax.grad`` of a loss after a few steps with
   respect to the learning rate and the decays and ``eps`` matches a central
   finite difference; with ``eps_root > 0`` it is finite at an all-zero
   gradient;
8. the state through ``tree_flatten``/``tree_unflatten`` and
   ``tree_flatten_with_path``: identical, and it continues bit for bit;
9. hypothesis fuzzing of hyperparameters and gradients from 1e-30 to 1e30
   with nan and ±inf entries: a NaN appears in the updates or the state only
   where the gradient history held a non-finite value, and the state keeps its
   count, structure, shapes and dtypes. Examples: 60 per variant in the "ci"
   hypothesis profile, so 60 x len(VARIANTS) fuzzed cases in all (38 variants
   today: 2280 cases), one parametrized ``@given`` test per variant.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalogue import (
    TEST_HP,
    VARIANTS,
    Variant,
    counts,
    ids,
    moments,
)
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

BF16 = jnp.bfloat16
REAL_OF = {
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float16): np.dtype(np.float16),
    np.dtype(BF16): np.dtype(BF16),
    np.dtype(np.complex64): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
}
# Float32 against the float64 reference, relative to each leaf's largest value.
RTOL = 5e-6
# The leaves most tests use: sharing shapes lets eager runs reuse compiled ops.
SHAPES = {"w": ((2, 4), np.float32), "s": ((), np.float32)}

COMPLEX_OK = [v for v in VARIANTS if v.entry.complex_ok]
COMPLEX_REFUSED = [v for v in VARIANTS if not v.entry.complex_ok]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _wide(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _assert_close(actual: Any, expected: Any, rtol: float, what: str = "") -> None:
    """``|actual - expected| <= rtol * (|expected| + max |expected|)``."""
    actual, expected = _wide(actual), _wide(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(expected)), what
    atol = rtol * float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _normal(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    x = rng.normal(size=shape)
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        x = x + 1j * rng.normal(size=shape)
    return np.asarray(x).astype(dtype)


def _problem(shapes: dict[str, tuple[tuple[int, ...], Any]], steps: int, seed: int):
    """Parameters and ``steps`` gradients; each step has its own scale."""
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(_normal(rng, s, d)) for k, (s, d) in shapes.items()}
    scales = 10.0 ** rng.uniform(-1.0, 1.0, size=steps)
    grads = [
        {
            k: jnp.asarray((scale * _normal(rng, s, np.complex128)).astype(d))
            if np.issubdtype(np.dtype(d), np.complexfloating)
            else jnp.asarray((scale * rng.normal(size=s)).astype(d))
            for k, (s, d) in shapes.items()
        }
        for scale in scales
    ]
    return params, grads


@functools.cache
def _tx(variant: Variant):
    """The variant built with :data:`TEST_HP`, one per variant for the file."""
    return variant.build()


def _run(tx, params, grads, state=None):
    """Updates of ``tx`` over ``grads`` (params fixed) and the final state."""
    state = tx.init(params) if state is None else state
    updates = []
    for g in grads:
        u, state = tx.update(g, state, params)
        updates.append(u)
    return updates, state


def _check_against_reference(
    variant, params, grads, updates, rtol=RTOL, leaves=None, defaults=False
):
    """Every step's update of each leaf against the float64 reference.

    ``defaults``: the variant was built with its factory's defaults rather
    than with :data:`catalogue.TEST_HP`.
    """
    for leaf in leaves or params:
        expected = variant.reference(
            [_wide(g[leaf]) for g in grads], _wide(params[leaf]), defaults=defaults
        )
        for t, (u, e) in enumerate(zip(updates, expected, strict=True), start=1):
            _assert_close(u[leaf], e, rtol, f"{variant.id} leaf {leaf} step {t}")


def _check_moment_dtypes(variant, state, params) -> None:
    """mu* in the parameter's dtype, nu* in its real dtype (the defaults)."""
    trees = moments(state)
    assert tuple(f for f, _ in trees) == variant.entry.moments, trees
    for field, tree in trees:
        for key, p in params.items():
            want = np.dtype(p.dtype)
            want = want if field.startswith("mu") else REAL_OF[want]
            assert tree[key].shape == p.shape, (field, key)
            assert np.dtype(tree[key].dtype) == want, (field, key, tree[key].dtype)


def _assert_trees_close(actual, expected, rtol: float, what: str) -> None:
    """Same structure and dtypes; floats close (scaled), integers equal."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    pairs = zip(
        jax.tree_util.tree_leaves_with_path(actual),
        jax.tree.leaves(expected),
        strict=True,
    )
    for (path, a), e in pairs:
        where = f"{what} {jax.tree_util.keystr(path)}"
        assert np.asarray(a).dtype == np.asarray(e).dtype, where
        if np.issubdtype(np.asarray(a).dtype, np.integer):
            np.testing.assert_array_equal(a, e, err_msg=where)
        else:
            _assert_close(a, e, rtol, where)


def _assert_trees_identical(actual, expected, what: str) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert (a.dtype, a.shape) == (e.dtype, e.shape), what
        np.testing.assert_array_equal(a, e, err_msg=what)


# ---------------------------------------------------------------------------
# 1. Complex parameters
# ---------------------------------------------------------------------------

COMPLEX_SHAPES = {"z": ((2, 4), np.complex64), "s": ((), np.float32)}


@pytest.mark.parametrize("variant", COMPLEX_OK, ids=ids(COMPLEX_OK))
def test_complex_leaves_match_the_real_imaginary_reference(variant: Variant):
    # Six steps: RAdam's rectified branch starts at step 5 (TEST_HP).
    params, grads = _problem(COMPLEX_SHAPES, steps=6, seed=1)
    updates, state = _run(_tx(variant), params, grads)
    for u in updates:
        assert u["z"].dtype == jnp.complex64 and u["s"].dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(u["z"])))
    _check_against_reference(variant, params, grads, updates)
    _check_moment_dtypes(variant, state, params)


@pytest.mark.parametrize("variant", COMPLEX_REFUSED, ids=ids(COMPLEX_REFUSED))
def test_complex_leaves_are_refused_naming_the_leaf(variant: Variant):
    params, grads = _problem(COMPLEX_SHAPES, steps=1, seed=1)
    tx = _tx(variant)
    because = variant.entry.complex_refusal

    def message(what):
        return re.escape(
            f"{variant.name}: {what} leaf ['z'] has dtype complex64; {because}"
        )

    with pytest.raises(TypeError, match=message("parameter")):
        tx.init(params)
    real = {"s": params["s"]}
    with pytest.raises(TypeError, match=message("update")):
        tx.update(grads[0], tx.init(real), real)


# ---------------------------------------------------------------------------
# 2. float32, float16 and bfloat16 parameters
# ---------------------------------------------------------------------------

# float16 second moments of small gradients are subnormal (the documented
# float16 caveat), hence the looser float16 bound than its 2**-11 rounding.
DTYPE_RTOL = {
    np.dtype(np.float32): RTOL,
    np.dtype(np.float16): 1.5e-2,
    np.dtype(BF16): 6e-2,
}


@pytest.mark.parametrize("dtype", list(DTYPE_RTOL), ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_float_dtypes_keep_their_dtype_and_stay_close(variant: Variant, dtype):
    shapes = {k: (shape, dtype) for k, (shape, _) in SHAPES.items()}
    params, grads = _problem(shapes, steps=6, seed=2)
    updates, state = _run(_tx(variant), params, grads)
    for u in updates:
        for leaf in u.values():
            assert leaf.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(leaf)))
    _check_moment_dtypes(variant, state, params)
    assert [int(c) for c in counts(state)] == [6]
    # The reference gets the same (rounded) inputs, in float64.
    _check_against_reference(variant, params, grads, updates, DTYPE_RTOL[dtype])


STORAGE_VARIANTS = [v for v in VARIANTS if v.entry.takes_storage]
# Six bfloat16 roundings (2**-9 each) of every moment, and a quotient of two
# of them: measured worst 2.1e-2 of the leaf's largest update (ADOPT, whose
# normalised gradient divides by the stored second moment; AMSGrad 4.7e-3);
# 5e-2 leaves a margin of 2x, and a moment that stopped moving or lost its
# sign is far outside.
BF16_STORAGE_RTOL = 5e-2


@pytest.mark.parametrize("variant", STORAGE_VARIANTS, ids=ids(STORAGE_VARIANTS))
def test_bfloat16_storage_for_float32_parameters_stays_close(variant: Variant):
    params, grads = _problem(SHAPES, steps=6, seed=2)
    updates, state = _run(variant.build(mu_dtype=BF16, nu_dtype=BF16), params, grads)
    for u in updates:
        for leaf in u.values():
            assert leaf.dtype == jnp.float32
            assert bool(jnp.all(jnp.isfinite(leaf)))
    trees = moments(state)
    assert tuple(f for f, _ in trees) == variant.entry.moments
    for field, tree in trees:
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {np.dtype(BF16)}, field
    _check_against_reference(variant, params, grads, updates, BF16_STORAGE_RTOL)


# Seven steps: at the default b2 = 0.999 RAdam's rectified branch starts at 6.
ZERO_STEPS = 7


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_float16_zero_gradients_match_the_reference_at_the_defaults(variant):
    """Zero gradients on float16 parameters, every hyperparameter at its default.

    The defaults are where float16 bites: eps = 1e-8 and a zero second moment
    are 0 in float16, and a direction must stay 0 / (positive), never 0 / 0.
    A direction's update is then exactly 0 (Yogi's moments start at 1e-6 and
    give small nonzero ones), an optimizer's its weight decay alone, as the
    reference says. A decoupled weight decay is raised to 0.1, so that the
    decay step (lr * 0.1 * theta) is a normal float16 number held to 1e-3.
    """
    shapes = {k: (shape, np.float16) for k, (shape, _) in SHAPES.items()}
    params, _ = _problem(shapes, steps=0, seed=9)
    grads = [jax.tree.map(jnp.zeros_like, params)] * ZERO_STEPS
    decays = variant.alias and "weight_decay" in variant.parameters
    hp = {"weight_decay": 0.1} if decays else {}
    tx = variant.build_default(**hp)
    state, updates = tx.init(params), []
    for g in grads:  # eagerly: op by op, compiled once for every variant
        u, state = tx.update(g, state, params)
        updates.append(u)
        assert {leaf.dtype for leaf in jax.tree.leaves(u)} == {np.dtype(np.float16)}
        for leaf in jax.tree.leaves(state):
            assert bool(jnp.all(jnp.isfinite(leaf)))
    # Yogi's moments start at 1e-6, a float16 subnormal (17 spacings of 6e-8),
    # and its first moment decays through fewer and fewer spacings: each
    # step's storage rounds it by several percent, which its small direction
    # inherits (measured worst 11% over these steps). Every other family's
    # update is exactly zero or a weight decay computed in float32.
    rtol = 0.25 if variant.family == "yogi" else 1e-3
    for key, p in params.items():
        expected = variant.reference(
            [_wide(g[key]) for g in grads], _wide(p), defaults=True, **hp
        )
        for t, (u, e) in enumerate(zip(updates, expected, strict=True), start=1):
            u, where = _wide(u[key]), f"{key} step {t}"
            # Where the reference is exactly zero (a direction from zero
            # moments), so is the update: 0 / positive, never 0 / 0 or a
            # rounding residue.
            np.testing.assert_array_equal(u[e == 0], 0.0, err_msg=where)
            # float16 rounding (2**-11), and two of its subnormal spacings
            # (6e-8) for the entries of theta small enough to make the decay
            # step subnormal.
            np.testing.assert_allclose(u, e, rtol=rtol, atol=1.2e-7, err_msg=where)


# ---------------------------------------------------------------------------
# 3. Empty trees, zero-size and scalar leaves
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [{}, []], ids=["dict", "list"])
@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_empty_tree(variant: Variant, empty):
    tx = _tx(variant)
    update = jax.jit(tx.update)
    state0 = tx.init(empty)
    state = state0
    for step in range(1, 4):
        updates, state = update(empty, state, empty)
        assert updates == empty and type(updates) is type(empty)
        # The count still advances, as an int32.
        assert [(int(c), c.dtype) for c in counts(state)] == [(step, jnp.int32)]
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    for _, tree in moments(state):
        assert tree == empty


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_zero_size_and_scalar_leaves(variant: Variant):
    shapes = {
        "e0": ((0,), np.float32),
        "e30": ((3, 0), np.float32),
        **SHAPES,
    }
    params, grads = _problem(shapes, steps=4, seed=3)
    updates, state = _run(_tx(variant), params, grads)
    for u in updates:
        for key, p in params.items():
            assert (u[key].shape, u[key].dtype) == (p.shape, p.dtype), key
    _check_moment_dtypes(variant, state, params)
    _check_against_reference(variant, params, grads, updates)


# ---------------------------------------------------------------------------
# 4. None leaves and masked leaves
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_none_leaves_keep_their_place(variant: Variant):
    flat_params, flat_grads = _problem(SHAPES, steps=3, seed=4)

    def with_nones(tree):
        return {"w": tree["w"], "n": None, "l": [None, tree["s"]]}

    params = with_nones(flat_params)
    grads = [with_nones(g) for g in flat_grads]
    updates, state = _run(_tx(variant), params, grads)
    for u in updates:
        assert jax.tree.structure(u) == jax.tree.structure(params)
        assert u["n"] is None and u["l"][0] is None
    for field, tree in moments(state):
        assert jax.tree.structure(tree) == jax.tree.structure(params), field
    _check_against_reference(
        variant,
        flat_params,
        flat_grads,
        [{"w": u["w"], "s": u["l"][1]} for u in updates],
    )


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_masked_leaves_are_untouched(variant: Variant):
    shapes = {**SHAPES, "b": ((2, 4), np.float32)}
    params, grads = _problem(shapes, steps=3, seed=5)
    params["steps"] = jnp.zeros([], jnp.int32)
    grads = [{**g, "steps": jnp.asarray(t, jnp.int32)} for t, g in enumerate(grads)]
    mask = {"w": True, "b": False, "s": True, "steps": False}
    tx = optax.masked(_tx(variant), mask)
    updates, state = _run(tx, params, grads)
    for g, u in zip(grads, updates, strict=True):
        for key in ("b", "steps"):
            assert u[key].dtype == g[key].dtype
            np.testing.assert_array_equal(u[key], g[key])
    _check_against_reference(variant, params, grads, updates, leaves=["w", "s"])
    trees = moments(state.inner_state)
    assert trees or variant.family == "bias"
    for field, tree in trees:
        assert isinstance(tree["b"], optax.MaskedNode), field
        assert isinstance(tree["steps"], optax.MaskedNode), field
        assert tree["w"].shape == (2, 4) and tree["s"].shape == (), field
    assert [int(c) for c in counts(state)] == [3]


# ---------------------------------------------------------------------------
# 5. jit against no jit (the fuzzer below shares the compiled update)
# ---------------------------------------------------------------------------

STEPS = 5
# Hyperparameters the fuzzer draws (its other ones are TEST_HP's values).
FUZZED = ("learning_rate", "b1", "b2", "eps", "eps_root", "decay")


def _traced_names(variant: Variant) -> list[str]:
    """Every TEST_HP hyperparameter the variant takes: all are passed as arrays."""
    return [k for k in TEST_HP if k in variant.hyperparameters]


@functools.cache
def _jitted_update(variant: Variant):
    """``update(hp, g, state, params)`` of the variant built from ``hp``, jitted.

    The hyperparameters are arguments, so one compilation serves every call.
    """

    def update(hp, g, state, params):
        return variant.build(**hp).update(g, state, params)

    return jax.jit(update)


def _steps(variant: Variant, hp, params, grads, *, jit: bool):
    """Updates and states (the initial one first) over ``grads``, params fixed."""
    tx = variant.build(**hp)
    states = [tx.init(params)]
    updates = []
    for g in grads:
        if jit:
            u, state = _jitted_update(variant)(hp, g, states[-1], params)
        else:
            u, state = tx.update(g, states[-1], params)
        updates.append(u)
        states.append(state)
    return updates, states


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_jit_and_no_jit_agree(variant: Variant):
    """Every hyperparameter as a float32 array: traced under jit, concrete eager.

    Both runs match the float64 reference at the decimal TEST_HP, so an array
    hyperparameter means its value whether traced or not (RAdam crosses its
    traced threshold at step 5 of the 5).
    """
    params, grads = _problem(SHAPES, steps=STEPS, seed=6)
    hp = {k: jnp.asarray(TEST_HP[k], jnp.float32) for k in _traced_names(variant)}
    jitted = _steps(variant, hp, params, grads, jit=True)
    eager = _steps(variant, hp, params, grads, jit=False)
    # XLA fuses the float32 arithmetic of a jitted update, so the two agree to
    # a few units in the last place; counts agree exactly.
    _assert_trees_close(jitted, eager, 1e-6, variant.id)
    _check_against_reference(variant, params, grads, eager[0])


# ---------------------------------------------------------------------------
# 6. vmap over independent problems
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_vmap_equals_one_by_one(variant: Variant):
    batch, steps = 3, 4
    shapes = {k: ((batch, *shape), d) for k, (shape, d) in SHAPES.items()}
    params, grads = _problem(shapes, steps=steps, seed=7)
    tx = _tx(variant)
    state = jax.vmap(tx.init)(params)
    updates = []
    for g in grads:
        u, state = jax.vmap(tx.update)(g, state, params)
        updates.append(u)
    assert [c.tolist() for c in counts(state)] == [[steps] * batch]
    for i in range(batch):
        pick = functools.partial(jax.tree.map, lambda x, i=i: np.asarray(x)[i])
        one_updates, one_state = _run(tx, pick(params), [pick(g) for g in grads])
        what = f"{variant.id} problem {i}"
        _assert_trees_close([pick(u) for u in updates], one_updates, 1e-6, what)
        _assert_trees_close(pick(state), one_state, 1e-6, what)


# ---------------------------------------------------------------------------
# 7. Meta-gradients
# ---------------------------------------------------------------------------

META = ("learning_rate", "b1", "b2", "eps", "decay")
CURVATURE = np.array([1.0, 2.0, 0.5])
TARGET = np.array([0.3, -0.2, 0.1])
START = np.array([1.0, -1.0, 0.5])
# Steps before the loss; RAdam needs 5 to reach its rectified branch.
META_STEPS = {"radam": 6}
DIRECTION_STEP = 0.1  # directions are applied as theta - 0.1 * d


def _meta_loss(variant: Variant, start: np.ndarray):
    """The quadratic loss after some steps, as a function of hyperparameters."""

    def loss(hp, **constants):
        tx = variant.build(**{**constants, **hp})
        params = {"w": jnp.asarray(start)}
        state = tx.init(params)
        for _ in range(META_STEPS.get(variant.family, 3)):
            g = {"w": jnp.asarray(CURVATURE) * (params["w"] - TARGET)}
            u, state = tx.update(g, state, params)
            step = u["w"] if variant.alias else -DIRECTION_STEP * u["w"]
            params = {"w": params["w"] + step}
        return 0.5 * jnp.sum(jnp.asarray(CURVATURE) * (params["w"] - TARGET) ** 2)

    return loss


def _central_difference(loss, hp: dict[str, Any], name: str) -> float:
    x = float(hp[name])
    h = 1e-6 * x
    up = loss({**hp, name: jnp.asarray(x + h)})
    down = loss({**hp, name: jnp.asarray(x - h)})
    return float((up - down) / (2 * h))


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_meta_gradient_matches_central_difference(variant: Variant):
    names = [k for k in META if k in variant.hyperparameters]
    assert names
    with jax.enable_x64(True):
        loss = _meta_loss(variant, START)
        hp = {k: jnp.asarray(TEST_HP[k], jnp.float64) for k in names}
        grads = jax.grad(loss)(hp)
        for name in names:
            assert grads[name].dtype == jnp.float64
            got = float(grads[name])
            assert np.isfinite(got), name
            expected = _central_difference(loss, hp, name)
            np.testing.assert_allclose(
                got, expected, rtol=1e-5, atol=1e-9, err_msg=name
            )


EPS_ROOT_VARIANTS = [v for v in VARIANTS if "eps_root" in v.hyperparameters]
# Without weight decay and with Yogi's moments starting at zero, every update
# from a zero gradient is exactly zero.
ZERO_START = {"weight_decay": 0.0, "initial_accumulator_value": 0.0}


@pytest.mark.parametrize("variant", EPS_ROOT_VARIANTS, ids=ids(EPS_ROOT_VARIANTS))
def test_meta_gradient_at_an_all_zero_gradient_is_finite(variant: Variant):
    # Starting at the minimum every gradient is exactly zero, so every update is
    # zero for any hyperparameters: the loss is constant and its gradient 0.
    # eps_root > 0 is what keeps d sqrt(v + eps_root) / dv finite at v = 0.
    names = [k for k in (*META, "eps_root") if k in variant.hyperparameters]
    with jax.enable_x64(True):
        constants = {k: v for k, v in ZERO_START.items() if k in variant.parameters}
        loss = functools.partial(_meta_loss(variant, TARGET), **constants)
        hp = {k: jnp.asarray(TEST_HP[k], jnp.float64) for k in names}
        hp["eps_root"] = jnp.asarray(1e-8, jnp.float64)
        grads = jax.grad(loss)(hp)
        for name in names:
            got = float(grads[name])
            assert np.isfinite(got), (variant.id, name, got)
            assert _central_difference(loss, hp, name) == 0.0, name
            assert got == 0.0, (variant.id, name, got)


# ---------------------------------------------------------------------------
# 8. Flatten and unflatten
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
def test_state_survives_flatten_and_unflatten(variant: Variant):
    shapes = dict(SHAPES)
    if variant.family != "atan2":
        shapes["z"] = ((2, 4), np.complex64)
    params, grads = _problem(shapes, steps=5, seed=8)
    tx = _tx(variant)
    _, state = _run(tx, params, grads[:2])

    leaves, treedef = jax.tree_util.tree_flatten(state)
    restored = jax.tree_util.tree_unflatten(treedef, [np.array(x) for x in leaves])
    _assert_trees_identical(restored, state, "tree_flatten")

    with_path, path_treedef = jax.tree_util.tree_flatten_with_path(state)
    assert path_treedef == treedef
    by_path = jax.tree_util.tree_unflatten(treedef, [np.array(x) for _, x in with_path])
    _assert_trees_identical(by_path, state, "tree_flatten_with_path")
    paths = [jax.tree_util.keystr(p) for p, _ in with_path]
    assert len(set(paths)) == len(paths)
    assert paths == [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(by_path)[0]
    ]

    original = _run(tx, params, grads[2:], state)
    for copy in (restored, by_path):
        _assert_trees_identical(_run(tx, params, grads[2:], copy), original, "resume")


# ---------------------------------------------------------------------------
# 9. Fuzzing: non-finite values stay where they came from
# ---------------------------------------------------------------------------


def _log_uniform(low: float, high: float):
    return st.floats(np.log10(low), np.log10(high)).map(lambda e: 10.0**e)


HYPERPARAMETERS = st.fixed_dictionaries(
    {
        "b1": st.floats(0.0, 0.999),
        "b2": st.floats(0.5, 0.99999),
        "eps": _log_uniform(1e-12, 1e-3),
        "eps_root": st.sampled_from([0.0, 1e-16, 1e-8]),
        "learning_rate": _log_uniform(1e-6, 1.0),
        "decay": st.floats(0.0, 0.999),
        # The others at TEST_HP's values, traced all the same: the update is
        # then the one test_jit_and_no_jit_agree compiled.
        **{k: st.just(v) for k, v in TEST_HP.items() if k not in FUZZED},
    }
)


RUN_ENTRIES = 9  # the entries of SHAPES: 2 * 4 + 1


@st.composite
def _gradients(draw) -> np.ndarray:
    """(STEPS, RUN_ENTRIES) float32: mantissa * 10**k, k in [-30, 30], and
    nan/±inf at a few random places."""
    shape = (STEPS, RUN_ENTRIES)
    mantissa = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1.0, 1.0)))
    exponent = draw(hnp.arrays(np.int64, shape, elements=st.integers(-30, 30)))
    values = (mantissa * 10.0**exponent).astype(np.float32)
    specials = st.sampled_from([np.nan, np.inf, -np.inf])
    place = st.tuples(st.integers(0, STEPS - 1), st.integers(0, RUN_ENTRIES - 1))
    for (t, i), value in draw(st.lists(st.tuples(place, specials), max_size=3)):
        values[t, i] = value
    return values


def _leaf_entries(flat: np.ndarray, key: str) -> np.ndarray:
    """The columns of a flat (steps, RUN_ENTRIES) array that make up leaf ``key``."""
    if key == "w":
        return flat[..., :8].reshape(*flat.shape[:-1], 2, 4)
    return flat[..., 8]


def _first_history(flat, t, key, where) -> str:
    """The first offending entry of leaf ``key`` and its gradients up to step t."""
    index = tuple(np.argwhere(where)[0])
    history = _leaf_entries(flat[: t + 1], key)[(slice(None), *index)]
    return f"entry {key}{[int(i) for i in index]}, gradients {history.tolist()}"


def _check_fuzzed_step(variant, t, flat, update, state, state0) -> None:
    """NaN only where the history up to step t is non-finite; state intact."""
    tainted = np.logical_or.accumulate(~np.isfinite(flat[: t + 1]), axis=0)[-1]
    for key in SHAPES:
        bad = _leaf_entries(tainted, key)
        nan = np.isnan(np.asarray(update[key]))
        # LAMB's trust ratio is a norm over the whole leaf: one non-finite
        # entry may spread over its leaf, never to another leaf.
        allowed = np.full(bad.shape, bad.any()) if variant.family == "lamb" else bad
        assert not np.any(nan & ~allowed), (
            f"{variant.id}: NaN update at step {t + 1} where the gradient history "
            f"of leaf {key} is finite: {_first_history(flat, t, key, nan & ~allowed)}"
        )
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    for (path, x), x0 in zip(
        jax.tree_util.tree_leaves_with_path(state),
        jax.tree.leaves(state0),
        strict=True,
    ):
        x = np.asarray(x)
        where = f"{variant.id} state {jax.tree_util.keystr(path)} at step {t + 1}"
        assert (x.shape, x.dtype) == (np.shape(x0), np.asarray(x0).dtype), where
        last = path[-1]
        if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "count":
            assert int(x) == t + 1, where
            continue
        assert isinstance(last, jax.tree_util.DictKey), where
        bad = _leaf_entries(tainted, last.key)
        nan = np.isnan(x)
        assert not np.any(nan & ~bad), (
            f"{where}: NaN where the gradient history is finite: "
            f"{_first_history(flat, t, last.key, nan & ~bad)}"
        )


FUZZ_PARAMS = {
    "w": jnp.linspace(-1.0, 1.5, 8, dtype=jnp.float32).reshape(2, 4),
    "s": jnp.asarray(0.75, jnp.float32),
}


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
# No shrinking: a failure reports the first example found, with the offending
# entry's gradient history in the message, and the file stays fast.
@settings(phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(hp=HYPERPARAMETERS, flat=_gradients())
def test_fuzz_non_finite_values_stay_put(variant: Variant, hp, flat):
    """60 examples per variant in the "ci" profile (conftest)."""
    traced = {k: jnp.asarray(hp[k], jnp.float32) for k in _traced_names(variant)}
    grads = [{k: jnp.asarray(_leaf_entries(row, k)) for k in SHAPES} for row in flat]
    updates, states = _steps(variant, traced, FUZZ_PARAMS, grads, jit=True)
    for t in range(STEPS):
        _check_fuzzed_step(variant, t, flat, updates[t], states[t + 1], states[0])
