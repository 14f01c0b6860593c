"""How far adamx's trajectories are from optax's, optimizer by optimizer.

Run:  python examples/optax_parity.py [--steps 150]

Each pair starts from the same parameters and sees the same gradients, whose
scale cycles over 1e-2 … 1e2; the parameters feed back through
optax.apply_updates. It prints the worst relative parameter deviation,
|adamx − optax| / (|optax| + 1e-3), after the last step. Differences come from
float32 rounding and from adamx forming 1 − β before rounding β to float32.
optax in float32 is not the reference: examples/accuracy.py measures both
against optax's formula run in float64, where most of the gap is optax's.
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp
import optax
import optax.contrib

import adamx


def pairs() -> dict[str, tuple[optax.GradientTransformation, ...]]:
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 150)
    return {
        "adam": (adamx.adam(1e-2), optax.adam(1e-2)),
        "adamw": (adamx.adamw(1e-2), optax.adamw(1e-2)),
        "nadam": (adamx.nadam(1e-2), optax.nadam(1e-2)),
        "nadamw": (adamx.nadamw(1e-2), optax.nadamw(1e-2)),
        "amsgrad": (adamx.amsgrad(1e-2), optax.amsgrad(1e-2)),
        "adam eps_root": (
            adamx.adam(1e-2, eps_root=1e-8),
            optax.adam(1e-2, eps_root=1e-8),
        ),
        "adam schedule": (adamx.adam(schedule), optax.adam(schedule)),
        "adamax": (adamx.adamax(1e-2), optax.adamax(1e-2)),
        "adamaxw": (adamx.adamaxw(1e-2), optax.adamaxw(1e-2)),
        "adabelief": (adamx.adabelief(1e-2), optax.adabelief(1e-2)),
        "yogi": (adamx.yogi(1e-2), optax.yogi(1e-2)),
        "lamb": (adamx.lamb(1e-2), optax.lamb(1e-2)),
        "adopt": (adamx.adopt(1e-2), optax.contrib.adopt(1e-2)),
        "ademamix": (adamx.ademamix(1e-2), optax.contrib.ademamix(1e-2)),
    }


def worst_deviation(ours, theirs, steps: int) -> float:
    params = {"a": jnp.ones((3, 4)), "b": jnp.zeros(()), "c": jnp.full((5,), -0.5)}
    ours_state, theirs_state = ours.init(params), theirs.init(params)
    ours_params = theirs_params = params
    ours_update, theirs_update = jax.jit(ours.update), jax.jit(theirs.update)
    key = jax.random.PRNGKey(0)
    for step in range(steps):
        key, sub = jax.random.split(key)
        grads = jax.tree.map(
            lambda x, sub=sub, step=step: (
                jax.random.normal(sub, x.shape) * 10.0 ** (step % 5 - 2)
            ),
            params,
        )
        u, ours_state = ours_update(grads, ours_state, ours_params)
        v, theirs_state = theirs_update(grads, theirs_state, theirs_params)
        ours_params = optax.apply_updates(ours_params, u)
        theirs_params = optax.apply_updates(theirs_params, v)
    return max(
        float(jnp.max(jnp.abs(a - b) / (jnp.abs(b) + 1e-3)))
        for a, b in zip(
            jax.tree.leaves(ours_params), jax.tree.leaves(theirs_params), strict=True
        )
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    print(f"{platform.machine()} {platform.processor() or ''}; jax {jax.__version__}")
    results = {}
    for name, (ours, theirs) in pairs().items():
        results[name] = worst_deviation(ours, theirs, args.steps)
        print(f"{name:14s} worst relative deviation after {args.steps} steps: "
              f"{results[name]:.1e}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
