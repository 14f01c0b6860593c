"""Adam's non-convergence on a convex problem, and AMSGrad's fix (Reddi et al. 2018).

Run:  python examples/amsgrad_counterexample.py [--alpha 1] [--out PNG]
      python examples/amsgrad_counterexample.py --quick   # shorter runs

Reproduces the examples of Reddi, Kale & Kumar, *On the Convergence of Adam
and Beyond* (ICLR 2018), with ``adamx.scale_by_adam`` and
``adamx.scale_by_amsgrad``. Every problem is linear, f_t(x) = g_t · x, on the
domain [-1, 1]: each step is

    x ← clip(x - α_t · u_t, -1, 1),   α_t = α / √t,   t = 1, 2, ...

written as ``optax.chain(direction, optax.scale_by_schedule(lambda t: -α /
√(t + 1)))`` (optax counts from 0) followed by ``jnp.clip`` after
``optax.apply_updates``. The runs start at x₁ = 0, the middle of the domain.

(a) Section 3 (Theorem 1): g_t = C when t mod 3 = 1, else -1, with C = 3
    (the paper's C > 2), β₁ = 0 and β₂ = 1/(1 + C²). Over each period the
    gradients sum to C - 2 > 0, so x = -1 is optimal and x = +1 is the worst
    point. With this β₂, Adam's second moment forgets the large gradient C
    within a step or two, so the two small gradients -1 get steps about as
    large as the one big gradient C: Adam drifts to +1 and its average regret
    R_T/T tends to 2(C - 2)/3, not 0. AMSGrad divides by the running maximum
    of v and converges to -1.
(b) Section 5, the synthetic experiments, with β₁ = 0.9 and β₂ = 0.99:
    online, g_t = 1010 when t mod 101 = 1, else -10; and stochastic,
    g_t = 1010 with probability 0.01, else -10, independently at each step.
    In both the optimum is x = -1 (the average gradient is
    (1010 - 100·10)/101 > 0, resp. 0.01·1010 - 0.99·10 = 0.2 > 0).

Regret. In the online problems R_T = Σ f_t(x_t) - min over x in [-1, 1] of
Σ f_t(x), the point x_t being the one played before g_t is seen. In the
stochastic problem the regret is taken against the expected loss
F(x) = E f_t(x) = 0.2 x: R_T = Σ (F(x_t) - F(-1)) = 0.2 Σ (x_t + 1), so
R_T/T → 0 exactly when the iterates approach x = -1 (Adam's limit x = +1
gives 0.4). The stochastic runs use several seeds at once (the parameter is
a vector, one entry per seed): the figure shows their mean and range.

Which Adam and which AMSGrad. AMSGrad is the paper's Algorithm 2, which
debiases neither moment:
``scale_by_amsgrad(bias_correction_mu=False, bias_correction_nu=False)``.
Adam is ``scale_by_adam``, Kingma & Ba's, which debiases both. Reddi et al. analyse
Adam without the debiasing step, for simplicity, noting that their argument
carries over to the debiased version. In (a) the two differ only in the first
steps: with β₁ = 0 there is nothing to debias in m, and with
β₂ = 1/(1 + C²) = 0.1 debiasing multiplies v_t by 1/(1 - 0.1ᵗ) = 1.11, 1.01,
1.001 for t = 1, 2, 3. With α = 1 their iterates differ by under 0.003 until
both first reach +1 (step 19) and coincide from there on (the tests check
this against a float64 transcription of each). In (b) Adam is the debiased
Adam that practitioners run. ε = 1e-8 is negligible next to √v ≥ 0.9 here.

Step sizes: α_t = α/√t as in the paper's analysis, with α = 1 by default
(--alpha). The Section 5 problems are the Section 3 construction with a
period of 101 instead of 3, scaled by 10.

The script prints each optimizer's final x and average regret R_T/T and
draws x_t (top) and R_t/t (bottom) per problem to --out (default
outputs/amsgrad_counterexample.png). Each run is one jitted ``lax.scan``
(an outer scan over blocks of steps records the curves); on CPU the default
sizes take well under a minute, --quick a few seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx

EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class Problem:
    """A linear problem f_t(x) = g_t · x on [-1, 1] and its optimizers' betas.

    The gradient is ``spike`` at every step t with t mod ``period`` = 1 when
    ``probability`` is None, and with that probability at each step
    otherwise; it is ``base`` at the other steps.
    """

    title: str
    spike: float
    base: float
    b1: float
    b2: float
    period: int | None = None
    probability: float | None = None
    steps: int = 100_000
    quick_steps: int = 30_000
    seeds: int = 1

    @property
    def mean_gradient(self) -> float:
        """The average gradient: over a period, or E g_t when stochastic."""
        if self.probability is None:
            return (self.spike + (self.period - 1) * self.base) / self.period
        return self.probability * self.spike + (1 - self.probability) * self.base

    @property
    def regret_at_worst_point(self) -> float:
        """The limit of R_T/T while the iterates sit at the worst point x = +1.

        Each step costs g_t there and -g_t at the comparator x = -1, so the
        average regret tends to twice the average gradient.
        """
        return 2 * self.mean_gradient


C = 3.0
PROBLEMS = {
    "section3": Problem(
        title=f"§3: C = {C:g} if t mod 3 = 1, else -1; β₁ = 0, β₂ = 1/(1+C²)",
        spike=C,
        base=-1.0,
        b1=0.0,
        b2=1.0 / (1.0 + C**2),
        period=3,
        steps=100_000,
        quick_steps=30_000,
    ),
    "online": Problem(
        title="§5 online: 1010 if t mod 101 = 1, else -10; β = (0.9, 0.99)",
        spike=1010.0,
        base=-10.0,
        b1=0.9,
        b2=0.99,
        period=101,
        steps=3_000_000,
        quick_steps=1_000_000,
    ),
    "stochastic": Problem(
        title="§5 stochastic: 1010 w.p. 0.01, else -10; β = (0.9, 0.99)",
        spike=1010.0,
        base=-10.0,
        b1=0.9,
        b2=0.99,
        probability=0.01,
        steps=4_000_000,
        quick_steps=1_000_000,
        seeds=8,
    ),
}


def directions(problem: Problem) -> dict[str, optax.GradientTransformation]:
    """Adam (debiased, Kingma & Ba) and AMSGrad (Reddi et al.'s Algorithm 2)."""
    return {
        "Adam": adamx.scale_by_adam(b1=problem.b1, b2=problem.b2, eps=EPS),
        "AMSGrad": adamx.scale_by_amsgrad(
            b1=problem.b1,
            b2=problem.b2,
            eps=EPS,
            bias_correction_mu=False,
            bias_correction_nu=False,
        ),
    }


def simulate(
    problem: Problem,
    direction: optax.GradientTransformation,
    *,
    steps: int,
    alpha: float = 1.0,
    seeds: int | None = None,
    seed: int = 0,
    records: int = 1000,
) -> dict[str, np.ndarray]:
    """Runs projected online descent; returns the recorded curves.

    Returns a dict of NumPy arrays: ``t`` (the steps at which the curves are
    recorded, ``records`` of them, the last being ``steps``), ``x`` (the
    iterate x_{t+1} after step t, shape ``(records, seeds)``) and
    ``avg_regret`` (R_t / t, same shape).
    """
    seeds = seeds or problem.seeds
    block = math.ceil(steps / records)
    n_blocks = math.ceil(steps / block)
    steps = block * n_blocks
    tx = optax.chain(
        direction, optax.scale_by_schedule(lambda t: -alpha / jnp.sqrt(t + 1.0))
    )
    key = jax.random.key(seed)

    def gradients(b):
        t = b * block + jnp.arange(1, block + 1)
        if problem.probability is None:
            g = jnp.where(t % problem.period == 1, problem.spike, problem.base)
            return jnp.broadcast_to(g[:, None], (block, seeds))
        spikes = jax.random.bernoulli(
            jax.random.fold_in(key, b), problem.probability, (block, seeds)
        )
        return jnp.where(spikes, problem.spike, problem.base)

    def step(carry, g):
        x, state = carry
        updates, state = tx.update(g, state, x)
        x_next = jnp.clip(optax.apply_updates(x, updates), -1.0, 1.0)
        if problem.probability is None:
            loss = g * x  # f_t(x_t): x_t is played before g_t is seen
        else:
            loss = problem.mean_gradient * (x + 1.0)  # F(x_t) - F(-1)
        return (x_next, state), loss

    def run_block(carry, b):
        g = gradients(b)
        carry, losses = jax.lax.scan(step, carry, g)
        # Per-block sums only: float32 running totals over millions of steps
        # would round away a visible fraction of each small increment.
        return carry, (carry[0], losses.sum(axis=0), g.sum(axis=0))

    @jax.jit
    def run():
        x0 = jnp.zeros((seeds,), jnp.float32)
        _, out = jax.lax.scan(run_block, (x0, tx.init(x0)), jnp.arange(n_blocks))
        return out

    xs, block_loss, block_g = (np.asarray(a, np.float64) for a in run())
    t = block * np.arange(1, n_blocks + 1)
    regret = np.cumsum(block_loss, axis=0)
    if problem.probability is None:
        # The best fixed point in hindsight scores min over [-1, 1] of x·G,
        # which is -|G|. (Stochastic: Σ F(x_t) - F(-1) is already the regret.)
        regret += np.abs(np.cumsum(block_g, axis=0))
    return {"t": t, "x": xs, "avg_regret": regret / t[:, None]}


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


def plot(results: dict, out: pathlib.Path, alpha: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"Adam": "C3", "AMSGrad": "C0"}
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7.5))
    for col, (name, runs) in enumerate(results.items()):
        top, bottom = axes[0, col], axes[1, col]
        for opt, run in runs.items():
            t, x, r = run["t"], run["x"], run["avg_regret"]
            style = {"color": colors[opt], "lw": 1.3}
            if x.shape[1] == 1:
                top.plot(t, x[:, 0], label=opt, **style)
                bottom.plot(t, r[:, 0], label=opt, **style)
            else:
                label = f"{opt} (mean, range of {x.shape[1]} seeds)"
                top.plot(t, x.mean(axis=1), label=label, **style)
                top.fill_between(t, x.min(axis=1), x.max(axis=1), alpha=0.2, **style)
                bottom.plot(t, r.mean(axis=1), label=label, **style)
                bottom.fill_between(t, r.min(axis=1), r.max(axis=1), alpha=0.2, **style)
        top.axhline(-1.0, color="k", lw=0.6, ls="--")
        top.set(title=PROBLEMS[name].title, ylabel="x_t", ylim=(-1.05, 1.05))
        top.set_xscale("log")
        bottom.axhline(0.0, color="k", lw=0.6, ls="--")
        bottom.axhline(
            PROBLEMS[name].regret_at_worst_point,
            color=colors["Adam"],
            lw=0.8,
            ls=":",
            label="limit if x stays at +1",
        )
        ylabel = (
            "R_t / t"
            if PROBLEMS[name].probability is None
            else ("R_t / t  (against E f_t)")
        )
        bottom.set(xlabel="t", ylabel=ylabel, ylim=(0.0, None))
        bottom.set_xscale("log")
        top.legend(fontsize=8, loc="best")
        bottom.legend(fontsize=8, loc="best")
    fig.suptitle(
        "Reddi et al. 2018: projected Adam and AMSGrad on [-1, 1], "
        f"α_t = {alpha:g}/√t; x = -1 is optimal"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1.0, help="α in α/√t")
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--seed", type=int, default=0, help="stochastic problem")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("outputs/amsgrad_counterexample.png"),
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    print(f"Machine: {machine()}")
    results: dict[str, dict[str, dict]] = {}
    for name, problem in PROBLEMS.items():
        steps = problem.quick_steps if args.quick else problem.steps
        results[name] = {
            opt: simulate(
                problem, direction, steps=steps, alpha=args.alpha, seed=args.seed
            )
            for opt, direction in directions(problem).items()
        }
        print(
            f"\n{problem.title}\n  (R_T/T → {problem.regret_at_worst_point:.4f} "
            "if x stays at +1, → 0 if x → -1)"
        )
        for opt, run in results[name].items():
            x, r = run["x"][-1], run["avg_regret"][-1]
            if x.size == 1:
                print(
                    f"  {opt:<8} after {run['t'][-1]:>9,} steps: x = {x[0]:+.4f}"
                    f"   R_T/T = {r[0]:.4f}"
                )
            else:
                print(
                    f"  {opt:<8} after {run['t'][-1]:>9,} steps: x = {x.mean():+.4f}"
                    f" (seeds {x.min():+.3f} … {x.max():+.3f})"
                    f"   R_T/T = {r.mean():.4f} ({r.min():.4f} … {r.max():.4f})"
                )

    plot(results, args.out, args.alpha)
    print(f"\nWrote {args.out}  ({time.perf_counter() - started:.1f} s)")
    return results


if __name__ == "__main__":
    main()
