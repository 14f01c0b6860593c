"""Parity of adamx's optimizers with their optax counterparts.

Every case runs the adamx optimizer for ``STEPS`` steps of a jitted step
function, in float32, and compares it with **the optax optimizer run in
float64** (the same optax code under ``jax.enable_x64``), on one or both of
two problems:

* ``mlp``: a small tanh MLP fitted to fixed random regression data by
  mean squared error. Gradients are taken at the current parameters and the
  parameters move through ``optax.apply_updates``, so the trajectory is a
  realistic training run in which any difference feeds back.
* ``stream``: a fixed stream of random gradients whose scale jumps between
  1e-3 and 1e3 from step to step and from leaf to leaf, so the moments see
  both sudden spikes and long quiet stretches. The moment arithmetic is
  exercised here free of feedback; cases that differ only in the learning-rate
  or weight-decay wiring (schedules, masks) run on ``mlp`` alone.

**Why float64 optax, not float32 optax.** optax forms the bias correction
``1 - b**t`` in float32 from ``b`` already rounded to float32, which at
``b2 = 0.999`` moves it by 1.3e-5 relative; adamx forms it from the decimal
``1 - b`` with ``expm1`` (see ``adamx.numerics``). On these problems optax's
float32 run is up to 1.4e-5 away from its own float64 run, adamx's at most
1.8e-6. Comparing with optax in float32 would need a tolerance loose enough to
absorb optax's rounding; against float64 the tolerance is ``FLOAT32_RTOL``
(5e-6 on ``mlp``, 1.5e-6 on ``stream``), which optax's own float32 run fails
in 20 of the 24 cases (it passes only where ``b2 = 0.99``).
:func:`test_same_formula_as_optax_in_float64` runs adamx in float64 too and
holds it to ``1e-10``: both libraries compute the same formula.

**What is compared.** The parameters *and* every optimizer-state leaf after
every step, not only at the end: an error that appears early and is later
washed out (by decay or by the loss pulling the parameters back) is still
caught. The absolute tolerance is the relative one times the largest
magnitude the leaf reaches over the run, so a coordinate crossing zero (a
first moment near an optimum, say) is not held to a relative precision no
float32 computation can have. The state's layout, shapes and dtypes are those
of optax's float32 state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

STEPS = 150
# adamx in float32 against optax in float64. Measured worst: 1.8e-6 on mlp
# (adam-exponential_decay), 4.7e-7 on stream (adamw); optax's own float32 run
# reaches 1.4e-5 and 7e-6.
FLOAT32_RTOL = {"mlp": 5e-6, "stream": 1.5e-6}
# adamx against optax, both in float64: measured worst 4e-15.
FLOAT64_RTOL = 1e-10

# ---------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------


def _mlp_params(rng: np.random.Generator) -> dict[str, jax.Array]:
    return {
        "w1": jnp.asarray(rng.normal(0.0, 0.5, (4, 8)), jnp.float32),
        "b1": jnp.asarray(rng.normal(0.0, 0.1, (8,)), jnp.float32),
        "w2": jnp.asarray(rng.normal(0.0, 0.5, (8, 1)), jnp.float32),
        "b2": jnp.zeros((1,), jnp.float32),
    }


def _mlp_problem() -> tuple[dict[str, jax.Array], Callable[..., Any]]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)
    y = jnp.asarray(
        np.sin(np.asarray(x) @ np.array([[1.0], [-2.0], [0.5], [1.5]])), jnp.float32
    )

    def loss(params):
        hidden = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
        pred = hidden @ params["w2"] + params["b2"][None, :]
        return jnp.mean(jnp.square(pred - y))

    grad = jax.grad(loss)
    return _mlp_params(rng), lambda params, t: grad(params)


def _stream_problem() -> tuple[dict[str, jax.Array], Callable[..., Any]]:
    rng = np.random.default_rng(1)
    params = _mlp_params(rng)
    stream = {}
    for name, leaf in params.items():
        shape = (STEPS, *leaf.shape)
        # One scale per step and leaf, log-uniform over six orders of magnitude.
        scale = 10.0 ** rng.uniform(-3.0, 3.0, (STEPS,) + (1,) * leaf.ndim)
        stream[name] = jnp.asarray(scale * rng.normal(size=shape), jnp.float32)

    def grad(params, t):
        del params
        return jax.tree.map(lambda s: s[t], stream)

    return params, grad


PROBLEMS = {"mlp": _mlp_problem, "stream": _stream_problem}


def _run(tx: optax.GradientTransformation, problem: str, dtype=jnp.float32):
    """Parameters and optimizer state after every step, stacked along axis 0.

    The problem's float32 parameters and gradients are cast to ``dtype``; call
    under ``jax.enable_x64(True)`` for float64.
    """
    params, grad_fn = PROBLEMS[problem]()
    params = jax.tree.map(lambda p: p.astype(dtype), params)

    @jax.jit
    def step(params, state, t):
        grads = jax.tree.map(lambda g: g.astype(dtype), grad_fn(params, t))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    history = []
    for t in range(STEPS):
        params, state = step(params, state, t)
        history.append((params, state))
    return jax.tree.map(lambda *leaves: np.stack(leaves), *history)


def _run_float64(make: Callable[[], Any], problem: str):
    with jax.enable_x64(True):
        return _run(make(), problem, jnp.float64)


@functools.cache
def _optax_float64(case: str, problem: str):
    """The reference: optax's optimizer for ``case``, run in float64."""
    return _run_float64(CASES[case][1], problem)


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

DECAY_MASK = {"w1": True, "b1": False, "w2": True, "b2": False}


def _decay_matrices_only(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _warmup_cosine():
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=2e-2,
        warmup_steps=20,
        decay_steps=STEPS,
        end_value=1e-4,
    )


def _exponential():
    return optax.exponential_decay(
        init_value=1e-2, transition_steps=10, decay_rate=0.7, staircase=False
    )


def _weight_decay_schedule():
    return optax.cosine_decay_schedule(init_value=0.1, decay_steps=STEPS, alpha=0.1)


def _lr(
    lr: float, direction: optax.GradientTransformation
) -> optax.GradientTransformation:
    return optax.chain(direction, optax.scale(-lr))


# (adamx factory, optax factory): the same optimizer in each library.
CASES: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "adam": (lambda: adamx.adam(1e-2), lambda: optax.adam(1e-2)),
    "adam-hyperparams": (
        lambda: adamx.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-10),
        lambda: optax.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-10),
    ),
    "adamw": (
        lambda: adamx.adamw(1e-2, weight_decay=0.05),
        lambda: optax.adamw(1e-2, weight_decay=0.05),
    ),
    "adamw-mask-fn": (
        lambda: adamx.adamw(1e-2, weight_decay=0.1, mask=_decay_matrices_only),
        lambda: optax.adamw(1e-2, weight_decay=0.1, mask=_decay_matrices_only),
    ),
    "nadam": (lambda: adamx.nadam(1e-2), lambda: optax.nadam(1e-2)),
    "nadamw": (
        lambda: adamx.nadamw(1e-2, weight_decay=0.05),
        lambda: optax.nadamw(1e-2, weight_decay=0.05),
    ),
    "amsgrad": (lambda: adamx.amsgrad(1e-2), lambda: optax.amsgrad(1e-2)),
    "scale_by_adam-eps_root": (
        lambda: _lr(1e-2, adamx.scale_by_adam(eps_root=1e-8)),
        lambda: _lr(1e-2, optax.scale_by_adam(eps_root=1e-8)),
    ),
    "scale_by_adam-nesterov": (
        lambda: _lr(1e-2, adamx.scale_by_adam(b1=0.95, nesterov=True)),
        lambda: _lr(1e-2, optax.scale_by_adam(b1=0.95, nesterov=True)),
    ),
    "scale_by_amsgrad": (
        lambda: _lr(1e-2, adamx.scale_by_amsgrad(b2=0.99)),
        lambda: _lr(1e-2, optax.scale_by_amsgrad(b2=0.99)),
    ),
    "adam-warmup_cosine": (
        lambda: adamx.adam(_warmup_cosine()),
        lambda: optax.adam(_warmup_cosine()),
    ),
    "adam-exponential_decay": (
        lambda: adamx.adam(_exponential()),
        lambda: optax.adam(_exponential()),
    ),
    "amsgrad-exponential_decay": (
        lambda: adamx.amsgrad(_exponential()),
        lambda: optax.amsgrad(_exponential()),
    ),
    "adamw-weight_decay_schedule": (
        lambda: adamx.adamw(_warmup_cosine(), weight_decay=_weight_decay_schedule()),
        lambda: optax.adamw(_warmup_cosine(), weight_decay=_weight_decay_schedule()),
    ),
    "nadamw-schedules-mask": (
        lambda: adamx.nadamw(
            _exponential(), weight_decay=_weight_decay_schedule(), mask=DECAY_MASK
        ),
        lambda: optax.nadamw(
            _exponential(), weight_decay=_weight_decay_schedule(), mask=DECAY_MASK
        ),
    ),
}


def _assert_close_scaled(actual, expected, rtol: float, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    assert np.all(np.isfinite(expected)), what
    atol = rtol * float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(
        actual.astype(expected.dtype), expected, rtol=rtol, atol=atol, err_msg=what
    )


def _assert_same_run(actual, expected, rtol: float) -> None:
    """Parameters and state leaves agree at every step, to ``rtol``."""
    trajectory, states = actual
    expected_trajectory, expected_states = expected
    for name, leaf in expected_trajectory.items():
        # The parameters must actually have moved, or the comparison says nothing.
        assert not np.allclose(leaf[-1], leaf[0]), name
        _assert_close_scaled(trajectory[name], leaf, rtol, f"params[{name}]")
    leaves = jax.tree_util.tree_leaves_with_path(states)
    expected_leaves = jax.tree_util.tree_leaves(expected_states)
    assert len(leaves) == len(expected_leaves)
    for (path, leaf), want in zip(leaves, expected_leaves, strict=True):
        _assert_close_scaled(leaf, want, rtol, f"state{jax.tree_util.keystr(path)}")


# Cases whose moment arithmetic also runs on the scale-jumping gradient stream.
STREAM_CASES = (
    "adam",
    "adam-hyperparams",
    "adamw",
    "nadam",
    "nadamw",
    "amsgrad",
    "scale_by_adam-eps_root",
    "scale_by_adam-nesterov",
    "scale_by_amsgrad",
)
PARITY = [(case, "mlp") for case in CASES] + [(case, "stream") for case in STREAM_CASES]


@pytest.mark.parametrize(("case", "problem"), PARITY)
def test_float32_matches_optax_float64_every_step(case: str, problem: str) -> None:
    make_adamx, make_optax = CASES[case]
    trajectory, states = _run(make_adamx(), problem)
    _assert_same_run(
        (trajectory, states), _optax_float64(case, problem), FLOAT32_RTOL[problem]
    )

    # The same state layout (count, mu, nu[, nu_max], schedule counts), shapes
    # and dtypes as optax's float32 state.
    params, _ = PROBLEMS[problem]()
    expected_layout = jax.eval_shape(make_optax().init, params)
    leaves = jax.tree_util.tree_leaves_with_path(states)
    layout = jax.tree_util.tree_leaves(expected_layout)
    assert len(leaves) == len(layout)
    for (path, leaf), want in zip(leaves, layout, strict=True):
        what = f"state{jax.tree_util.keystr(path)}"
        assert (leaf.shape[1:], leaf.dtype) == (want.shape, want.dtype), what

    # Every step count is an int32 scalar that went 1, 2, ..., STEPS.
    counts = [
        leaf for path, leaf in leaves if jax.tree_util.keystr(path).endswith(".count")
    ]
    assert counts, "the state holds no step count"
    for count in counts:
        assert count.dtype == np.int32
        np.testing.assert_array_equal(count, np.arange(1, STEPS + 1))


@pytest.mark.parametrize(("case", "problem"), PARITY)
def test_same_formula_as_optax_in_float64(case: str, problem: str) -> None:
    make_adamx, _ = CASES[case]
    ours = _run_float64(make_adamx, problem)
    _assert_same_run(ours, _optax_float64(case, problem), FLOAT64_RTOL)
