"""The PyTorch and Keras presets reproduce the real frameworks' trajectories.

The recorded fixture (tests/fixtures/framework_trajectories.json, written by
``python tests/framework_parity.py --record``) holds torch.optim.Adam/AdamW and
keras.optimizers.Adam/AdamW trajectories; those comparisons always run. When
torch or keras is installed (the ``parity`` extra), the live comparisons run too.
"""

import importlib.util
import json
import re

import numpy as np
import pytest
from framework_parity import (
    CONFIGS,
    FIXTURE,
    gradient,
    problem,
    run_adamx,
    run_framework,
)

from adamx.compat import keras as keras_presets
from adamx.compat import torch as torch_presets

TOLERANCE = 2e-5  # absolute, on O(1) parameters, over all 300 steps

RECORDED = json.loads(FIXTURE.read_text())
INPUTS = problem()


def _label(run):
    return f"{run['framework']}.{run['optimizer']}({run['kwargs']})"


def _recorded_path(ours, run):
    every = RECORDED["record_every"]
    return ours[every - 1 :: every], np.asarray(run["params"], np.float32)


def test_fixture_covers_every_config():
    recorded = [(r["framework"], r["optimizer"], r["kwargs"]) for r in RECORDED["runs"]]
    as_json = [json.loads(json.dumps(c)) for c in CONFIGS]
    assert [list(r) for r in recorded] == [list(c) for c in as_json]


@pytest.mark.parametrize("run", RECORDED["runs"], ids=_label)
def test_presets_match_recorded_framework_trajectories(run):
    kwargs = dict(run["kwargs"])
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    ours = run_adamx(run["framework"], run["optimizer"], kwargs, INPUTS)
    ours, theirs = _recorded_path(ours, run)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE)


LIVE = [
    pytest.param(
        config,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(config[0]) is None,
            reason=f"{config[0]} not installed (pip install -e '.[parity]')",
        ),
        id=f"{config[0]}.{config[1]}({config[2]})",
    )
    for config in CONFIGS
]


@pytest.mark.parametrize("config", LIVE)
def test_presets_match_live_frameworks(config):
    framework, name, kwargs = config
    theirs = run_framework(framework, name, kwargs, INPUTS)
    ours = run_adamx(framework, name, kwargs, INPUTS)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE)


def _run_optimizer(opt, maximize=False):
    import jax.numpy as jnp
    import optax

    theta = jnp.asarray(INPUTS["theta0"])
    state = opt.init(theta)
    path = []
    for step in range(RECORDED["steps"]):
        g = jnp.asarray(gradient(INPUTS, np.asarray(theta), step, maximize))
        updates, state = opt.update(g, state, theta)
        theta = optax.apply_updates(theta, updates)
        path.append(np.asarray(theta))
    return np.stack(path)


def _recorded(framework, name, **kwargs):
    for run in RECORDED["runs"]:
        if (run["framework"], run["optimizer"], run["kwargs"]) == (
            framework,
            name,
            kwargs,
        ):
            return run
    raise KeyError(kwargs)


def test_keras_epsilon_hat_placement_is_what_matches_keras():
    import adamx

    run = _recorded("keras", "adam", learning_rate=3e-2, beta_1=0.8, epsilon=1e-3)
    plain = _run_optimizer(adamx.adam(3e-2, b1=0.8, eps=1e-3))
    plain, theirs = _recorded_path(plain, run)
    # Adding eps to the corrected sqrt(v) instead of the raw one is a visible
    # difference at eps=1e-3, far beyond float32 rounding: the preset is needed.
    assert np.max(np.abs(plain - theirs)) > 50 * TOLERANCE
    hat = _run_optimizer(adamx.adam(3e-2, b1=0.8, eps=1e-3, epsilon_hat=True))
    hat, theirs = _recorded_path(hat, run)
    np.testing.assert_allclose(hat, theirs, rtol=0, atol=TOLERANCE)


def test_torch_weight_decay_is_coupled_and_amsgrad_takes_raw_max():
    import adamx

    run = _recorded("torch", "adam", lr=1e-2, weight_decay=0.1)
    decoupled, theirs = _recorded_path(
        _run_optimizer(adamx.adamw(1e-2, weight_decay=0.1)), run
    )
    assert np.max(np.abs(decoupled - theirs)) > 50 * TOLERANCE

    run = _recorded("torch", "adam", lr=1e-2, amsgrad=True)
    corrected, theirs = _recorded_path(_run_optimizer(adamx.amsgrad(1e-2)), run)
    raw, _ = _recorded_path(_run_optimizer(adamx.amsgrad(1e-2, max_of="raw")), run)
    assert np.max(np.abs(corrected - theirs)) > 50 * TOLERANCE
    np.testing.assert_allclose(raw, theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: torch_presets.adam(betas=(0.9,)),
            "adamx.compat.torch.adam(betas=(0.9,))",
        ),
        (
            lambda: torch_presets.adamw(betas=(0.9, 1.0)),
            "adamx.compat.torch.adamw(betas=(0.9, 1.0))",
        ),
        (
            lambda: torch_presets.adam(lr=-1.0),
            "adamx.compat.torch.adam(lr=-1.0)",
        ),
        (
            lambda: torch_presets.adam(weight_decay=-0.1),
            "adamx.compat.torch.adam(weight_decay=-0.1)",
        ),
        (lambda: keras_presets.adam(beta_1=1.5), "adamx.compat.keras.adam(beta_1=1.5)"),
        (
            lambda: keras_presets.adamw(epsilon=-1.0),
            "adamx.compat.keras.adamw(epsilon=-1.0)",
        ),
    ],
)
def test_preset_errors_quote_the_call(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
