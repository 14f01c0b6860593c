"""Shared machinery for the per-family tests (test_adamax, test_yogi, test_belief).

It only drives transforms and compares arrays; every expected value comes from
the NumPy reference or the optax optimizer written in the test file itself.

* :func:`reference_check` runs a direction ``STEPS`` times (a jitted
  ``lax.scan``) on a random pytree of several shapes, a scalar and a complex
  leaf, with gradients whose scale jumps by orders of magnitude from step to
  step, and compares every step's update and the final moments with a
  per-leaf float64 reference.
* :func:`assert_same_training` trains a small MLP, parameters fed back, with
  an adamx optimizer in float32 and holds it to its optax counterpart run in
  float64 (:func:`optax_trajectories` under ``jax.enable_x64``), and to 1e-10
  with adamx in float64 too.
* :func:`assert_close_scaled` is the comparison both use: relative, with an
  absolute floor that is the same fraction of the largest magnitude the
  compared quantity reaches, so a coordinate crossing zero is not held to a
  relative precision no finite-precision computation has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

STEPS = 120
PARITY_STEPS = 100

# A reference maps one leaf's gradients, shape (STEPS, *shape) in float64 or
# complex128, to (updates of the same shape, final moments in state order).
Reference = Callable[[np.ndarray], tuple[np.ndarray, Sequence[np.ndarray]]]


def assert_close_scaled(actual: Any, expected: Any, rtol: float, what: str) -> None:
    """``|actual - expected| <= rtol * (|expected| + max |expected|)``, elementwise."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(expected)), what
    atol = rtol * float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def worst_scaled_error(actual: Any, expected: Any) -> float:
    """The smallest ``rtol`` with which :func:`assert_close_scaled` would pass."""
    actual = np.asarray(actual, dtype=np.complex128)
    expected = np.asarray(expected, dtype=np.complex128)
    scale = np.abs(expected) + np.max(np.abs(expected), initial=0.0)
    return float(np.max(np.abs(actual - expected) / np.where(scale > 0, scale, 1.0)))


# ---------------------------------------------------------------------------
# Reference comparison
# ---------------------------------------------------------------------------

SHAPES = {"kernel": (2, 3, 4), "bias": (3,), "column": (5, 1), "scale": ()}


def random_inputs(seed: int, real_dtype: Any, complex_dtype: Any | None):
    """(params, gradients stacked along a leading step axis) as NumPy dicts.

    Each step has its own scale between 1e-2 and 1e2 and each leaf a fixed
    factor between 1e-1 and 1e1 on top, so moments see spikes and lulls.
    """
    rng = np.random.default_rng(seed)
    step_scale = 10.0 ** rng.uniform(-2.0, 2.0, size=STEPS)
    shapes = dict(SHAPES)
    if complex_dtype is not None:
        shapes["phase"] = (2, 2)
    params, grads = {}, {}
    for name, shape in shapes.items():
        is_complex = name == "phase"
        dtype = complex_dtype if is_complex else real_dtype
        scale = step_scale.reshape((STEPS,) + (1,) * len(shape))
        scale = scale * 10.0 ** rng.uniform(-1.0, 1.0)
        g = rng.normal(size=(STEPS, *shape))
        p = rng.normal(size=shape)
        if is_complex:
            g = g + 1j * rng.normal(size=(STEPS, *shape))
            p = p + 1j * rng.normal(size=shape)
        params[name] = np.asarray(p).astype(dtype)
        grads[name] = (scale * g).astype(dtype)
    return params, grads


def run_direction(tx: optax.GradientTransformation, params: Any, grads: Any):
    """Every step's update (stacked) and the final state, from one jitted scan."""

    @jax.jit
    def run(params, grads):
        def step(state, g):
            updates, state = tx.update(g, state, params)
            return state, updates

        state, updates = jax.lax.scan(step, tx.init(params), grads)
        return updates, state

    return jax.device_get(run(params, grads))


def reference_check(
    tx: optax.GradientTransformation,
    reference: Reference,
    *,
    x64: bool,
    rtol: float,
    seed: int = 0,
    with_complex: bool = True,
) -> float:
    """Compares ``tx`` with ``reference`` leaf by leaf; returns the worst error.

    The reference receives exactly the gradients adamx saw, widened to
    float64 (complex128 for the complex leaf). The state must be
    ``(count, *moments)`` with the moments in the order the reference returns.
    """
    real, cplx = (np.float64, np.complex128) if x64 else (np.float32, np.complex64)
    params, grads = random_inputs(seed, real, cplx if with_complex else None)
    with jax.enable_x64(x64):
        updates, state = run_direction(tx, params, grads)
    count, *moments = state
    assert np.asarray(count).dtype == np.int32
    assert int(count) == STEPS
    worst = 0.0
    for name, g in grads.items():
        wide = np.complex128 if np.iscomplexobj(g) else np.float64
        expected_updates, expected_moments = reference(g.astype(wide))
        assert updates[name].dtype == g.dtype, name
        assert_close_scaled(updates[name], expected_updates, rtol, f"updates[{name}]")
        worst = max(worst, worst_scaled_error(updates[name], expected_updates))
        assert len(moments) == len(expected_moments)
        for i, (moment, expected) in enumerate(
            zip(moments, expected_moments, strict=True)
        ):
            assert_close_scaled(moment[name], expected, rtol, f"moment {i}[{name}]")
            worst = max(worst, worst_scaled_error(moment[name], expected))
    return worst


def as_float32(x: float) -> float:
    """``x`` rounded to float32, as adamx holds a hyperparameter for float32 leaves.

    For a decay rate ``b`` given as a Python float this is the rate adamx
    multiplies by; its complement ``1 - b`` adamx forms from the unrounded
    value (``adamx.numerics.as_decay``), so it is not ``1 - as_float32(b)``.
    """
    return float(np.float32(x))


# ---------------------------------------------------------------------------
# Parity with optax on a small MLP
# ---------------------------------------------------------------------------


def mlp_problem() -> tuple[dict[str, jax.Array], Callable[[Any], Any]]:
    """A tanh MLP fitted to fixed random regression data by mean squared error."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)
    target = np.sin(np.asarray(x) @ np.array([[1.0], [-2.0], [0.5], [1.5]]))
    y = jnp.asarray(target, jnp.float32)
    params = {
        "w1": jnp.asarray(rng.normal(0.0, 0.5, (4, 8)), jnp.float32),
        "b1": jnp.asarray(rng.normal(0.0, 0.1, (8,)), jnp.float32),
        "w2": jnp.asarray(rng.normal(0.0, 0.5, (8, 1)), jnp.float32),
        "gain": jnp.asarray(1.0, jnp.float32),
    }

    def loss(p):
        hidden = jnp.tanh(x @ p["w1"] + p["b1"][None, :])
        return jnp.mean(jnp.square(p["gain"] * (hidden @ p["w2"]) - y))

    return params, jax.grad(loss)


def optax_trajectories(tx: optax.GradientTransformation, dtype: Any = jnp.float32):
    """Parameters and state leaves after every step of training, stacked.

    The float32 parameters and gradients are cast to ``dtype``; call under
    ``jax.enable_x64(True)`` for float64.
    """
    params, grad = mlp_problem()
    params = jax.tree.map(lambda p: p.astype(dtype), params)

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            grads = jax.tree.map(lambda g: g.astype(dtype), grad(params))
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), (params, jax.tree.leaves(state))

        _, history = jax.lax.scan(
            step, (params, tx.init(params)), None, length=PARITY_STEPS
        )
        return history

    return jax.device_get(run(params))


def _float64_trajectories(make: Callable[[], optax.GradientTransformation]):
    with jax.enable_x64(True):
        return optax_trajectories(make(), jnp.float64)


def _assert_trajectories_close(actual, expected, rtol: float) -> float:
    params, states = actual
    expected_params, expected_states = expected
    worst = 0.0
    for name, want in expected_params.items():
        # The parameters must have moved, or the comparison says nothing.
        assert not np.allclose(want[-1], want[0]), name
        assert_close_scaled(params[name], want, rtol, f"params[{name}]")
        worst = max(worst, worst_scaled_error(params[name], want))
    assert len(states) == len(expected_states)
    for i, (leaf, want) in enumerate(zip(states, expected_states, strict=True)):
        assert_close_scaled(leaf, want, rtol, f"state leaf {i}")
        worst = max(worst, worst_scaled_error(leaf, want))
    return worst


def assert_same_training(
    make_adamx: Callable[[], optax.GradientTransformation],
    make_optax: Callable[[], optax.GradientTransformation],
    rtol: float,
) -> float:
    """adamx in float32 follows optax's optimizer run in float64, every step.

    The reference is optax in float64, not in float32: optax forms the bias
    correction ``1 - b**t`` in float32 from ``b`` already rounded to float32
    (1.3e-5 relative at ``b2 = 0.999``), so its own float32 run strays further
    from the exact trajectory than adamx's does. Parameters and every state
    leaf are compared at every step to ``rtol``; the float32 state has optax's
    layout, shapes and dtypes; and adamx run in float64 matches optax in
    float64 to 1e-10 (the same formula). Returns the float32 run's worst error.
    """
    reference = _float64_trajectories(make_optax)
    _assert_trajectories_close(_float64_trajectories(make_adamx), reference, 1e-10)
    adamx_tx = make_adamx()
    actual = optax_trajectories(adamx_tx)
    params, _ = mlp_problem()
    layout = jax.tree.leaves(jax.eval_shape(make_optax().init, params))
    assert [(x.shape[1:], x.dtype) for x in actual[1]] == [
        (x.shape, x.dtype) for x in layout
    ]
    return _assert_trajectories_close(actual, reference, rtol)


# ---------------------------------------------------------------------------
# Storage dtypes and float16
# ---------------------------------------------------------------------------


def real_tree(dtype: Any, seed: int = 3) -> dict[str, jax.Array]:
    """Random real parameters of every shape in :data:`SHAPES`."""
    rng = np.random.default_rng(seed)
    return {
        name: jnp.asarray(rng.normal(size=shape), dtype)
        for name, shape in SHAPES.items()
    }


def run_steps(tx: optax.GradientTransformation, grads: Sequence[Any], params: Any):
    """Updates after each of ``grads`` (a list of trees) and the final state."""
    update = jax.jit(tx.update)
    state = tx.init(params)
    history = []
    for g in grads:
        updates, state = update(g, state, params)
        history.append(updates)
    return history, state
