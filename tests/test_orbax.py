"""Optimizer state survives an Orbax checkpoint, bit for bit, for every transform.

The table is every transform of the catalogue (``tests/catalogue.py``: every
``scale_by_*``, every optimizer alias, ``bias_correction``) and every public
wrapper (around ``adamx.adam``), plus the storage kinds and optax wrappers
whose state holds more than plain arrays: 8-bit moments (``QuantizedArray`` nodes),
stochastically rounded bfloat16, a masked weight decay (``MaskedState``),
``optax.masked`` (``MaskedNode`` leaves) and ``optax.inject_hyperparams``.

Each case runs 12 steps without a break, saving parameters and optimizer
state after step 6 with ``orbax.checkpoint.StandardCheckpointer``. The
checkpoint is restored into the abstract tree from ``jax.eval_shape`` (so
NamedTuple states, dtypes and shapes come back as they were built), and the
last 6 steps are run again from it. Every resumed step must equal the
uninterrupted one bit for bit, in the parameters and in every state leaf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from catalogue import BY_NAME, CATALOGUE, WRAPPERS, build_wrapper

import adamx

SAVED_AT = 6  # steps before the checkpoint
RESUMED = 6  # steps after it

DIRECTION_SCALE = -1e-2  # a bare direction is turned into a small descent step

TRANSFORMS = sorted([entry.name for entry in CATALOGUE] + list(WRAPPERS))

MASK = {"b": False, "s": False, "w": True}
# name: (factory, the node its state must hold for the case to mean anything)
EXTRA = {
    # bfloat16 parameters (BF16_CASES): the Kahan compensation is restored too.
    "low_precision_params[bf16-kahan-int8]": (
        lambda: adamx.low_precision_params(
            adamx.adam(1e-2, mu_dtype="int8", nu_dtype="int8"), "kahan"
        ),
        adamx.LowPrecisionParamsState,
    ),
    "low_precision_params[bf16-kahan8-int4]": (
        lambda: adamx.low_precision_params(
            adamx.adam(1e-2, mu_dtype="int4", nu_dtype="int4"),
            compensation_dtype="int8",
        ),
        adamx.LowPrecisionParamsState,
    ),
    "low_precision_params[bf16-stochastic]": (
        lambda: adamx.low_precision_params(adamx.adam(1e-2), "stochastic", seed=2),
        adamx.LowPrecisionParamsState,
    ),
    "adam[int8]": (
        lambda: adamx.adam(1e-2, mu_dtype="int8", nu_dtype="int8"),
        adamx.QuantizedArray,
    ),
    "adam[int4]": (
        lambda: adamx.adam(1e-2, mu_dtype="int4", nu_dtype="int4"),
        adamx.QuantizedArray,
    ),
    "adam[rounded_bf16]": (
        lambda: adamx.adam(
            1e-2,
            mu_dtype=adamx.Rounded(jnp.bfloat16),
            nu_dtype=adamx.Rounded(jnp.bfloat16),
        ),
        adamx.ScaleByAdamState,
    ),
    "adam[stochastic_rounding]": (
        lambda: adamx.adam(
            1e-2,
            mu_dtype=adamx.StochasticRounding(seed=3),
            nu_dtype=adamx.StochasticRounding(seed=4),
        ),
        adamx.ScaleByAdamState,
    ),
    "adamw[mask]": (
        lambda: adamx.adamw(1e-2, weight_decay=0.1, mask=MASK),
        optax.MaskedState,
    ),
    "optax.masked(adam)": (
        lambda: optax.masked(adamx.adam(1e-2), MASK),
        optax.MaskedNode,
    ),
    "inject_hyperparams(adam)": (
        lambda: optax.inject_hyperparams(adamx.adam)(learning_rate=1e-2),
        optax.InjectStatefulHyperparamsState,
    ),
}
CASES = TRANSFORMS + sorted(EXTRA)


def _build(case: str) -> tuple[optax.GradientTransformation, float | None]:
    """The transform and the factor turning its output into a parameter step."""
    if case in EXTRA:
        return EXTRA[case][0](), None
    if case in WRAPPERS:  # around adamx.adam: its output is a step
        return build_wrapper(case), None
    row = BY_NAME[case]
    return row.build(), (None if row.is_optimizer else DIRECTION_SCALE)


def _params() -> dict[str, jax.Array]:
    key_w, key_b = jax.random.split(jax.random.PRNGKey(0))
    return {
        "w": jax.random.normal(key_w, (64, 128)),  # >= 4096 values: 8-bit storage
        "b": jax.random.normal(key_b, (5,)),
        "s": jnp.asarray(0.3, jnp.float32),  # a scalar leaf
    }


def _noise(params) -> list[dict[str, np.ndarray]]:
    """Per-step gradient noise whose scale swings over two decades."""
    rng = np.random.default_rng(1)
    return [
        {
            name: (rng.standard_normal(np.shape(p)) * 10.0 ** (t % 3 - 1)).astype(
                np.float32
            )
            for name, p in params.items()
        }
        for t in range(SAVED_AT + RESUMED)
    ]


def _compile_step(tx, direction_scale, abstract, noise):
    """One optimizer step on the gradient of a quadratic plus noise, compiled once.

    The executable accepts only arguments with exactly the abstract signature
    it was compiled for, so a restored tree with another structure, dtype,
    shape or weak type is an error rather than a silent recompilation.
    """

    def step(params, state, noise):
        grads = jax.tree.map(lambda p, n: p - 0.5 + n, params, noise)
        updates, state = tx.update(grads, state, params)
        if direction_scale is not None:
            updates = jax.tree.map(lambda u: direction_scale * u, updates)
        return optax.apply_updates(params, updates), state

    return (
        jax.jit(step).lower(abstract["params"], abstract["opt_state"], noise).compile()
    )


def _holds(tree, node_type) -> bool:
    nodes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, node_type))
    return any(isinstance(x, node_type) for x in nodes)


def _bits(x) -> np.ndarray:
    """The array's raw bits, so that equality is bitwise (NaN and -0.0 included)."""
    x = np.asarray(x)
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _assert_bitwise(actual, expected, where):
    assert jax.tree.structure(actual) == jax.tree.structure(expected), where
    paths_and_leaves = jax.tree_util.tree_leaves_with_path(expected)
    for (path, want), got in zip(
        paths_and_leaves, jax.tree.leaves(actual), strict=True
    ):
        name = f"{where}{jax.tree_util.keystr(path)}"
        assert np.dtype(got.dtype) == np.dtype(want.dtype), name
        assert np.shape(got) == np.shape(want), name
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=name)


@pytest.fixture(scope="module")
def checkpointer():
    with ocp.StandardCheckpointer() as ckpt:
        yield ckpt


@pytest.mark.parametrize("case", CASES)
def test_resuming_from_a_checkpoint_is_bitwise_identical(case, checkpointer, tmp_path):
    tx, direction_scale = _build(case)
    params0 = _params()
    if "[bf16" in case:
        params0 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params0)
    noise = _noise(params0)
    abstract = jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, params0)
    step = _compile_step(tx, direction_scale, abstract, noise[0])

    params, state = params0, jax.jit(tx.init)(params0)
    trajectory = []
    for t in range(SAVED_AT + RESUMED):
        params, state = step(params, state, noise[t])
        trajectory.append(jax.device_get({"params": params, "opt_state": state}))
        if t + 1 == SAVED_AT:
            checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()

    restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    _assert_bitwise(restored, trajectory[SAVED_AT - 1], "restored")

    params, state = restored["params"], restored["opt_state"]
    for t in range(SAVED_AT, SAVED_AT + RESUMED):
        params, state = step(params, state, noise[t])
        _assert_bitwise(
            {"params": params, "opt_state": state}, trajectory[t], f"step {t + 1}"
        )

    # The comparison is not vacuous: the state is of the kind the case is
    # about, and the resumed steps moved every parameter.
    if case in EXTRA:
        assert _holds(state, EXTRA[case][1])
    if case == "adam[stochastic_rounding]":
        assert {leaf.dtype for leaf in jax.tree.leaves(state[0].mu)} == {
            np.dtype(jnp.bfloat16)
        }
    before, after = trajectory[SAVED_AT - 1]["params"], trajectory[-1]["params"]
    for name in before:
        assert np.any(before[name] != after[name]), name
