"""Every adamx variant supports the same options, table-driven over the whole API.

The table is built from ``adamx.__all__``: every ``scale_by_*`` and every
optimizer alias. A variant added to the API is covered here without editing
this file. Per-variant numerics are checked against float64 references in the
variant's own test file; this file checks that the shared options behave the
same everywhere:

- ``mu_dtype``/``nu_dtype`` set the stored dtypes of every first/second moment;
- updates come out in the gradient's dtype, and no arithmetic runs in a
  narrow float (the jaxpr is inspected);
- float16 parameters with all-zero gradients give finite updates;
- the step count saturates at the int32 maximum;
- hyperparameters may be traced;
- decoupled weight decay takes a mask;
- ``optax.inject_hyperparams`` works under jit for every optimizer.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

INT32_MAX = 2**31 - 1
NARROW = {np.dtype(jnp.bfloat16), np.dtype(jnp.float16)}
ARITHMETIC = {
    "add", "sub", "mul", "div", "sqrt", "rsqrt", "pow", "integer_pow", "exp",
    "log", "log1p", "expm1", "max", "min", "atan2", "abs", "sign", "neg",
    "reduce_sum", "square", "select_n", "dot_general",
}  # fmt: skip


DIRECTIONS = sorted(n for n in adamx.__all__ if n.startswith("scale_by_"))
OPTIMIZERS = sorted(
    n
    for n in adamx.__all__
    if inspect.isfunction(getattr(adamx, n))
    and "learning_rate" in inspect.signature(getattr(adamx, n)).parameters
)
ALL = DIRECTIONS + OPTIMIZERS
DECOUPLED = [
    n for n in OPTIMIZERS if "mask" in inspect.signature(getattr(adamx, n)).parameters
]


def _build(name, **kwargs):
    factory = getattr(adamx, name)
    if name in OPTIMIZERS:
        kwargs.setdefault("learning_rate", 1e-2)
    return factory(**kwargs)


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


def _moment_fields(state):
    """(field name, leaves) of every moment in every NamedTuple state inside."""
    found = []

    def visit(node):
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            for field in node._fields:
                if field.startswith(("mu", "nu")):
                    found.append((field, jax.tree.leaves(getattr(node, field))))
        if isinstance(node, (tuple, list)):
            for child in node:
                visit(child)

    visit(state)
    return found


@pytest.mark.parametrize("name", ALL)
def test_mu_dtype_and_nu_dtype_set_every_moment(name):
    tx = _build(name, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float16)
    params = _params()
    state = tx.init(params)
    _, state = jax.jit(tx.update)(_grads(params, 0), state, params)
    fields = _moment_fields(state)
    assert {f[:2] for f, _ in fields} == {"mu", "nu"}, fields
    for field, leaves in fields:
        expected = jnp.bfloat16 if field.startswith("mu") else jnp.float16
        assert leaves and all(leaf.dtype == expected for leaf in leaves), field


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", ALL)
def test_updates_keep_the_gradient_dtype(name, dtype):
    tx = _build(name)
    params = _params(dtype)
    state = tx.init(params)
    for step in range(3):
        updates, state = jax.jit(tx.update)(_grads(params, step), state, params)
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
    narrow = _narrow_arithmetic(_build(name), _params(jnp.bfloat16))
    assert narrow == [], "\n".join(narrow)


@pytest.mark.parametrize("name", ALL)
def test_float16_zero_gradients_give_finite_updates(name):
    tx = _build(name)
    params = _params(jnp.float16)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):
        updates, state = jax.jit(tx.update)(zeros, state, params)
        for leaf in jax.tree.leaves(updates):
            assert bool(jnp.all(jnp.isfinite(leaf))), name
        for _, leaves in _moment_fields(state):
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


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
    found = []

    def visit(node):
        if isinstance(node, tuple) and "count" in getattr(node, "_fields", ()):
            found.append(int(node.count))
        if isinstance(node, tuple):
            for child in node:
                visit(child)

    visit(state)
    return found


@pytest.mark.parametrize("name", ALL)
def test_step_count_saturates(name):
    tx = _build(name)
    params = _params()
    state = _set_counts(tx.init(params), INT32_MAX - 1)
    assert _counts(state) and set(_counts(state)) == {INT32_MAX - 1}
    for step in range(3):
        updates, state = jax.jit(tx.update)(_grads(params, step), state, params)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(updates))
    assert set(_counts(state)) == {INT32_MAX}


def _float_hyperparameters(name):
    parameters = inspect.signature(getattr(adamx, name)).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if isinstance(p.default, float) and p.kind is p.POSITIONAL_OR_KEYWORD
    }


@pytest.mark.parametrize("name", ALL)
def test_hyperparameters_may_be_traced(name):
    hyper = _float_hyperparameters(name)
    assert hyper, name
    # A traced value is a float32 value: compare with the same float32 numbers.
    rounded = {k: float(np.float32(v)) for k, v in hyper.items()}
    params = _params()
    grads = _grads(params, 0)

    @jax.jit
    def traced(values):
        tx = _build(name, **values)
        return tx.update(grads, tx.init(params), params)[0]

    plain = _build(name, **rounded)
    expected = plain.update(grads, plain.init(params), params)[0]
    values = {k: jnp.asarray(v, jnp.float32) for k, v in rounded.items()}
    for got, want in zip(
        jax.tree.leaves(traced(values)), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", DECOUPLED)
def test_weight_decay_takes_a_mask(name):
    params = _params()
    grads = _grads(params, 0)

    def first_update(**kwargs):
        tx = _build(name, **kwargs)
        return tx.update(grads, tx.init(params), params)[0]

    decayed = first_update(weight_decay=0.5, mask={"w": True, "b": False})
    undecayed = first_update(weight_decay=0.0)
    np.testing.assert_array_equal(decayed["b"], undecayed["b"])
    assert float(jnp.max(jnp.abs(decayed["w"] - undecayed["w"]))) > 1e-4


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inject_hyperparams_under_jit(name):
    params = _params()
    injected = optax.inject_hyperparams(getattr(adamx, name))(learning_rate=1e-2)
    plain = _build(
        name,
        **{k: float(np.float32(v)) for k, v in _float_hyperparameters(name).items()},
    )
    state, plain_state = injected.init(params), plain.init(params)
    step = jax.jit(injected.update)
    for t in range(3):
        grads = _grads(params, t)
        updates, state = step(grads, state, params)
        expected, plain_state = plain.update(grads, plain_state, params)
        for got, want in zip(
            jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
