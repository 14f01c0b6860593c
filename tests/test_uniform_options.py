"""Every adamx variant supports the same options, table-driven over the catalogue.

The table is every ``scale_by_*`` and every optimizer alias of
``tests/catalogue.py``, each built with its defaults; a variant added to the
catalogue is covered here without editing this file. Numerics against the
float64 reference, traced hyperparameters and float16 zero gradients are
test_matrix's; this file checks that the shared options behave the same
everywhere:

- ``mu_dtype``/``nu_dtype`` set the stored dtypes of every moment the
  catalogue declares;
- updates come out in the gradient's dtype, and no arithmetic runs in a
  narrow float (the jaxpr is inspected);
- the step count saturates at the int32 maximum;
- decoupled weight decay takes a mask;
- ``optax.inject_hyperparams`` of every hyperparameter works under jit, for
  every direction and optimizer, and means the float32 value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalogue import (
    ALL,
    BY_NAME,
    OPTIMIZERS,
    VARIANTS,
    build,
    counts,
    ids,
    moments,
)

INT32_MAX = 2**31 - 1
NARROW = {np.dtype(jnp.bfloat16), np.dtype(jnp.float16)}
ARITHMETIC = {
    "add", "sub", "mul", "div", "sqrt", "rsqrt", "pow", "integer_pow", "exp",
    "log", "log1p", "expm1", "max", "min", "atan2", "abs", "sign", "neg",
    "reduce_sum", "square", "select_n", "dot_general",
}  # fmt: skip


DECOUPLED = [name for name in OPTIMIZERS if BY_NAME[name].decoupled]


def _params(dtype=jnp.float32):
    key_w, key_b = jax.random.split(jax.random.PRNGKey(0))
    return {
        "w": jax.random.normal(key_w, (3, 4)).astype(dtype),
        "b": jax.random.normal(key_b, (4,)).astype(dtype),
    }


def _grads(params, step):
    key = jax.random.PRNGKey(100 + step)
    return jax.tree.map(
        lambda p: (jax.random.normal(key, p.shape) * 10.0 ** (step % 3 - 1)).astype(
            p.dtype
        ),
        params,
    )


@pytest.mark.parametrize("name", ALL)
def test_mu_dtype_and_nu_dtype_set_every_moment(name):
    tx = build(name, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float16)
    params = _params()
    state = tx.init(params)
    _, state = tx.update(_grads(params, 0), state, params)
    found = moments(state)
    assert tuple(field for field, _ in found) == BY_NAME[name].moments, found
    for field, tree in found:
        expected = jnp.bfloat16 if field.startswith("mu") else jnp.float16
        leaves = jax.tree.leaves(tree)
        assert leaves and all(leaf.dtype == expected for leaf in leaves), field


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", ALL)
def test_updates_keep_the_gradient_dtype(name, dtype):
    tx = build(name)
    params = _params(dtype)
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update(_grads(params, step), state, params)
        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(leaf)))


def _narrow_arithmetic(tx, params):
    """Equations of ``tx.update``'s jaxpr that do arithmetic on bf16/f16 operands."""
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(tx.update)(_grads(params, 0), state, params)
    narrow = []

    def scan(jaxpr):
        for eqn in jaxpr.eqns:
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", None)
                if inner is not None:
                    scan(getattr(inner, "jaxpr", inner))
            if eqn.primitive.name not in ARITHMETIC:
                continue
            dtypes = {np.dtype(v.aval.dtype) for v in eqn.invars if hasattr(v, "aval")}
            if dtypes & NARROW:
                narrow.append(str(eqn))

    scan(jaxpr.jaxpr)
    return narrow


def test_the_narrow_arithmetic_check_sees_optax_rounding():
    # optax computes in the parameter dtype: the check must flag it.
    assert _narrow_arithmetic(optax.adam(1e-2), _params(jnp.bfloat16))


@pytest.mark.parametrize("name", ALL)
def test_no_arithmetic_on_narrow_floats(name):
    narrow = _narrow_arithmetic(build(name), _params(jnp.bfloat16))
    assert narrow == [], "\n".join(narrow)


def _set_counts(state, value):
    def visit(node):
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            changes = {
                f: jnp.asarray(value, jnp.int32)
                for f in node._fields
                if f == "count" and jnp.result_type(getattr(node, f)) == jnp.int32
            }
            node = node._replace(**changes)
            return type(node)(*(visit(child) for child in node))
        if isinstance(node, tuple):
            return tuple(visit(child) for child in node)
        return node

    return visit(state)


def _counts(state):
    return [int(c) for c in counts(state)]


@pytest.mark.parametrize("name", ALL)
def test_step_count_saturates(name):
    tx = build(name)
    params = _params()
    state = _set_counts(tx.init(params), INT32_MAX - 1)
    assert _counts(state) and set(_counts(state)) == {INT32_MAX - 1}
    for step in range(3):
        updates, state = tx.update(_grads(params, step), state, params)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(updates))
    assert set(_counts(state)) == {INT32_MAX}


@pytest.mark.parametrize("name", DECOUPLED)
def test_weight_decay_takes_a_mask(name):
    params = _params()
    grads = _grads(params, 0)

    def first_update(**kwargs):
        tx = build(name, **kwargs)
        return tx.update(grads, tx.init(params), params)[0]

    decayed = first_update(weight_decay=0.5, mask={"w": True, "b": False})
    undecayed = first_update(weight_decay=0.0)
    np.testing.assert_array_equal(decayed["b"], undecayed["b"])
    assert float(jnp.max(jnp.abs(decayed["w"] - undecayed["w"]))) > 1e-4


INJECTED = [v for v in VARIANTS if not v.options and v.entry.role != "bias"]
INJECT_STEPS = 6  # RAdam's rectified branch starts at step 5 with TEST_HP


@pytest.mark.parametrize("variant", INJECTED, ids=ids(INJECTED))
def test_inject_hyperparams_under_jit(variant):
    """Every TEST_HP hyperparameter injected: state arrays, traced in the update.

    An injected value is held as a float32 array, so it means its float32
    value: the same transform built from those float32 values as Python
    floats is the expected one (the float64 reference is test_matrix's).
    """
    hp = variant.hyperparameters
    params = _params()
    injected = optax.inject_hyperparams(variant.entry.factory)(**hp)
    plain = variant.build(**{k: float(np.float32(v)) for k, v in hp.items()})
    state, plain_state = injected.init(params), plain.init(params)
    assert set(state.hyperparams) >= set(hp)
    step = jax.jit(injected.update)
    for t in range(INJECT_STEPS):
        grads = _grads(params, t)
        updates, state = step(grads, state, params)
        expected, plain_state = plain.update(grads, plain_state, params)
        for got, want in zip(
            jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True
        ):
            # Jitted and eager float32 arithmetic differ by a few ulps of the
            # leaf's scale (XLA fuses the jitted update), hence the floor.
            atol = 2e-6 * float(np.max(np.abs(want)))
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=atol)
