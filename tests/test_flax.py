"""adamx optimizers drive real Flax training loops, Linen and NNX.

Linen: ``flax.training.train_state.TrainState`` with an adamx ``tx`` trains an
MLP on the scikit-learn digits under ``jax.jit``. NNX: ``nnx.Optimizer``
trains the same MLP under ``nnx.jit``. In both, a few steps through the
framework equal the same steps driven by hand (``tx.update`` then
``optax.apply_updates`` on plain arrays), so the integration does exactly
what a plain optax loop does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training import train_state
from sklearn.datasets import load_digits

import adamx

STEPS = 50
COMPARED_STEPS = 3
# float32 precision: the two paths run the same operations, compiled apart.
RTOL, ATOL = 1e-6, 1e-7

SAMPLES = 512  # of the 1797 digits: enough to learn, cheap to step on
_X, _Y = load_digits(return_X_y=True)
X = jnp.asarray(_X[:SAMPLES] / 16.0, jnp.float32)
Y = jnp.asarray(_Y[:SAMPLES], jnp.int32)

# Built once, so that the jitted steps below compile once per optimizer.
LINEN_TX = {
    "adam": adamx.adam(1e-2),
    "adamw": adamx.adamw(1e-2, weight_decay=1e-4),
    "amsgrad": adamx.amsgrad(1e-2),
    "lamb": adamx.lamb(2e-2),
    "adopt": adamx.adopt(1e-2),
    "adam[int8]": adamx.adam(1e-2, mu_dtype="int8", nu_dtype="int8"),
    "adam[int4]": adamx.adam(1e-2, mu_dtype="int4", nu_dtype="int4"),
    # float32 parameters pass through it: its compensations are scalar zeros
    "low_precision_params": adamx.low_precision_params(adamx.adam(1e-2)),
}
# nnx.Optimizer keeps each state entry in its own container and hands an 8-bit
# leaf back as a mapping of codes and scales; adamx accepts that form too.
NNX_TX = {
    "adam": adamx.adam(1e-2),
    "lamb": adamx.lamb(2e-2),
    "adam[bf16]": adamx.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    "adam[int8]": adamx.adam(1e-2, mu_dtype="int8", nu_dtype="int8"),
    "adam[int4]": adamx.adam(1e-2, mu_dtype="int4", nu_dtype="int4"),
    "adam[rounded_bf16]": adamx.adam(
        1e-2, mu_dtype=adamx.Rounded(jnp.bfloat16), nu_dtype=adamx.Rounded(jnp.bfloat16)
    ),
    "low_precision_params": adamx.low_precision_params(adamx.adam(1e-2)),
}


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _assert_trees_close(actual, expected):
    """Same structure and dtypes; floats to float32 precision, integers exactly."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for got, want in zip(
        jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True
    ):
        got, want = np.asarray(got), np.asarray(want)
        assert got.dtype == want.dtype
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(
                got.astype(np.float32), want.astype(np.float32), rtol=RTOL, atol=ATOL
            )
        else:
            np.testing.assert_array_equal(got, want)


def _assert_learned(losses, accuracy):
    assert losses[-1] < 0.05 * losses[0], losses
    assert accuracy >= 0.95


# Linen ------------------------------------------------------------------------


class LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Dense(128)(x))  # 64 x 128 kernel: 8-bit storage
        x = linen.relu(linen.Dense(64)(x))  # 128 x 64 kernel: 8-bit storage
        return linen.Dense(10)(x)


LINEN_MODEL = LinenMLP()
LINEN_PARAMS = LINEN_MODEL.init(jax.random.PRNGKey(0), X[:1])["params"]


def _linen_loss(params, x, y):
    return _cross_entropy(LINEN_MODEL.apply({"params": params}, x), y)


@functools.partial(jax.jit, static_argnames="tx")
def _create_train_state(params, tx):
    return train_state.TrainState.create(
        apply_fn=LINEN_MODEL.apply, params=params, tx=tx
    )


@jax.jit
def _train_state_step(state, x, y):
    def loss_fn(params):
        return _cross_entropy(state.apply_fn({"params": params}, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@functools.partial(jax.jit, static_argnames="tx")
def _plain_optax_step(params, opt_state, x, y, tx):
    grads = jax.grad(_linen_loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@pytest.mark.parametrize("name", sorted(LINEN_TX))
def test_train_state_trains_a_linen_mlp(name):
    state = _create_train_state(LINEN_PARAMS, LINEN_TX[name])
    losses = []
    for _ in range(STEPS):
        state, loss = _train_state_step(state, X, Y)
        losses.append(float(loss))
    losses.append(float(_linen_loss(state.params, X, Y)))
    logits = LINEN_MODEL.apply({"params": state.params}, X)
    _assert_learned(losses, float(jnp.mean(jnp.argmax(logits, axis=-1) == Y)))
    assert int(state.step) == STEPS


def test_int8_train_state_holds_8bit_moments():
    state = _create_train_state(LINEN_PARAMS, LINEN_TX["adam[int8]"])
    state, _ = _train_state_step(state, X, Y)
    adam_state = state.opt_state[0]
    for moment in (adam_state.mu, adam_state.nu):
        for layer in ("Dense_0", "Dense_1"):
            stored = moment[layer]["kernel"]
            assert isinstance(stored, adamx.QuantizedArray), layer
            signed = moment is adam_state.mu
            assert stored.codes.dtype == (jnp.int8 if signed else jnp.uint8)
        assert moment["Dense_2"]["kernel"].dtype == jnp.float32  # 640 values


@pytest.mark.parametrize("name", sorted(LINEN_TX))
def test_train_state_steps_equal_a_plain_optax_loop(name):
    tx = LINEN_TX[name]
    state = _create_train_state(LINEN_PARAMS, tx)
    params, opt_state = LINEN_PARAMS, jax.jit(tx.init)(LINEN_PARAMS)
    for _ in range(COMPARED_STEPS):
        state, _ = _train_state_step(state, X, Y)
        params, opt_state = _plain_optax_step(params, opt_state, X, Y, tx)
    _assert_trees_close(state.params, params)
    _assert_trees_close(state.opt_state, opt_state)
    assert int(state.step) == COMPARED_STEPS
    # The steps moved the parameters, so the comparison is not vacuous.
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, LINEN_PARAMS)
    assert all(jax.tree.leaves(moved))


# NNX --------------------------------------------------------------------------


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden1 = nnx.Linear(64, 128, rngs=rngs)
        self.hidden2 = nnx.Linear(128, 64, rngs=rngs)
        self.out = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.hidden1(x))
        x = nnx.relu(self.hidden2(x))
        return self.out(x)


def _nnx_loss(model, x, y):
    return _cross_entropy(model(x), y)


def _as_dict(tree):
    """Nested dicts of arrays, keyed by path (tuple positions become int keys).

    Containers nested inside a state entry (an 8-bit leaf's codes and scales,
    which nnx keeps as an nnx.State) become plain dicts as well.
    """

    def plain(node):
        if hasattr(node, "keys"):
            return {key: plain(node[key]) for key in node}
        return getattr(node, "value", node)

    return plain(nnx.to_pure_dict(nnx.state(tree)))


@nnx.jit
def _nnx_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(_nnx_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


@functools.partial(jax.jit, static_argnames=("graphdef", "tx"))
def _plain_nnx_step(params, opt_state, x, y, graphdef, tx):
    """A plain optax step on the model's parameters as a dict of arrays."""
    grads = jax.grad(lambda p: _nnx_loss(nnx.merge(graphdef, p), x, y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@pytest.mark.parametrize("name", sorted(NNX_TX))
def test_nnx_optimizer_trains_an_nnx_mlp(name):
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, NNX_TX[name], wrt=nnx.Param)
    losses = [float(_nnx_step(model, optimizer, X, Y)) for _ in range(STEPS)]
    losses.append(float(_nnx_loss(model, X, Y)))
    _assert_learned(losses, float(jnp.mean(jnp.argmax(model(X), axis=-1) == Y)))
    assert int(optimizer.step[...]) == STEPS


@pytest.mark.parametrize("name", sorted(NNX_TX))
def test_nnx_optimizer_steps_equal_a_plain_optax_loop(name):
    tx = NNX_TX[name]
    model = NnxMLP(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    initial = params
    opt_state = jax.jit(tx.init)(params)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(COMPARED_STEPS):
        _nnx_step(model, optimizer, X, Y)
        params, opt_state = _plain_nnx_step(params, opt_state, X, Y, graphdef, tx)
    _assert_trees_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), params)
    # nnx keeps the optimizer state in variables; compare the arrays by path.
    _assert_trees_close(_as_dict(optimizer.opt_state), _as_dict(opt_state))
    assert int(optimizer.step[...]) == COMPARED_STEPS
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, initial)
    assert all(jax.tree.leaves(moved))


def test_nnx_model_trains_with_8bit_state_in_a_plain_optax_loop():
    tx = LINEN_TX["adam[int8]"]
    model = NnxMLP(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    opt_state = jax.jit(tx.init)(params)
    assert isinstance(opt_state[0].mu["hidden1"]["kernel"], adamx.QuantizedArray)
    losses = [float(_nnx_loss(model, X, Y))]
    for _ in range(STEPS):
        params, opt_state = _plain_nnx_step(params, opt_state, X, Y, graphdef, tx)
    trained = nnx.merge(graphdef, params)
    losses.append(float(_nnx_loss(trained, X, Y)))
    _assert_learned(losses, float(jnp.mean(jnp.argmax(trained(X), axis=-1) == Y)))


# bfloat16 parameters -----------------------------------------------------------

# low_precision_params on bfloat16 parameters (and float32 inputs: the layers
# compute in float32); the gradients come back in bfloat16.
BF16_TX = {
    "kahan": adamx.low_precision_params(adamx.adam(1e-2)),
    "kahan8[int8]": adamx.low_precision_params(
        adamx.adam(1e-2, mu_dtype="int8", nu_dtype="int8"), compensation_dtype="int8"
    ),
    "stochastic[int4]": adamx.low_precision_params(
        adamx.adam(1e-2, mu_dtype="int4", nu_dtype="int4"), "stochastic"
    ),
}


def _to_bfloat16(tree):
    return jax.tree.map(lambda p: p.astype(jnp.bfloat16), tree)


@pytest.mark.parametrize("name", sorted(BF16_TX))
def test_bfloat16_parameters_train_in_a_train_state_as_in_a_plain_loop(name):
    tx = BF16_TX[name]
    start = _to_bfloat16(LINEN_PARAMS)
    state = _create_train_state(start, tx)
    params, opt_state = start, jax.jit(tx.init)(start)
    for _ in range(COMPARED_STEPS):
        state, _ = _train_state_step(state, X, Y)
        params, opt_state = _plain_optax_step(params, opt_state, X, Y, tx)
    _assert_trees_close(state.params, params)
    _assert_trees_close(state.opt_state, opt_state)
    losses = [float(_linen_loss(start, X, Y))]
    for _ in range(STEPS - COMPARED_STEPS):
        state, _ = _train_state_step(state, X, Y)
    losses.append(float(_linen_loss(state.params, X, Y)))
    assert {p.dtype for p in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
    logits = LINEN_MODEL.apply({"params": state.params}, X)
    _assert_learned(losses, float(jnp.mean(jnp.argmax(logits, axis=-1) == Y)))


@pytest.mark.parametrize("name", sorted(BF16_TX))
def test_bfloat16_parameters_train_in_an_nnx_optimizer_as_in_a_plain_loop(name):
    tx = BF16_TX[name]
    graphdef, state = nnx.split(NnxMLP(nnx.Rngs(0)))
    model = nnx.merge(graphdef, _to_bfloat16(state))
    params = _to_bfloat16(nnx.to_pure_dict(state))
    opt_state = jax.jit(tx.init)(params)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(COMPARED_STEPS):
        _nnx_step(model, optimizer, X, Y)
        params, opt_state = _plain_nnx_step(params, opt_state, X, Y, graphdef, tx)
    _assert_trees_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), params)
    _assert_trees_close(_as_dict(optimizer.opt_state), _as_dict(opt_state))
    losses = [float(_nnx_loss(nnx.merge(graphdef, _to_bfloat16(state)), X, Y))]
    for _ in range(STEPS - COMPARED_STEPS):
        _nnx_step(model, optimizer, X, Y)
    losses.append(float(_nnx_loss(model, X, Y)))
    _assert_learned(losses, float(jnp.mean(jnp.argmax(model(X), axis=-1) == Y)))
