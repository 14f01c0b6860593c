"""Parity of adamx's optimizers with their optax counterparts.

Every case runs the adamx optimizer and the optax one side by side for
``STEPS`` jitted steps (``lax.scan``) on two problems, in float32:

* ``mlp``: a small tanh MLP fitted to fixed random regression data by
  mean squared error. Gradients are taken at the current parameters and the
  parameters move through ``optax.apply_updates``, so the trajectory is a
  realistic training run in which any difference feeds back.
* ``stream``: a fixed stream of random gradients whose scale jumps between
  1e-3 and 1e3 from step to step and from leaf to leaf, so the moments see
  both sudden spikes and long quiet stretches.

**What is compared.** The parameters after *every* step, not only the last
ones: an error that appears early and is later washed out (by decay or by
the loss pulling the parameters back) is still caught. The final optimizer
state, leaf by leaf, is compared too. The tolerance is ``rtol=2e-5``; the
absolute tolerance is that same fraction of the largest magnitude the leaf
reaches over the run, so a coordinate crossing zero is not held to a
relative precision no float32 computation can have.

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
    """Parameters after every step (stacked) and the final state."""
    params0, grad_fn = PROBLEMS[problem]()

    @jax.jit
    def run(params0):
        def step(carry, t):
            params, state = carry
            updates, state = tx.update(grad_fn(params, t), state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), params

        (_, state), trajectory = jax.lax.scan(
            step, (params0, tx.init(params0)), jnp.arange(STEPS)
        )
        return trajectory, state

    return run(params0)


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

DECAY_MASK = {"w1": True, "b1": False, "w2": True, "b2": False}


def _decay_matrices_only(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _warmup_cosine():
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=2e-2, warmup_steps=20, decay_steps=STEPS, end_value=1e-4
    )


def _exponential():
    return optax.exponential_decay(
        init_value=1e-2, transition_steps=10, decay_rate=0.7, staircase=False
    )


def _weight_decay_schedule():
    return optax.cosine_decay_schedule(init_value=0.1, decay_steps=STEPS, alpha=0.1)


def _lr(lr: float, direction: optax.GradientTransformation) -> optax.GradientTransformation:
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
    "adamw-mask-tree": (
        lambda: adamx.adamw(1e-2, weight_decay=0.1, mask=DECAY_MASK),
        lambda: optax.adamw(1e-2, weight_decay=0.1, mask=DECAY_MASK),
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
    "nadam-warmup_cosine": (
        lambda: adamx.nadam(_warmup_cosine()),
        lambda: optax.nadam(_warmup_cosine()),
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


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_optax_every_step(case: str, problem: str) -> None:
    make_adamx, make_optax = CASES[case]
    trajectory, state = _run(make_adamx(), problem)
    expected_trajectory, expected_state = _run(make_optax(), problem)

    for name in expected_trajectory:
        assert np.all(np.isfinite(expected_trajectory[name]))
        _assert_close_scaled(trajectory[name], expected_trajectory[name], f"params[{name}]")
    # The parameters must actually have moved, or the comparison says nothing.
    for name, leaf in expected_trajectory.items():
        assert not np.allclose(leaf[-1], leaf[0]), name

    # Same state layout (count, mu, nu[, nu_max], schedule counts) and values.
    leaves = jax.tree_util.tree_leaves_with_path(state)
    expected_leaves = jax.tree_util.tree_leaves(expected_state)
    assert len(leaves) == len(expected_leaves)
    for (path, leaf), expected in zip(leaves, expected_leaves):
        _assert_close_scaled(leaf, expected, f"state{jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("case", list(CASES))
def test_state_count_reaches_steps(case: str) -> None:
    make_adamx, _ = CASES[case]
    _, state = _run(make_adamx(), "stream")
    counts = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if jax.tree_util.keystr(path).endswith(".count")
    ]
    assert counts, "the state holds no step count"
    for count in counts:
        assert count.dtype == jnp.int32
        assert count.shape == ()
        assert int(count) == STEPS
