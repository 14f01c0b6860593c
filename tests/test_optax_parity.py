"""Parity of adamx's optimizers with their optax counterparts.

Every case runs the adamx optimizer and the optax one side by side for
``STEPS`` steps of a jitted step function, in float32, on one or both of two
problems:

* ``mlp``: a small tanh MLP fitted to fixed random regression data by
  mean squared error. Gradients are taken at the current parameters and the
  parameters move through ``optax.apply_updates``, so the trajectory is a
  realistic training run in which any difference feeds back.
* ``stream``: a fixed stream of random gradients whose scale jumps between
  1e-3 and 1e3 from step to step and from leaf to leaf, so the moments see
  both sudden spikes and long quiet stretches. The moment arithmetic is
  exercised here free of feedback; cases that differ only in the learning-rate
  or weight-decay wiring (schedules, masks) run on ``mlp`` alone.

**What is compared.** The parameters *and* every optimizer-state leaf after
every step, not only at the end: an error that appears early and is later
washed out (by decay or by the loss pulling the parameters back) is still
caught. The tolerance is ``rtol=2e-5``; the absolute tolerance is that same
fraction of the largest magnitude the leaf reaches over the run, so a
coordinate crossing zero (a first moment near an optimum, say) is not held to
a relative precision no float32 computation can have.

Both libraries compute ``1 - b**t`` in float32 but differently (adamx with
``expm1``), so agreement is to float32 rounding, not bitwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

STEPS = 150
RTOL = 2e-5

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


def _run(tx: optax.GradientTransformation, problem: str):
    """Parameters and optimizer state after every step, stacked along axis 0."""
    params, grad_fn = PROBLEMS[problem]()

    @jax.jit
    def step(params, state, t):
        updates, state = tx.update(grad_fn(params, t), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    history = []
    for t in range(STEPS):
        params, state = step(params, state, t)
        history.append((params, state))
    return jax.tree.map(lambda *leaves: np.stack(leaves), *history)


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


def _assert_close_scaled(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    atol = RTOL * float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=atol, err_msg=what)


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
def test_matches_optax_every_step(case: str, problem: str) -> None:
    make_adamx, make_optax = CASES[case]
    trajectory, states = _run(make_adamx(), problem)
    expected_trajectory, expected_states = _run(make_optax(), problem)

    for name in expected_trajectory:
        assert np.all(np.isfinite(expected_trajectory[name]))
        _assert_close_scaled(
            trajectory[name], expected_trajectory[name], f"params[{name}]"
        )
    # The parameters must actually have moved, or the comparison says nothing.
    for name, leaf in expected_trajectory.items():
        assert not np.allclose(leaf[-1], leaf[0]), name

    # Same state layout (count, mu, nu[, nu_max], schedule counts) and the
    # same values at every step.
    leaves = jax.tree_util.tree_leaves_with_path(states)
    expected_leaves = jax.tree_util.tree_leaves(expected_states)
    assert len(leaves) == len(expected_leaves)
    for (path, leaf), expected in zip(leaves, expected_leaves, strict=True):
        _assert_close_scaled(leaf, expected, f"state{jax.tree_util.keystr(path)}")

    # Every step count is an int32 scalar that went 1, 2, ..., STEPS.
    counts = [
        leaf for path, leaf in leaves if jax.tree_util.keystr(path).endswith(".count")
    ]
    assert counts, "the state holds no step count"
    for count in counts:
        assert count.dtype == np.int32
        np.testing.assert_array_equal(count, np.arange(1, STEPS + 1))
