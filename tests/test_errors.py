"""Bad input: every factory rejects it early, with an error that quotes the call.

Hyperparameters are checked once, at construction, when they are concrete
numbers; the error names the public call, the argument and its value, e.g.
``scale_by_adam(b1=1.5): b1 must be in [0, 1)``. Tracers and schedules cannot
be checked without running them and pass through. Trees that do not match
the state and non-floating leaves are refused at ``init``/``update``.
"""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import BY_NAME, CATALOGUE, WRAPPERS, build

import adamx

DIRECTION_ARGS = ("b1", "b2", "eps", "eps_root", "mu_dtype", "nu_dtype")
OPTIMIZER_ARGS = ("learning_rate", *DIRECTION_ARGS)

# The Adam family, whose directions a constant gradient makes easy to state
# by hand (the traced-hyperparameter and schedule tests below):
# name -> (factory, required arguments, constant-g kind)
FACTORIES = {
    "scale_by_adam": (adamx.scale_by_adam, {}, "adam"),
    "scale_by_amsgrad": (adamx.scale_by_amsgrad, {}, "adam"),
    "bias_correction": (adamx.bias_correction, {"decay": 0.9}, "bias"),
    "adam": (adamx.adam, {"learning_rate": 1e-3}, "adam"),
    "adamw": (adamx.adamw, {"learning_rate": 1e-3}, "adam"),
    "nadam": (adamx.nadam, {"learning_rate": 1e-3}, "nesterov"),
    "nadamw": (adamx.nadamw, {"learning_rate": 1e-3}, "nesterov"),
    "amsgrad": (adamx.amsgrad, {"learning_rate": 1e-3}, "adam"),
}
ALIASES = ("adam", "adamw", "nadam", "nadamw", "amsgrad")
STATEFUL = [name for name in FACTORIES if name != "bias_correction"]


def _build(name: str, **overrides):
    factory, required, _ = FACTORIES[name]
    return factory(**{**required, **overrides})


# How every argument of every catalogued transform is checked at construction:
# argument -> (values out of range, the sentence the error ends with, the
# edge value that is still accepted). A new argument without a rule fails
# test_every_argument_of_every_transform_has_a_rule.
DECAY = ([1.5, -0.1, 1.0, 1, float("nan")], "must be in [0, 1)", 0.0)
NON_NEGATIVE = ([-0.1, -1e-12], "must be >= 0", 0.0)
RECTIFIABLE = ([3.0, -1.0], "must be >= 4", 4.0)
RULES = {
    **dict.fromkeys(("b1", "b2", "b3", "decay"), DECAY),
    **dict.fromkeys(
        (
            "eps",
            "eps_root",
            "learning_rate",
            "weight_decay",
            "a",
            "b",
            "alpha",
            "initial_accumulator_value",
        ),
        NON_NEGATIVE,
    ),
    "threshold": RECTIFIABLE,
}
STORAGE_ARGS = ("mu_dtype", "nu_dtype")
# (a value that is no floating dtype, the message's tail after the quote)
BAD_STORAGE = [
    ("float33", "unknown dtype"),
    ("int32", "state must be stored in a floating"),
    ("bool", "state must be stored in a floating"),
    ("int2", "state must be stored in a floating"),
    (jnp.int8, "state must be stored in a floating"),
]
# Switches and callables: checked by type in the non-numeric test below.
NOT_RANGES = {
    "mask",
    "nesterov",
    "epsilon_hat",
    "bias_correction_mu",
    "bias_correction_nu",
    "max_of",
    "use_clipping",
    "clip_value_fn",
}


def _show(value) -> str:
    return value.__name__ if isinstance(value, type) else repr(value)


def _bad_arguments():
    """(name, argument, value, the start of the expected message)."""
    cases = []
    for entry in CATALOGUE:
        for arg in entry.parameters:
            if arg in RULES:
                values, sentence, _ = RULES[arg]
                cases.extend(
                    (entry.name, arg, v, f"{entry.name}({arg}={v!r}): {arg} {sentence}")
                    for v in values
                )
            elif arg in STORAGE_ARGS:
                cases.extend(
                    (entry.name, arg, v, f"{entry.name}({arg}={v!r}): {tail}")
                    for v, tail in BAD_STORAGE
                )
    return cases


BAD = _bad_arguments()


def test_every_argument_of_every_transform_has_a_rule():
    known = {*RULES, *STORAGE_ARGS, *NOT_RANGES}
    unknown = sorted(
        f"{entry.name}({arg})"
        for entry in CATALOGUE
        for arg in entry.parameters
        if arg not in known
    )
    assert not unknown, f"add the range of {unknown} to RULES in test_errors.py"


@pytest.mark.parametrize(
    ("name", "arg", "value", "message"),
    BAD,
    ids=[f"{n}-{a}={_show(v)}" for n, a, v, _ in BAD],
)
def test_bad_hyperparameter_raises_quoting_the_call(name, arg, value, message):
    # Anchored: "scale_by_adam(...)" must not pass for "adam(...)".
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        build(name, **{arg: value})


def test_examples_from_the_documentation():
    with pytest.raises(
        ValueError, match="^" + re.escape("scale_by_adam(b1=1.5): b1 must be in [0, 1)")
    ):
        adamx.scale_by_adam(b1=1.5)
    with pytest.raises(ValueError, match="^" + re.escape("adam(learning_rate=-0.1)")):
        adamx.adam(-0.1)


@pytest.mark.parametrize("name", [entry.name for entry in CATALOGUE])
def test_valid_edge_values_are_accepted(name):
    """Every checked argument at the edge of its range (0, or RAdam's 4) builds."""
    edges = {a: RULES[a][2] for a in BY_NAME[name].parameters if a in RULES}
    assert edges
    build(name, **edges)


# --------------------------------------------------------------------------
# Traced hyperparameters and schedules
# --------------------------------------------------------------------------

G = np.array([1.0, -2.0, 0.5], np.float32)


def _constant_gradient_direction(
    kind: str, t: int, *, b1=0.9, b2=0.999, eps=1e-8, decay=0.9
):
    """The direction at step t when every gradient is G, float64 by hand.

    m_t = (1 - b1^t) G and v_t = (1 - b2^t) G², so the debiased moments are
    G and G² exactly; Nesterov's look-ahead weights them as written below.
    """
    b1, b2, eps, decay = (float(np.float32(x)) for x in (b1, b2, eps, decay))
    g = G.astype(np.float64)
    if kind == "bias":
        return g / (1 - decay**t)
    m_hat = g
    if kind == "nesterov":
        m_hat = (b1 * (1 - b1**t) / (1 - b1 ** (t + 1)) + (1 - b1) / (1 - b1**t)) * g
    return m_hat / (np.abs(g) + eps)


def _first_update(name, hyper, lr, g):
    if name == "bias_correction":
        tx = adamx.bias_correction(hyper)
    elif name in ALIASES:
        tx = _build(name, b1=hyper, learning_rate=lr)
    else:
        tx = _build(name, b1=hyper)
    u, _ = tx.update(g, tx.init(g), jnp.zeros_like(g))
    return u


@pytest.mark.parametrize("name", list(FACTORIES))
def test_traced_hyperparameters_build_inside_jit(name):
    """b1 (or decay) and the learning rate as tracers: built, run, not validated."""
    _, _, kind = FACTORIES[name]
    run = jax.jit(lambda hyper, lr, g: _first_update(name, hyper, lr, g))
    u = np.asarray(run(0.8, 0.5, jnp.asarray(G)), np.float64)
    if kind == "bias":
        expected = _constant_gradient_direction(kind, 1, decay=0.8)
    else:
        expected = _constant_gradient_direction(kind, 1, b1=0.8)
    if name in ALIASES:
        expected = -0.5 * expected
    np.testing.assert_allclose(u, expected, rtol=1e-5)
    # Out of range, but a tracer's value is unknown at construction: no error.
    run(1.5, -0.1, jnp.asarray(G))


@pytest.mark.parametrize("name", ALIASES)
def test_learning_rate_schedules_are_accepted(name):
    def schedule(count):
        return 0.1 / (count + 1)

    _, _, kind = FACTORIES[name]
    tx = _build(name, learning_rate=schedule)
    params = jnp.zeros(3)
    state = tx.init(params)
    for t in (1, 2, 3):
        u, state = tx.update(jnp.asarray(G), state, params)
        expected = -0.1 / t * _constant_gradient_direction(kind, t)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5)


# --------------------------------------------------------------------------
# Trees that do not match the state
# --------------------------------------------------------------------------

PARAMS = {"layer": {"w": jnp.zeros(2), "b": jnp.zeros(3)}}


@pytest.mark.parametrize("name", STATEFUL)
def test_update_with_an_extra_key_names_it(name):
    tx = _build(name)
    state = tx.init(PARAMS)
    grads = {"layer": {"w": jnp.ones(2), "b": jnp.ones(3), "extra": jnp.ones(1)}}
    with pytest.raises(
        ValueError, match=re.escape("Only in the updates: [\"['layer']['extra']\"]")
    ):
        tx.update(grads, state, grads)


@pytest.mark.parametrize("name", STATEFUL)
def test_update_with_a_missing_key_names_it(name):
    tx = _build(name)
    state = tx.init(PARAMS)
    grads = {"layer": {"w": jnp.ones(2)}}
    with pytest.raises(
        ValueError, match=re.escape("only in the state: [\"['layer']['b']\"]")
    ):
        tx.update(grads, state, grads)


# --------------------------------------------------------------------------
# Integer and boolean leaves
# --------------------------------------------------------------------------

NON_FLOAT = [
    ("step", jnp.asarray(3, jnp.int32), "int32"),
    ("mask", jnp.asarray([True, False]), "bool"),
    ("ids", jnp.asarray([1, 2], jnp.uint8), "uint8"),
]


def _message(path: str, dtype: str) -> str:
    return re.escape(path) + ".*" + re.escape(dtype)


@pytest.mark.parametrize(
    ("leaf", "value", "dtype"), NON_FLOAT, ids=[n[2] for n in NON_FLOAT]
)
@pytest.mark.parametrize("name", STATEFUL)
def test_init_with_a_non_float_leaf_names_its_path(name, leaf, value, dtype):
    """bias_correction is absent: its init keeps only a count and never reads params."""
    params = {"layer": {"w": jnp.zeros(2), leaf: value}}
    with pytest.raises(TypeError, match=_message(f"['layer']['{leaf}']", dtype)):
        _build(name).init(params)


@pytest.mark.parametrize(
    ("leaf", "value", "dtype"), NON_FLOAT, ids=[n[2] for n in NON_FLOAT]
)
@pytest.mark.parametrize("name", list(FACTORIES))
def test_update_with_a_non_float_leaf_names_its_path(name, leaf, value, dtype):
    params = {"layer": {"w": jnp.zeros(2), leaf: jnp.zeros(value.shape)}}
    tx = _build(name)
    state = tx.init(params)
    grads = {"layer": {"w": jnp.ones(2), leaf: value}}
    with pytest.raises(TypeError, match=_message(f"['layer']['{leaf}']", dtype)):
        tx.update(grads, state, params)


# Every catalogued transform, the wrappers and AdEMAMix's b3 schedule;
# with_stats checks its one number (every) itself (see test_diagnostics).
NUMERIC_FACTORIES = [
    name
    for name in adamx.__all__
    if name in BY_NAME
    or (name in WRAPPERS and name != "with_stats")
    or name == "ademamix_b3_schedule"
]


def _numeric_arguments():
    """(public factory, one of its numeric hyperparameters), for every pair."""
    cases = []
    for name in NUMERIC_FACTORIES:
        for arg, parameter in inspect.signature(
            getattr(adamx, name)
        ).parameters.items():
            numeric = isinstance(parameter.default, (int, float)) and not isinstance(
                parameter.default, bool
            )
            if numeric or arg in ("learning_rate", "decay"):
                cases.append((name, arg))
    return cases


NUMERIC = _numeric_arguments()


def _required(name: str) -> dict:
    if name == "ademamix_b3_schedule":
        return {"b3": 0.999, "warmup_steps": 10}
    if name in WRAPPERS:
        return {"inner": adamx.adam(1e-3)}
    return dict(BY_NAME[name].required)


def test_every_transform_with_numbers_is_covered():
    names = {name for name, _ in NUMERIC}
    assert {"adam", "scale_by_adopt", "ademamix", "lamb", "yogi"} <= names
    assert len(NUMERIC) > 60


@pytest.mark.parametrize("value", ["0.1", True, None, 1 + 2j, [0.1, "x"]])
@pytest.mark.parametrize(("name", "arg"), NUMERIC, ids=[f"{n}-{a}" for n, a in NUMERIC])
def test_non_numeric_hyperparameters_are_refused_at_construction(name, arg, value):
    """``adam("0.1")`` fails when built, naming the argument, not at step 1."""
    if arg == "weight_decay" and value is None:
        pytest.skip("weight_decay=None means no weight decay (adamx._alias)")
    factory = getattr(adamx, name)
    arguments = {**_required(name), arg: value}
    # A wrong type is a TypeError; an int argument (warmup) says ValueError.
    with pytest.raises(
        (TypeError, ValueError), match=re.escape(f"({arg}={value!r}): {arg} must be")
    ):
        factory(**arguments)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.int32])
def test_hyperparameters_as_arrays_of_any_real_dtype_are_accepted(dtype):
    # optax.inject_hyperparams(..., hyperparam_dtype=jnp.bfloat16) passes these.
    tx = adamx.adam(jnp.asarray(1, dtype), b1=jnp.asarray(0.5, dtype))
    updates, _ = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
    assert np.all(np.isfinite(np.asarray(updates)))
    with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\)"):
        adamx.adam(1e-3, b2=jnp.asarray(1.5, dtype))
