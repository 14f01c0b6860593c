"""Shared machinery for the per-family tests (test_adamax, test_yogi, ...).

It only drives transforms and compares arrays: every expected value comes from
a float64 NumPy reference or from the optax optimizer named in the test file.

* :func:`random_inputs`: a random pytree of several shapes, a scalar and
  optionally a complex leaf, with gradients whose scale jumps by orders of
  magnitude from step to step.
* :func:`run_scan`: a jitted ``lax.scan`` of a transform over those
  gradients, the parameters optionally fed back.
* :func:`reference_check`: a direction run ``STEPS`` times, every step's
  update and the final moments against a per-leaf float64 reference.
* :func:`trajectories`: a small MLP trained with a transform, parameters fed
  back, in float32 or float64; :func:`compare_trajectories` holds two of them
  together, every step, and :func:`assert_same_training` holds adamx in
  float32 to optax in float64 (and in float64 to 1e-10).
* :func:`assert_close_scaled`: relative comparison with an absolute floor that
  is the same fraction of the largest magnitude the compared quantity
  reaches, so a coordinate crossing zero is not held to a relative precision
  no finite-precision computation has.
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


def as_float32(x: float) -> float:
    """``x`` rounded to float32, as adamx holds a hyperparameter for float32 leaves.

    For a decay rate ``b`` given as a Python float this is the rate adamx
    multiplies by; its complement ``1 - b`` adamx forms from the unrounded
    value (``adamx.numerics.as_decay``), so it is not ``1 - as_float32(b)``.
    """
    return float(np.float32(x))


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


# ---------------------------------------------------------------------------
# Random inputs and scans
# ---------------------------------------------------------------------------

SHAPES = {"kernel": (2, 3, 4), "bias": (3,), "column": (5, 1), "scale": ()}


def random_inputs(
    seed: int,
    real_dtype: Any,
    complex_dtype: Any | None = None,
    extra: dict[str, tuple[int, ...]] | None = None,
    drift: float = 0.0,
):
    """(params, gradients stacked along a leading step axis) as NumPy dicts.

    Each step has its own scale between 1e-2 and 1e2 and each leaf a fixed
    factor between 1e-1 and 1e1 on top, so moments see spikes and lulls.
    ``complex_dtype`` adds a complex leaf "phase", ``extra`` more real leaves
    of the given shapes; ``drift`` is added to every standard-normal draw
    before scaling, a common direction for a slow average to remember.
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
        g = drift + rng.normal(size=(STEPS, *shape))
        p = rng.normal(size=shape)
        if is_complex:
            g = g + 1j * rng.normal(size=(STEPS, *shape))
            p = p + 1j * rng.normal(size=shape)
        params[name] = np.asarray(p).astype(dtype)
        grads[name] = (scale * g).astype(dtype)
    return params, grads


def real_tree(dtype: Any, seed: int = 3) -> dict[str, jax.Array]:
    """Random real parameters of every shape in :data:`SHAPES`."""
    rng = np.random.default_rng(seed)
    return {
        name: jnp.asarray(rng.normal(size=shape), dtype)
        for name, shape in SHAPES.items()
    }


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
        updates, state, _ = run_scan(tx, params, grads)
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


# ---------------------------------------------------------------------------
# Training a small MLP, parameters fed back
# ---------------------------------------------------------------------------


def mlp_problem(dtype: Any = jnp.float32):
    """(params, grad function) of a tanh MLP fitted by mean squared error.

    The data and the starting parameters are drawn in float32 and cast to
    ``dtype``, so a float64 run (under ``jax.enable_x64``) solves the same
    problem as a float32 one.
    """
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = np.sin(x @ np.array([[1.0], [-2.0], [0.5], [1.5]])).astype(np.float32)
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)

    def draw(scale, shape):
        return jnp.asarray(rng.normal(0.0, scale, shape).astype(np.float32), dtype)

    params = {
        "w1": draw(0.5, (4, 8)),
        "b1": draw(0.1, (8,)),
        "w2": draw(0.5, (8, 1)),
        "gain": jnp.asarray(1.0, dtype),
    }

    def loss(p):
        hidden = jnp.tanh(x @ p["w1"] + p["b1"][None, :])
        return jnp.mean(jnp.square(p["gain"] * (hidden @ p["w2"]) - y))

    return params, jax.grad(loss)


# What of the state a trajectory records: by default every leaf.
StateView = Callable[[Any], Any]


def trajectories(
    tx: optax.GradientTransformation,
    dtype: Any = jnp.float32,
    view: StateView = jax.tree.leaves,
):
    """(params after every step, ``view(state)`` after every step), stacked.

    Call under ``jax.enable_x64(True)`` for float64.
    """
    params, grad = mlp_problem(dtype)

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = tx.update(grad(params), state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), (params, view(state))

        _, history = jax.lax.scan(
            step, (params, tx.init(params)), None, length=PARITY_STEPS
        )
        return history

    return jax.device_get(run(params))


def compare_trajectories(actual, expected, rtol: float) -> float:
    """Parameters and recorded state agree at every step; returns the worst error.

    The recorded states are compared leaf by leaf in order (adamx's and
    optax's state classes differ, their leaves need not): integer leaves
    (counts) exactly, the others with :func:`assert_close_scaled`.
    """
    params, state = actual
    expected_params, expected_state = expected
    worst = 0.0
    for name, want in expected_params.items():
        # The parameters must have moved, or the comparison says nothing.
        assert not np.allclose(want[-1], want[0]), name
        assert_close_scaled(params[name], want, rtol, f"params[{name}]")
        worst = max(worst, worst_scaled_error(params[name], want))
    leaves, wanted = jax.tree.leaves(state), jax.tree.leaves(expected_state)
    assert len(leaves) == len(wanted), (len(leaves), len(wanted))
    for i, (leaf, want) in enumerate(zip(leaves, wanted, strict=True)):
        if np.issubdtype(np.asarray(want).dtype, np.integer):
            np.testing.assert_array_equal(leaf, want, err_msg=f"state leaf {i}")
            continue
        assert_close_scaled(leaf, want, rtol, f"state leaf {i}")
        worst = max(worst, worst_scaled_error(leaf, want))
    return worst


def _float64_trajectories(make: Callable[[], optax.GradientTransformation], view):
    with jax.enable_x64(True):
        return trajectories(make(), jnp.float64, view)


def assert_same_training(
    make_adamx: Callable[[], optax.GradientTransformation],
    make_optax: Callable[[], optax.GradientTransformation],
    rtol: float,
    view: StateView = jax.tree.leaves,
) -> float:
    """adamx in float32 follows optax's optimizer run in float64, every step.

    The reference is optax in float64, not in float32: optax forms the bias
    correction ``1 - b**t`` in float32 from ``b`` already rounded to float32
    (1.3e-5 relative at ``b2 = 0.999``), so its own float32 run strays further
    from the exact trajectory than adamx's does. Parameters and the recorded
    state (``view``; every leaf by default) are compared at every step to
    ``rtol``; the recorded float32 state has the layout, shapes and dtypes of
    optax's; and adamx run in float64 matches optax in float64 to 1e-10 (the
    same formula). Returns the float32 run's worst error.
    """
    reference = _float64_trajectories(make_optax, view)
    compare_trajectories(_float64_trajectories(make_adamx, view), reference, 1e-10)
    actual = trajectories(make_adamx(), jnp.float32, view)
    params, _ = mlp_problem()
    layout = jax.tree.leaves(view(jax.eval_shape(make_optax().init, params)))
    assert [(x.shape[1:], x.dtype) for x in jax.tree.leaves(actual[1])] == [
        (x.shape, x.dtype) for x in layout
    ]
    return compare_trajectories(actual, reference, rtol)
