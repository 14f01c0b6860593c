"""How close adamx's and optax's float32 trajectories stay to float64.

Run:  python examples/accuracy.py [--steps 200]
      python examples/accuracy.py --quick   # 100 steps, no formula check

For every optimizer adamx shares with optax (optax.contrib's for ADOPT and
AdEMAMix), at its default hyperparameters and learning rate 1e-2, three
trajectories start from the same parameters and see the same gradient noise,
drawn once in float32:

- adamx in float32;
- optax in float32;
- the reference: **optax's own formula run in float64**, the same optax code
  called under ``jax.enable_x64(True)`` on float64 parameters. It shares no
  code with adamx, so it measures rounding, not adamx against itself.

Unless ``--quick``, adamx is also run in float64 ("formula gap", same unit):
that it lands on the reference to float64 rounding shows that the two
libraries compute the same formula, so the float32 columns measure float32
rounding alone.

Adam-atan2 and ADOPTW are adamx's own (optax has neither alias); their optax
column and reference are the same algorithm built in this file from optax's
pieces (``optax.tree.update_moment``, ``optax.tree.bias_correction``,
``optax.contrib.scale_by_adopt``), marked † in the table. The row marked ‡
is AdEMAMix with ``b3`` from ``adamx.ademamix_b3_schedule``: a schedule
evaluated in float32 hands both libraries β₃ rounded to float32, and at
β₃ ≈ 0.9999 the rounding alone moves 1 − β₃ by up to 3e-4 relative; neither
library can undo it, and adamx is not the closer one there.

The problems are three quadratics of 32 coordinates, run side by side, whose
gradients h (x − c) + σ z_t are computed from the current parameters, so
every error feeds back:

- ``quadratic``: curvatures h log-uniform over [0.1, 10], noise σ = 1;
- ``badly scaled``: h log-uniform over [1e-4, 1e4], σ = h / 10;
- ``tiny``: h over [1e-9, 1e-7] and σ = 1e-8, gradients about as small as
  Adam's ε = 1e-8, where ε decides the step.

The deviation of a trajectory is its worst, over every step and coordinate,
of |x − x₆₄| / (|x₆₄| + max |x₆₄|), with max |x₆₄| the largest magnitude the
reference reaches on that problem over the run, in units of 2e-5: below 1,
``assert_allclose(x, x₆₄, rtol=2e-5, atol=2e-5 · max |x₆₄|)`` passes. The
script prints a markdown table of each optimizer's deviation per problem and
its worst over the three.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

import adamx

RTOL = 2e-5
LEARNING_RATE = 1e-2
SIZE = 32


class Problem(NamedTuple):
    """A quadratic with gradient h (x − c) + σ z_t, as float32-exact arrays."""

    x0: np.ndarray
    curvature: np.ndarray
    center: np.ndarray
    noise_scale: np.ndarray


def problems(seed: int = 0) -> dict[str, Problem]:
    rng = np.random.default_rng(seed)

    def make(log_h: tuple[float, float], noise: Callable[[np.ndarray], Any]):
        h = 10.0 ** rng.uniform(*log_h, SIZE)
        arrays = (rng.normal(size=SIZE), h, rng.normal(size=SIZE), noise(h))
        # Rounded to float32 once, so every run starts from the same values.
        return Problem(
            *(np.broadcast_to(a, (SIZE,)).astype(np.float32) for a in arrays)
        )

    return {
        "quadratic": make((-1.0, 1.0), lambda h: 1.0),
        "badly scaled": make((-4.0, 4.0), lambda h: h / 10),
        "tiny": make((-9.0, -7.0), lambda h: 1e-8),
    }


# ---------------------------------------------------------------------------
# adamx-only optimizers written with optax's pieces, for their reference
# ---------------------------------------------------------------------------


def optax_adam_atan2(
    learning_rate: float, b1: float = 0.9, b2: float = 0.999, a: float = 1.27, b=1.0
) -> optax.GradientTransformation:
    """Everett et al. (2024): Adam with a·atan2(m̂, b·√v̂), from optax's helpers."""

    def init(params):
        zeros = optax.tree.zeros_like(params)
        return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(grads, state, params=None):
        del params
        mu = optax.tree.update_moment(grads, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        updates = jax.tree.map(
            lambda m, v: -learning_rate * a * jnp.arctan2(m, b * jnp.sqrt(v)),
            mu_hat,
            nu_hat,
        )
        return updates, optax.ScaleByAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def optax_adoptw(
    learning_rate: float, weight_decay: float = 1e-4
) -> optax.GradientTransformation:
    """ADOPT with decoupled weight decay, chained as optax chains adamw."""
    return optax.chain(
        optax.contrib.scale_by_adopt(),
        optax.add_decayed_weights(weight_decay=weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


# ---------------------------------------------------------------------------
# Cases and runs
# ---------------------------------------------------------------------------

Factory = Callable[[], optax.GradientTransformation]
LR = LEARNING_RATE
# adamx's own optimizers: their optax column is built in this file (†).
ADAMX_ONLY = ("adam_atan2", "adoptw")
# A decay given as a schedule reaches both libraries rounded to float32 (‡).
SCHEDULED_DECAY = ("ademamix b3_schedule",)


def _b3_schedule() -> optax.Schedule:
    return adamx.ademamix_b3_schedule(b3=0.9999, warmup_steps=100)


def cases() -> dict[str, tuple[Factory, Factory]]:
    """Name → (adamx factory, optax factory), hyperparameters by keyword."""
    return {
        "adam": (
            lambda: adamx.adam(learning_rate=LR),
            lambda: optax.adam(learning_rate=LR),
        ),
        "adamw": (
            lambda: adamx.adamw(learning_rate=LR),
            lambda: optax.adamw(learning_rate=LR),
        ),
        "nadam": (
            lambda: adamx.nadam(learning_rate=LR),
            lambda: optax.nadam(learning_rate=LR),
        ),
        "nadamw": (
            lambda: adamx.nadamw(learning_rate=LR),
            lambda: optax.nadamw(learning_rate=LR),
        ),
        "adamax": (
            lambda: adamx.adamax(learning_rate=LR),
            lambda: optax.adamax(learning_rate=LR),
        ),
        "adamaxw": (
            lambda: adamx.adamaxw(learning_rate=LR),
            lambda: optax.adamaxw(learning_rate=LR),
        ),
        "amsgrad": (
            lambda: adamx.amsgrad(learning_rate=LR),
            lambda: optax.amsgrad(learning_rate=LR),
        ),
        "adabelief": (
            lambda: adamx.adabelief(learning_rate=LR),
            lambda: optax.adabelief(learning_rate=LR),
        ),
        "lamb": (
            lambda: adamx.lamb(learning_rate=LR),
            lambda: optax.lamb(learning_rate=LR),
        ),
        "radam": (
            lambda: adamx.radam(learning_rate=LR),
            lambda: optax.radam(learning_rate=LR),
        ),
        "yogi": (
            lambda: adamx.yogi(learning_rate=LR),
            lambda: optax.yogi(learning_rate=LR),
        ),
        "adopt": (
            lambda: adamx.adopt(learning_rate=LR),
            lambda: optax.contrib.adopt(learning_rate=LR),
        ),
        "ademamix": (
            lambda: adamx.ademamix(learning_rate=LR),
            lambda: optax.contrib.ademamix(learning_rate=LR),
        ),
        "ademamix b3_schedule": (
            lambda: adamx.ademamix(learning_rate=LR, b3=_b3_schedule()),
            lambda: optax.contrib.ademamix(learning_rate=LR, b3=_b3_schedule()),
        ),
        "adam_atan2": (
            lambda: adamx.adam_atan2(learning_rate=LR),
            lambda: optax_adam_atan2(learning_rate=LR),
        ),
        "adoptw": (
            lambda: adamx.adoptw(learning_rate=LR),
            lambda: optax_adoptw(learning_rate=LR),
        ),
    }


def trajectories(
    makes: list[Factory], dtype: Any, problem: dict[str, Problem], noise: dict[str, Any]
) -> list[dict[str, np.ndarray]]:
    """For each optimizer, each problem's parameters after every step, in ``dtype``.

    Call under ``jax.enable_x64(True)`` for float64; the optimizers are built
    there too, so that their constants take that precision. The optimizers
    run in one compiled program, the problems side by side under ``jax.vmap``.
    """

    def runner(tx: optax.GradientTransformation):
        def run(p: Problem, noise: jax.Array) -> jax.Array:
            def step(carry, z):
                x, state = carry
                grads = p.curvature * (x - p.center) + p.noise_scale * z
                updates, state = tx.update(grads, state, x)
                x = optax.apply_updates(x, updates)
                return (x, state), x

            _, history = jax.lax.scan(step, (p.x0, tx.init(p.x0)), noise)
            return history

        return jax.vmap(run)

    runners = [runner(make()) for make in makes]
    stacked = jax.tree.map(
        lambda *a: jnp.asarray(np.stack(a), dtype), *problem.values()
    )
    noise = jnp.asarray(np.stack([noise[k] for k in problem]), dtype)
    histories = jax.jit(lambda p, z: [run(p, z) for run in runners])(stacked, noise)
    return [dict(zip(problem, h, strict=True)) for h in jax.device_get(histories)]


def deviation(actual: np.ndarray, reference: np.ndarray) -> float:
    """Worst |x − x₆₄| / (|x₆₄| + max |x₆₄|) over the run, in units of RTOL."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference)
    scale = np.abs(reference) + np.max(np.abs(reference))
    return float(np.max(np.abs(actual - reference) / scale)) / RTOL


class Row(NamedTuple):
    """One optimizer's worst deviation per problem, in units of RTOL."""

    adamx: dict[str, float]
    optax: dict[str, float]
    formula_gap: dict[str, float] | None


def measure(
    make_adamx: Factory, make_optax: Factory, steps: int, check_formula: bool
) -> Row:
    problem = problems()
    rng = np.random.default_rng(1)
    noise = {k: rng.normal(size=(steps, SIZE)).astype(np.float32) for k in problem}
    with jax.enable_x64(True):
        makes = [make_optax, make_adamx] if check_formula else [make_optax]
        reference, *ours64 = trajectories(makes, jnp.float64, problem, noise)
    ours, theirs = trajectories([make_adamx, make_optax], jnp.float32, problem, noise)

    def worst(run):
        return {k: deviation(run[k], reference[k]) for k in problem}

    return Row(worst(ours), worst(theirs), worst(ours64[0]) if ours64 else None)


def table(rows: dict[str, Row]) -> str:
    """A markdown table: per problem adamx / optax, then the worst of each."""
    names = list(problems())
    gap = all(row.formula_gap is not None for row in rows.values())
    header = ["optimizer", *(f"{n}: adamx / optax" for n in names)]
    header += ["worst adamx", "worst optax"] + (["formula gap"] if gap else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        mark = " †" if name in ADAMX_ONLY else " ‡" if name in SCHEDULED_DECAY else ""
        cells = [name + mark]
        cells += [f"{row.adamx[n]:.2g} / {row.optax[n]:.2g}" for n in names]
        cells += [f"{max(row.adamx.values()):.2g}", f"{max(row.optax.values()):.2g}"]
        if gap:
            cells.append(f"{max(row.formula_gap.values()):.0e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="default 200, 100 with --quick")
    parser.add_argument("--quick", action="store_true", help="no formula gap")
    parser.add_argument("--only", help="comma-separated optimizer names")
    args = parser.parse_args(argv)
    steps = args.steps or (100 if args.quick else 200)
    selected = cases()
    if args.only:
        selected = {k: selected[k] for k in args.only.split(",")}
    start = time.perf_counter()
    print(f"{platform.machine()} {platform.processor() or ''}; "
          f"jax {jax.__version__}, optax {optax.__version__}")  # fmt: skip
    rows = {
        name: measure(ours, theirs, steps, check_formula=not args.quick)
        for name, (ours, theirs) in selected.items()
    }
    print(f"\nWorst deviation from float64 (optax's formula under jax x64) over "
          f"{steps} steps, in units of rtol {RTOL:g}:\n")  # fmt: skip
    print(table(rows))
    only = ", ".join(ADAMX_ONLY)
    print(f"\n† adamx only ({only}): optax's column and the reference are "
          "built in examples/accuracy.py from optax's pieces.\n"
          "‡ b3 from adamx.ademamix_b3_schedule: in float32 the schedule hands "
          "both libraries β₃ rounded to float32, so neither keeps 1 − β₃ "
          "exact.")  # fmt: skip
    print(f"{time.perf_counter() - start:.1f} s")
    return rows


if __name__ == "__main__":
    main()
