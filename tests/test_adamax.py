"""AdaMax and AdaMaxW (adamx.transforms.adamax) against the paper and optax.

What every catalogued transform shares (traced hyperparameters, storage
dtypes, float16, construction errors) is tested table-driven in test_matrix,
test_uniform_options and test_errors; this file holds what is AdaMax's own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import (
    as_float32,
    assert_same_training,
    reference_check,
)

from adamx.transforms.adamax import adamax, adamaxw, scale_by_adamax

# ---------------------------------------------------------------------------
# Float64 reference: Kingma & Ba (2015), Algorithm 2, with optax's eps placed
# inside the maximum.
# ---------------------------------------------------------------------------


def adamax_reference(b1: float, b2: float, eps: float):
    def run(grads: np.ndarray):
        m = np.zeros_like(grads[0])
        u = np.zeros(grads.shape[1:])
        directions = []
        for t, g in enumerate(grads, start=1):
            m = b1 * m + (1 - b1) * g
            u = np.maximum(b2 * u, np.abs(g) + eps)
            directions.append((m / (1 - b1**t)) / u)
        return np.stack(directions), (m, u)

    return run


CONFIGS = {
    "defaults": {},
    # eps comparable to the smallest gradients, so its placement matters.
    "large-eps": {"eps": 0.05},
    # b1 = 0: no momentum, the bias correction is exactly 1.
    "no-momentum": {"b1": 0.0, "b2": 0.5, "eps": 1e-6},
    # The paper's rule, without eps.
    "paper": {"b1": 0.8, "b2": 0.99, "eps": 0.0},
}
DEFAULTS = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}

# float32 against float64: every step rounds a few float32 operations into m_t
# and the second moment (2**-24 = 6e-8 relative each); in an EMA of decay b
# those roundings add up like a random walk over min(t, 1/(1 - b)) steps,
# about 10 ulps = 6e-7 over these 120 steps. Errors are relative to the leaf's
# largest value. Measured worst: 2.2e-7; 5e-6 leaves a margin of 20x.
# float64: 1e-10 is far above rounding (1e-15) and passes only exact algebra.
TOLERANCES = {False: 5e-6, True: 1e-10}


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_float64_reference(config: str, x64: bool) -> None:
    hp = {**DEFAULTS, **CONFIGS[config]}
    # In float32 adamx forms 1 - b1 from the decimal b1, so the reference gets
    # the decimal. b2 enters only as the rate of u_t = max(b2 u_{t-1}, ...),
    # which adamx holds as float32(b2): at b2 = 0.999 that rate is 1.3e-8
    # larger, which compounds over the run (6.8e-7 with the decimal rate
    # against 2.1e-7 with the float32 one), so the reference gets the latter.
    ref_hp = hp if x64 else {**hp, "b2": as_float32(hp["b2"])}
    reference_check(
        scale_by_adamax(**hp),
        adamax_reference(**ref_hp),
        x64=x64,
        rtol=TOLERANCES[x64],
    )


# ---------------------------------------------------------------------------
# Parity with optax, parameters fed back through a small MLP.
# ---------------------------------------------------------------------------

# adamx in float32 against optax run in float64 (see assert_same_training),
# parameters and state at every step: measured worst 1.5e-6 (adamax). optax's
# own float32 run is as close here (9e-7): Adamax corrects only the first
# moment, at b1 = 0.9, where 1 - b1**t does not cancel.
PARITY_RTOL = 5e-6


def _decay_matrices(params):
    return {name: leaf.ndim == 2 for name, leaf in params.items()}


PARITY = {
    "adamax": (lambda: adamax(1e-2), lambda: optax.adamax(1e-2)),
    "adamax-hyperparameters": (
        lambda: adamax(3e-3, b1=0.8, b2=0.95, eps=1e-3),
        lambda: optax.adamax(3e-3, b1=0.8, b2=0.95, eps=1e-3),
    ),
    "adamaxw": (
        lambda: adamaxw(1e-2, weight_decay=0.1),
        lambda: optax.adamaxw(1e-2, weight_decay=0.1),
    ),
    "adamaxw-mask-schedules": (
        lambda: adamaxw(
            optax.cosine_decay_schedule(1e-2, 100),
            weight_decay=optax.linear_schedule(0.2, 0.0, 100),
            mask=_decay_matrices,
        ),
        lambda: optax.adamaxw(
            optax.cosine_decay_schedule(1e-2, 100),
            weight_decay=optax.linear_schedule(0.2, 0.0, 100),
            mask=_decay_matrices,
        ),
    ),
    "scale_by_adamax": (
        lambda: optax.chain(scale_by_adamax(eps=1e-4), optax.scale(-1e-2)),
        lambda: optax.chain(optax.scale_by_adamax(eps=1e-4), optax.scale(-1e-2)),
    ),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_matches_optax_every_step(case: str) -> None:
    make_adamx, make_optax = PARITY[case]
    assert_same_training(make_adamx, make_optax, PARITY_RTOL)


# ---------------------------------------------------------------------------
# Complex parameters: the infinity norm is the modulus.
# ---------------------------------------------------------------------------


def test_complex_parameters_keep_a_real_infinity_norm() -> None:
    params = {"z": jnp.array([3.0 + 4.0j, 0.0 - 1.0j], jnp.complex64)}
    tx = scale_by_adamax(eps=0.0)
    updates, state = jax.jit(tx.update)(params, tx.init(params))
    assert state.nu["z"].dtype == jnp.float32
    np.testing.assert_allclose(state.nu["z"], [5.0, 1.0])
    # The first direction is g / |g|, a unit phase.
    np.testing.assert_allclose(updates["z"], [0.6 + 0.8j, -1.0j], rtol=1e-6)
