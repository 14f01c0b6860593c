"""Optimizer paths on three 2-D test functions: where Adam's pieces come from.

Run:  python examples/trajectories.py [--steps 500] [--out PNG]
      python examples/trajectories.py --quick   # 60 steps

Seven optimizers start from the same point on each of three functions and take
the same number of full-gradient steps:

- SGD, SGD with momentum 0.9, RMSProp and AdaGrad from optax;
- Adam, AdamW (weight decay 0.01) and AMSGrad from adamx. AdamW's decoupled
  decay pulls towards the origin, so it settles a little off each minimum;
  AMSGrad keeps the largest v seen, so after the steep start on Rosenbrock and
  Beale its steps stay short.

Adam is momentum, RMSProp and bias correction in one update:

    m_t = β₁ m_{t-1} + (1 - β₁) g_t          (momentum: an average of gradients)
    v_t = β₂ v_{t-1} + (1 - β₂) g_t²         (RMSProp: an average of squares)
    θ_t = θ_{t-1} - α · [m_t / (1 - β₁ᵗ)] / (√[v_t / (1 - β₂ᵗ)] + ε)
                                             (bias correction: divide by 1 - βᵗ)

Momentum alone keeps SGD's per-coordinate scale, so one learning rate must
suit the steepest direction; RMSProp alone divides by √v and takes
steps of about α in every coordinate, but without momentum it zig-zags across
a curved valley; Adam has both. Bias correction matters at the start: both
averages start at zero, so after one gradient v₁ = (1 - β₂) g₁², and RMSProp's
first step is α/√(1 - β₂) ≈ 3.16 α per coordinate (optax's default decay 0.9),
while Adam's, corrected with t = 1, is exactly α · sign(g₁). The script prints
those first steps.

Functions (start → minimum):

- Rosenbrock (1 - x)² + 100 (y - x²)²: (-1.5, 2) → (1, 1), f = 0, along a
  narrow curved valley;
- Beale (1.5 - x + xy)² + (2.25 - x + xy²)² + (2.625 - x + xy³)²:
  (1, 1.5) → (3, 0.5), f = 0, flat plateaus and steep walls;
- a saddle x² - y² + y⁴/2: (1, 0.001) → (0, ±1), f = -0.5. Near the origin it
  is the saddle x² - y²; the y⁴/2 term only bounds it below so that every run
  ends at a finite loss. The start lies a hair off the saddle's attracting
  line y = 0: plain gradient descent needs y to grow geometrically from 0.001,
  while the adaptive methods divide the tiny y-gradient by its own size and
  leave at once.

Learning rates are set per function and optimizer (the table in ``LR``),
chosen by hand from a coarse grid (1e-4, 3e-4, ..., 1) so that every run is
stable and makes visible progress; Adam, AdamW and AMSGrad share one rate per
function so that their paths differ only by their updates.

The script prints each optimizer's final loss per function, its first step,
and on the saddle the step at which |y| first reaches 0.5; it draws one panel
per function (contours and paths) to --out (default
outputs/trajectories.png). Each optimizer compiles one program that runs a
``lax.scan`` per function; on CPU the whole script takes about ten seconds,
most of it compilation, and prints the machine and its run time.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx


def rosenbrock(p: jax.Array) -> jax.Array:
    x, y = p[0], p[1]
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def beale(p: jax.Array) -> jax.Array:
    x, y = p[0], p[1]
    return (
        (1.5 - x + x * y) ** 2
        + (2.25 - x + x * y**2) ** 2
        + (2.625 - x + x * y**3) ** 2
    )


def saddle(p: jax.Array) -> jax.Array:
    x, y = p[0], p[1]
    return x**2 - y**2 + 0.5 * y**4


# name: (function, start, minimizers, minimum, plot window (x0, x1, y0, y1))
FUNCTIONS: dict[str, tuple[Callable, tuple, tuple, float, tuple]] = {
    "Rosenbrock": (rosenbrock, (-1.5, 2.0), ((1.0, 1.0),), 0.0, (-2, 2, -1, 3)),
    "Beale": (beale, (1.0, 1.5), ((3.0, 0.5),), 0.0, (-0.5, 4.5, -1.5, 2.5)),
    "saddle": (
        saddle,
        (1.0, 1e-3),
        ((0.0, 1.0), (0.0, -1.0)),
        -0.5,
        (-1.25, 1.25, -1.5, 1.5),
    ),
}

# Each takes the learning rate, a float or (inside ``paths``) a traced scalar.
OPTIMIZERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "SGD": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "RMSProp": optax.rmsprop,
    "AdaGrad": optax.adagrad,
    "Adam": adamx.adam,
    "AdamW": lambda lr: adamx.adamw(lr, weight_decay=1e-2),
    "AMSGrad": adamx.amsgrad,
}

# Learning rate per function and optimizer. Rosenbrock's valley walls are
# steep: SGD and momentum diverge there at 3e-3.
LR: dict[str, dict[str, float]] = {
    "Rosenbrock": {
        "SGD": 1e-3,
        "momentum": 1e-3,
        "RMSProp": 3e-2,
        "AdaGrad": 0.3,
        "Adam": 0.1,
        "AdamW": 0.1,
        "AMSGrad": 0.1,
    },
    "Beale": {
        "SGD": 1e-2,
        "momentum": 1e-3,
        "RMSProp": 1e-2,
        "AdaGrad": 0.3,
        "Adam": 0.1,
        "AdamW": 0.1,
        "AMSGrad": 0.1,
    },
    "saddle": {
        "SGD": 1e-2,
        "momentum": 1e-2,
        "RMSProp": 1e-2,
        "AdaGrad": 0.1,
        "Adam": 1e-2,
        "AdamW": 1e-2,
        "AMSGrad": 1e-2,
    },
}


def paths(
    make: Callable[[Any], optax.GradientTransformation],
    lrs: dict[str, float],
    steps: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Points θ₀ … θ_steps and their losses on every function, for one optimizer.

    One jitted program runs a ``lax.scan`` per function; the learning rates
    enter as traced values, so each optimizer compiles once.
    """

    def run(f, p0, lr):
        opt = make(lr)

        def step(carry, _):
            p, state = carry
            updates, state = opt.update(jax.grad(f)(p), state, p)
            p = optax.apply_updates(p, updates)
            return (p, state), p

        _, ps = jax.lax.scan(step, (p0, opt.init(p0)), None, length=steps)
        ps = jnp.concatenate([p0[None, :], ps], axis=0)
        return ps, jax.vmap(f)(ps)

    @jax.jit
    def run_all(lr_values):
        return {
            name: run(f, jnp.asarray(start, jnp.float32), lr_values[name])
            for name, (f, start, *_rest) in FUNCTIONS.items()
        }

    out = run_all({name: jnp.float32(lr) for name, lr in lrs.items()})
    return {name: (np.asarray(ps), np.asarray(ls)) for name, (ps, ls) in out.items()}


# Optimizers whose first step the script prints (AdamW's adds its decay).
FIRST_STEP = ("RMSProp", "AdaGrad", "Adam", "AMSGrad")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs; jax {jax.__version__} on {jax.devices()}"


LEGEND = {"Rosenbrock": "lower left", "Beale": "upper right", "saddle": "lower right"}


def plot(results: dict, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    colors = {name: f"C{i}" for i, name in enumerate(OPTIMIZERS)}
    fig, axes = plt.subplots(1, len(FUNCTIONS), figsize=(6.2 * len(FUNCTIONS), 6))
    for ax, (fname, (f, start, minima, fmin, box)) in zip(
        axes, FUNCTIONS.items(), strict=True
    ):
        xs = np.linspace(box[0], box[1], 300)
        ys = np.linspace(box[2], box[3], 300)
        grid = jnp.stack(
            [
                jnp.broadcast_to(xs[None, :], (300, 300)),
                jnp.broadcast_to(ys[:, None], (300, 300)),
            ]
        )
        z = np.asarray(f(grid)) - fmin
        if fname == "saddle":
            ax.contour(xs, ys, z + fmin, levels=30, cmap="Greys", linewidths=0.6)
        else:
            levels = np.logspace(-2, np.log10(z.max()), 25)
            ax.contour(
                xs,
                ys,
                np.maximum(z, 1e-3),
                levels=levels,
                norm=LogNorm(),
                cmap="Greys",
                linewidths=0.6,
            )
        for name, run in results[fname].items():
            ps = run["path"]
            label = f"{name}  f = {run['losses'][-1]:.3g}"
            if fname == "saddle":
                k = run["escape_step"]
                label = f"{name}  |y| ≥ 0.5 at step {k if k is not None else '—'}"
            ax.plot(ps[:, 0], ps[:, 1], "-", color=colors[name], lw=1.4, label=label)
            ax.plot(ps[-1, 0], ps[-1, 1], "o", color=colors[name], ms=4)
        ax.plot(*start, "ks", ms=6, label="start")
        if fname == "saddle":
            ax.plot(0.0, 0.0, "kx", ms=9, mew=2, label="saddle point")
        for m in minima:
            ax.plot(*m, "*", color="gold", mec="k", ms=14)
        ax.set(xlim=box[:2], ylim=box[2:], xlabel="x", ylabel="y", title=fname)
        ax.set_aspect("equal")
        ax.legend(loc=LEGEND[fname], fontsize=8, framealpha=0.9)
    steps = len(next(iter(results["Rosenbrock"].values()))["path"]) - 1
    fig.suptitle(
        f"{steps} full-gradient steps from the same start (■), final loss f "
        "(saddle: first step with |y| ≥ 0.5) in the legends; ★ = minimum.\n"
        "Adam = momentum (average of g) + RMSProp (average of g²) + bias correction"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default 500")
    parser.add_argument("--quick", action="store_true", help="60 steps")
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("outputs/trajectories.png")
    )
    args = parser.parse_args(argv)
    steps = args.steps or (60 if args.quick else 500)
    if steps < 1:
        parser.error("--steps must be positive")

    started = time.perf_counter()
    print(f"Machine: {machine()}")
    results: dict[str, dict[str, dict]] = {fname: {} for fname in FUNCTIONS}
    for name, make in OPTIMIZERS.items():
        lrs = {fname: LR[fname][name] for fname in FUNCTIONS}
        for fname, (ps, losses) in paths(make, lrs, steps).items():
            results[fname][name] = {"lr": lrs[fname], "path": ps, "losses": losses}

    starts = {
        fname: f"{float(spec[0](jnp.asarray(spec[1]))):.4g}"
        for fname, spec in FUNCTIONS.items()
    }
    print(f"\nFinal loss after {steps} steps (learning rate in brackets)")
    print(f"{'optimizer':<10}" + "".join(f"{fname:>24}" for fname in FUNCTIONS))
    print(f"{'(start)':<10}" + "".join(f"{s:>24}" for s in starts.values()))
    for name in OPTIMIZERS:
        cells = [
            f"{results[fname][name]['losses'][-1]:.4g} [{LR[fname][name]:g}]"
            for fname in FUNCTIONS
        ]
        print(f"{name:<10}" + "".join(f"{c:>24}" for c in cells))

    print("\nFirst step |θ₁ - θ₀| / learning rate per coordinate, Rosenbrock start:")
    for name in FIRST_STEP:
        run = results["Rosenbrock"][name]
        step = np.abs(run["path"][1] - run["path"][0]) / run["lr"]
        print(f"  {name:<8} ({step[0]:.4f}, {step[1]:.4f})")
    print(
        "  RMSProp: 1/√(1 - 0.9) ≈ 3.1623 (v₁ uncorrected); "
        "Adam, AMSGrad: 1 (m̂₁ = g₁, v̂₁ = g₁²)"
    )

    print("\nSaddle: steps until |y| ≥ 0.5 (from y₀ = 0.001):")
    for name, run in results["saddle"].items():
        escaped = np.flatnonzero(np.abs(run["path"][:, 1]) >= 0.5)
        run["escape_step"] = int(escaped[0]) if escaped.size else None
        shown = run["escape_step"] if escaped.size else f"> {steps}"
        print(f"  {name:<8} {shown}")

    plot(results, args.out)
    print(f"\nWrote {args.out}  ({time.perf_counter() - started:.1f} s)")
    return results


if __name__ == "__main__":
    main()
