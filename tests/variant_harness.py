"""Shared machinery for test_radam, test_lamb and test_adam_atan2.

It only drives transforms and compares arrays: every expected value comes from
the float64 NumPy reference or the optax optimizer in the test file itself.

* :func:`random_inputs`: a random pytree of several shapes, a scalar and
  optionally a complex leaf, with gradients whose scale jumps by orders of
  magnitude from step to step.
* :func:`run_scan`: a jitted ``lax.scan`` of a transform over those
  gradients, the parameters optionally fed back by a fixed step.
* :func:`trajectories`: a small MLP trained with a transform, parameters fed
  back, in float32 or float64; parity tests compare two of these.
* :func:`assert_close_scaled`: relative comparison with an absolute floor that
  is the same fraction of the largest magnitude the compared quantity
  reaches, so a coordinate crossing zero is not held to a relative precision
  no finite-precision computation has.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The pieces both harnesses share, re-exported for the tests that import them here.
from family_harness import PARITY_STEPS as PARITY_STEPS
from family_harness import SHAPES as SHAPES
from family_harness import STEPS as STEPS
from family_harness import as_float32 as as_float32
from family_harness import assert_close_scaled as assert_close_scaled
from family_harness import real_tree as real_tree
from family_harness import worst_scaled_error as worst_scaled_error


def reference_hyperparameters(hp: dict[str, float], x64: bool) -> dict[str, float]:
    """``hp`` as a float64 reference should take it to compare with adamx.

    In float64 every value is taken as given. In float32 adamx holds each
    hyperparameter rounded to float32, except that for the decays ``b1`` and
    ``b2`` it forms ``1 - b`` from the decimal before rounding: the reference
    gets the decimal decays (their ``1 - b`` is what matters; the float32
    rounding of the rate itself, 1e-8 relative, stays far below the tests'
    tolerances) and the other values rounded with :func:`as_float32`.
    """
    if x64:
        return dict(hp)
    return {k: v if k in ("b1", "b2") else as_float32(v) for k, v in hp.items()}


def random_inputs(
    seed: int,
    real_dtype: Any,
    complex_dtype: Any | None = None,
    extra: dict[str, tuple[int, ...]] | None = None,
):
    """(params, gradients stacked along a leading step axis) as NumPy dicts.

    Each step has its own scale between 1e-2 and 1e2 and each leaf a fixed
    factor between 1e-1 and 1e1 on top, so moments see spikes and lulls.
    """
    rng = np.random.default_rng(seed)
    step_scale = 10.0 ** rng.uniform(-2.0, 2.0, size=STEPS)
    shapes = {**SHAPES, **(extra or {})}
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


def scanner(tx: optax.GradientTransformation, *, feed_back: bool = False):
    """A jitted ``run(params, grads) -> (updates, final state, final params)``.

    ``updates`` stacks every step's update. With ``feed_back`` the updates are
    applied to the parameters after each step (``tx`` then includes its
    learning rate); otherwise every step sees the initial parameters. Reuse
    one scanner for several runs of the same shapes to compile once.
    """

    @jax.jit
    def run(params, grads):
        def step(carry, g):
            p, state = carry
            updates, state = tx.update(g, state, p)
            if feed_back:
                p = optax.apply_updates(p, updates)
            return (p, state), updates

        (p, state), updates = jax.lax.scan(step, (params, tx.init(params)), grads)
        return updates, state, p

    return lambda params, grads: jax.device_get(run(params, grads))


def run_scan(
    tx: optax.GradientTransformation,
    params: Any,
    grads: Any,
    *,
    feed_back: bool = False,
):
    """``scanner(tx, feed_back=feed_back)(params, grads)``, for a single run."""
    return scanner(tx, feed_back=feed_back)(params, grads)


def find_adam_state(state: Any) -> Any:
    """The first ``(count, mu, nu)`` NamedTuple inside a chain's state."""
    if getattr(state, "_fields", None) == ("count", "mu", "nu"):
        return state
    if isinstance(state, tuple):
        for part in state:
            found = find_adam_state(part)
            if found is not None:
                return found
    return None


def mlp_problem(dtype: Any):
    """(params, grad function) of a tanh MLP fitted by mean squared error."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 4))
    y = np.sin(x @ np.array([[1.0], [-2.0], [0.5], [1.5]]))
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    params = {
        "w1": jnp.asarray(rng.normal(0.0, 0.5, (4, 8)), dtype),
        "b1": jnp.asarray(rng.normal(0.0, 0.1, (8,)), dtype),
        "w2": jnp.asarray(rng.normal(0.0, 0.5, (8, 1)), dtype),
        "gain": jnp.asarray(1.0, dtype),
    }

    def loss(p):
        hidden = jnp.tanh(x @ p["w1"] + p["b1"][None, :])
        return jnp.mean(jnp.square(p["gain"] * (hidden @ p["w2"]) - y))

    return params, jax.grad(loss)


def trajectories(tx: optax.GradientTransformation, dtype: Any = jnp.float32):
    """(params after every step, the Adam state after every step), stacked.

    Call under ``jax.enable_x64(True)`` for float64.
    """
    params, grad = mlp_problem(dtype)

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = tx.update(grad(params), state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), (params, find_adam_state(state))

        _, history = jax.lax.scan(
            step, (params, tx.init(params)), None, length=PARITY_STEPS
        )
        return history

    return jax.device_get(run(params))


def compare_trajectories(actual, expected, rtol: float) -> float:
    """Asserts equal parameters and Adam moments at every step; the worst error."""
    params, state = actual
    expected_params, expected_state = expected
    worst = 0.0
    for name, want in expected_params.items():
        # The parameters must have moved, or the comparison says nothing.
        assert not np.allclose(want[-1], want[0]), name
        assert_close_scaled(params[name], want, rtol, f"params[{name}]")
        worst = max(worst, worst_scaled_error(params[name], want))
    np.testing.assert_array_equal(state.count, expected_state.count)
    for field in ("mu", "nu"):
        for name, want in getattr(expected_state, field).items():
            got = getattr(state, field)[name]
            assert_close_scaled(got, want, rtol, f"{field}[{name}]")
            worst = max(worst, worst_scaled_error(got, want))
    return worst
