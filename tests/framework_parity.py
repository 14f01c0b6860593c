"""Trajectories of the real PyTorch and Keras optimizers, and adamx's presets on them.

The problem is a noisy quadratic with O(1) parameters whose gradient scale
swings over six orders of magnitude from step to step:

    g_t = sign * s_t * ((θ_{t-1} - target) + noise_t),   s_t = 10^{u_t}, u_t ∈ [-4, 2]

computed element-wise in float32 NumPy, so every framework sees bit-identical
gradients for identical parameters. ``sign = -1`` with ``maximize=True``.

Run ``python tests/framework_parity.py --record`` (with torch and keras
installed) to rewrite ``tests/fixtures/framework_trajectories.json``; the
script prints the worst deviation of each adamx preset from the frameworks.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any

import numpy as np

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "framework_trajectories.json"
STEPS = 300
RECORD_EVERY = 5
DIM = 6

# (framework, optimizer, keyword arguments in that framework's own names)
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("torch", "adam", {"lr": 1e-2}),
    ("torch", "adam", {"lr": 1e-2, "weight_decay": 0.1}),
    ("torch", "adam", {"lr": 1e-2, "amsgrad": True}),
    ("torch", "adam", {"lr": 1e-2, "maximize": True}),
    ("torch", "adam", {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-3}),
    (
        "torch",
        "adam",
        {"lr": 1e-2, "weight_decay": 0.05, "amsgrad": True, "maximize": True},
    ),
    ("torch", "adamw", {"lr": 1e-2}),
    ("torch", "adamw", {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
    ("torch", "adamw", {"lr": 1e-2, "maximize": True}),
    ("keras", "adam", {"learning_rate": 1e-2}),
    ("keras", "adam", {"learning_rate": 1e-2, "amsgrad": True}),
    ("keras", "adam", {"learning_rate": 3e-2, "beta_1": 0.8, "epsilon": 1e-3}),
    ("keras", "adamw", {"learning_rate": 1e-2}),
    ("keras", "adamw", {"learning_rate": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
]


def problem(seed: int = 0) -> dict[str, np.ndarray]:
    """The fixed inputs: start, target, per-step scales and noise (float32)."""
    rng = np.random.default_rng(seed)
    return {
        "theta0": rng.uniform(-1.5, 1.5, DIM).astype(np.float32),
        "target": rng.uniform(-1.0, 1.0, DIM).astype(np.float32),
        "scales": (10.0 ** rng.uniform(-4.0, 2.0, STEPS)).astype(np.float32),
        "noise": rng.normal(0.0, 0.3, (STEPS, DIM)).astype(np.float32),
    }


def gradient(
    inputs: dict[str, np.ndarray], theta: np.ndarray, step: int, maximize: bool
) -> np.ndarray:
    """g_t for parameters ``theta`` at 0-based ``step``, in float32."""
    theta = np.asarray(theta, np.float32)
    g = inputs["scales"][step] * ((theta - inputs["target"]) + inputs["noise"][step])
    return (-g if maximize else g).astype(np.float32)


def run_torch(name: str, kwargs: dict[str, Any], inputs: dict) -> np.ndarray:
    import torch

    theta = torch.tensor(inputs["theta0"], requires_grad=True)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    opt = cls([theta], foreach=False, **kwargs)
    maximize = kwargs.get("maximize", False)
    path = []
    for step in range(STEPS):
        grad = gradient(inputs, theta.detach().numpy(), step, maximize)
        theta.grad = torch.from_numpy(grad)
        opt.step()
        path.append(theta.detach().numpy().copy())
    return np.stack(path)


def run_keras(name: str, kwargs: dict[str, Any], inputs: dict) -> np.ndarray:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError("run with KERAS_BACKEND=jax")
    theta = keras.Variable(inputs["theta0"], dtype="float32")
    cls = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}[name]
    opt = cls(**kwargs)
    opt.build([theta])
    path = []
    for step in range(STEPS):
        grad = gradient(inputs, np.asarray(theta.value), step, False)
        opt.apply_gradients([(keras.ops.convert_to_tensor(grad), theta)])
        path.append(np.asarray(theta.value).copy())
    return np.stack(path)


def run_adamx(framework: str, name: str, kwargs: dict[str, Any], inputs: dict):
    """The matching adamx preset on the same problem, as a float32 trajectory."""
    import jax
    import jax.numpy as jnp
    import optax

    from adamx.compat import keras as keras_presets
    from adamx.compat import torch as torch_presets

    presets = {"torch": torch_presets, "keras": keras_presets}[framework]
    opt = getattr(presets, name)(**kwargs)
    maximize = kwargs.get("maximize", False)
    theta = jnp.asarray(inputs["theta0"])
    state = opt.init(theta)
    step_fn = jax.jit(
        lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(
            *opt.update(g, s, p)
        )
    )
    path = []
    for step in range(STEPS):
        grad = gradient(inputs, np.asarray(theta), step, maximize)
        theta, state = step_fn(jnp.asarray(grad), state, theta)
        path.append(np.asarray(theta).copy())
    return np.stack(path)


def run_framework(framework: str, name: str, kwargs: dict, inputs: dict):
    runner = {"torch": run_torch, "keras": run_keras}[framework]
    return runner(name, kwargs, inputs)


def record() -> None:
    import keras
    import torch

    inputs = problem()
    runs = []
    for framework, name, kwargs in CONFIGS:
        path = run_framework(framework, name, kwargs, inputs)
        ours = run_adamx(framework, name, kwargs, inputs)
        worst = float(np.max(np.abs(ours - path)))
        print(f"{framework}.{name}({kwargs}): worst |adamx - {framework}| {worst:.2e}")
        runs.append(
            {
                "framework": framework,
                "optimizer": name,
                "kwargs": kwargs,
                "params": path[RECORD_EVERY - 1 :: RECORD_EVERY].tolist(),
            }
        )
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(
        json.dumps(
            {
                "about": __doc__.splitlines()[0],
                "versions": {"torch": torch.__version__, "keras": keras.__version__},
                "steps": STEPS,
                "record_every": RECORD_EVERY,
                "runs": runs,
            },
            indent=None,
        )
    )
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="rewrite the fixture")
    if parser.parse_args().record:
        record()
