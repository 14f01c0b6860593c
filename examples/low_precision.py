"""bfloat16 parameters: plain rounding stalls, Kahan or stochastic rounding does not.

Run:  python examples/low_precision.py [--steps 600] [--png PATH]
      python examples/low_precision.py --quick   # tiny sizes, a few seconds

Trains the byte-level transformer language model of ``state_memory.py`` with
``adamx.adamw`` and a warmup-cosine learning rate that decays to 0, from the
same initialization (cast to bfloat16 for b-d) on the same minibatches:

(a) float32 parameters, float32 moments;
(b) bfloat16 parameters, moments following them, ``optax.apply_updates``
    rounding to nearest: once the learning rate has decayed, most steps are
    smaller than half a bfloat16 spacing and are lost (the stall);
(c) bfloat16 parameters, 8-bit moments, wrapped in
    ``adamx.low_precision_params(..., "kahan", compensation_dtype="int8")``:
    the compensation in one byte per parameter;
(d) bfloat16 parameters, 4-bit moments, wrapped in
    ``adamx.low_precision_params(..., "stochastic")``;
(e) as (c) with the compensation in bfloat16 (two bytes per parameter), to
    show what the one-byte compensation gives up.

The forward and backward pass run in float32 on the parameters upcast (the
gradient comes back in the parameters' dtype), so the rows differ only in
how parameters and state are stored and updated. The table gives the final
train loss (mean of the last 10% of steps), the validation loss, both against
(a), the share of parameters that did not move at all over the last 10% of
steps, the stored bytes per parameter (``adamx.state_nbytes`` of parameters
plus optimizer state, over the parameter count) and the median time of a
jitted training step (compile excluded; the four steps taken in turn, round
after round). A last line times (c)'s step against the same step without the
wrapper (bfloat16 parameters, 8-bit moments, plain ``apply_updates``),
interleaved step by step on the same inputs: the median of the paired ratios.

With ``--seeds K`` the whole comparison runs for seeds 0..K-1 (another
initialization and other minibatches each) and a second table gives each
setup's mean final train loss and its difference from (a), paired by seed:
mean, and smallest to largest, so a difference can be read against the
seed-to-seed noise.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from state_memory import machine, transformer_task

import adamx

SETUPS = (
    "(a) fp32",
    "(b) bf16 rn",
    "(c) kahan8 int8",
    "(d) stochastic int4",
    "(e) kahan16 int8",
)
WEIGHT_DECAY = 1e-4


def make_optimizer(setup: str, schedule: Any, wrap: bool = True):
    """The optimizer a setup's name describes; ``wrap=False`` leaves out the wrapper.

    The name's words after the label: ``fp32`` or ``bf16 rn`` (float32
    moments, no wrapper), or a rounding (``kahan8``, ``kahan16`` for the
    compensation's bits, ``stochastic``) and the moments' storage.
    """
    words = setup.split()[1:]
    if words[0] in ("fp32", "bf16"):
        return adamx.adamw(schedule, weight_decay=WEIGHT_DECAY)
    rounding, bits = words
    inner = adamx.adamw(
        schedule, weight_decay=WEIGHT_DECAY, mu_dtype=bits, nu_dtype=bits
    )
    if not wrap:
        return inner
    if rounding == "stochastic":
        return adamx.low_precision_params(inner, "stochastic")
    compensation = {"kahan8": "int8", "kahan16": None}[rounding]
    return adamx.low_precision_params(inner, "kahan", compensation_dtype=compensation)


def make_step(loss_fn, opt):
    """The jitted training step and the jitted loss, both on upcast parameters."""

    def upcast_loss(params, batch):
        return loss_fn(jax.tree.map(lambda p: p.astype(jnp.float32), params), batch)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(upcast_loss)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, jax.jit(upcast_loss)


_EVAL: dict[int, Any] = {}


def _eval_loss(task):
    """One jitted loss per task, compiled once per parameter dtype."""
    if id(task) not in _EVAL:
        _EVAL.clear()
        _EVAL[id(task)] = make_step(task.loss_fn, optax.identity())[1]
    return _EVAL[id(task)]


def train(task, setup: str, schedule: Any) -> dict:
    dtype = jnp.float32 if "fp32" in setup.split() else jnp.bfloat16
    # jitted: op by op, the cast and the init would compile once per leaf shape
    params = jax.jit(lambda t: jax.tree.map(lambda p: p.astype(dtype), t))(task.params)
    opt = make_optimizer(setup, schedule)
    opt_state = jax.jit(opt.init)(params)
    step, _ = make_step(task.loss_fn, opt)
    eval_loss = _eval_loss(task)
    steps = len(task.batches)
    tail = max(1, steps // 10)
    losses, before_tail = [], params
    for i, batch in enumerate(task.batches):
        if i == steps - tail:
            before_tail = params
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(loss)
    losses = [float(x) for x in jax.block_until_ready(losses)]
    val = [float(eval_loss(params, b)) for b in task.val_batches]
    sizes = [len(b) for b in task.val_batches]
    leaves = jax.tree.leaves(params)
    n_params = sum(int(np.size(x)) for x in leaves)
    unmoved = sum(  # in NumPy: no op-by-op compilation per leaf shape
        int(np.sum(np.asarray(a) == np.asarray(b)))
        for a, b in zip(jax.tree.leaves(before_tail), leaves, strict=True)
    )
    stored = adamx.state_nbytes(params) + adamx.state_nbytes(opt_state)
    return {
        "setup": setup,
        "param_dtypes": sorted({str(x.dtype) for x in leaves}),
        "losses": losses,
        "train_loss": float(np.mean(losses[-tail:])),
        "val_loss": float(np.average(val, weights=sizes)),
        "unmoved": unmoved / n_params,
        "n_params": n_params,
        "param_bytes": adamx.state_nbytes(params),
        "state_bytes": adamx.state_nbytes(opt_state),
        "bytes_per_param": stored / n_params,
        "timed": (step, params, opt_state, task.batches[-1]),
    }


def _time(timed) -> float:
    step, params, opt_state, batch = timed
    start = time.perf_counter()
    jax.block_until_ready(step(params, opt_state, batch))
    return time.perf_counter() - start


def step_times(rows: list[dict], rounds: int) -> None:
    """Median step time of each row, the rows taken in turn round after round."""
    record: list[list[float]] = [[] for _ in rows]
    for r in range(rounds + 2):  # two untimed rounds
        for row, times in zip(rows, record, strict=True):
            t = _time(row["timed"])
            if r >= 2:
                times.append(t)
    for row, times in zip(rows, record, strict=True):
        row["step_ms"] = 1e3 * float(np.median(times))


def wrapper_ratio(task, row: dict, schedule: Any, rounds: int) -> dict:
    """(c)'s step against the same optimizer unwrapped, interleaved, same inputs."""
    _, params, _, batch = row["timed"]
    opt = make_optimizer(row["setup"], schedule, wrap=False)
    plain = (make_step(task.loss_fn, opt)[0], params, jax.jit(opt.init)(params), batch)
    wrapped, bare = [], []
    for r in range(rounds + 2):
        a, b = _time(row["timed"]), _time(plain)
        if r >= 2:
            wrapped.append(a)
            bare.append(b)
    ratios = np.asarray(wrapped) / np.asarray(bare)
    return {
        "wrapped_ms": 1e3 * float(np.median(wrapped)),
        "plain_ms": 1e3 * float(np.median(bare)),
        "ratio": float(np.median(ratios)),
        "rounds": rounds,
    }


def format_table(rows: list[dict], ratio: dict) -> str:
    header = (
        f"{'setup':22s} {'train loss':>10s} {'val loss':>9s} {'Δtrain':>8s} "
        f"{'Δval':>8s} {'unmoved':>8s} {'B/param':>8s} {'step ms':>8s}"
    )
    lines = [header, "-" * len(header)]
    base = rows[0]
    for r in rows:
        lines.append(
            f"{r['setup']:22s} {r['train_loss']:10.4f} {r['val_loss']:9.4f} "
            f"{100 * (r['train_loss'] / base['train_loss'] - 1):+7.2f}% "
            f"{100 * (r['val_loss'] / base['val_loss'] - 1):+7.2f}% "
            f"{100 * r['unmoved']:7.1f}% {r['bytes_per_param']:8.3f} "
            f"{r['step_ms']:8.2f}"
        )
    lines.append(
        f"({rows[0]['n_params']} parameters; train loss = mean of the last 10% of "
        "steps; Δ against (a); unmoved = parameters equal before and after the "
        "last 10% of steps; B/param = parameters + optimizer state)"
    )
    lines.append(
        f"(c) vs the same optimizer unwrapped (bf16 params, int8 moments, plain "
        f"apply_updates), interleaved, {ratio['rounds']} steps: "
        f"{ratio['wrapped_ms']:.2f} ms vs {ratio['plain_ms']:.2f} ms, "
        f"median paired ratio {ratio['ratio']:.3f}x"
    )
    return "\n".join(lines)


def seed_spread(losses: dict[str, list[float]]) -> dict[str, dict]:
    """Per setup, the mean final train loss and the difference from (a).

    The difference is paired by seed: mean, smallest and largest, each as a
    fraction of (a)'s loss.
    """
    base = np.asarray(losses[SETUPS[0]])
    spread = {}
    for setup, values in losses.items():
        delta = np.asarray(values) / base - 1
        spread[setup] = {
            "losses": values,
            "mean": float(np.mean(values)),
            "delta_mean": float(np.mean(delta)),
            "delta_min": float(np.min(delta)),
            "delta_max": float(np.max(delta)),
        }
    return spread


def format_spread(spread: dict[str, dict], first: int, seeds: int) -> str:
    header = (
        f"{'setup':22s} {'mean train loss':>15s} {'Δ vs (a), mean [min, max]':>30s}"
    )
    lines = [f"Seeds {first}..{first + seeds - 1}:", header, "-" * len(header)]
    for setup, s in spread.items():
        lines.append(
            f"{setup:22s} {s['mean']:15.4f} {100 * s['delta_mean']:+12.2f}% "
            f"[{100 * s['delta_min']:+.2f}%, {100 * s['delta_max']:+.2f}%]"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: pathlib.Path) -> None:
    """Loss curves (left) and each curve against (a)'s, in percent (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, len(rows[0]["losses"]) // 20)
    kernel = np.ones(window) / window

    def smooth(losses):
        return np.convolve(losses, kernel, mode="valid")

    base = smooth(rows[0]["losses"])
    steps = np.arange(len(base)) + window
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        curve = smooth(r["losses"])
        left.plot(steps, curve, lw=1.2, label=r["setup"])
        right.plot(steps, 100 * (curve / base - 1), lw=1.2, label=r["setup"])
    left.set(
        xlabel="step",
        ylabel=f"train loss (moving average of {window} steps)",
        yscale="log",
        title="bfloat16 parameters, cosine decay to 0",
    )
    right.set(xlabel="step", ylabel="train loss against (a), %", title="against fp32")
    right.axhline(0, color="0.6", lw=0.8)
    left.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default 600")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 60 steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=pathlib.Path, default=None)
    parser.add_argument(
        "--seeds", type=int, default=1, help="also run seeds seed+1 .. seed+K-1"
    )
    args = parser.parse_args(argv)
    steps = args.steps or (60 if args.quick else 600)
    if steps < 10:
        parser.error("--steps must be at least 10")
    started = time.perf_counter()
    task = transformer_task(steps, args.quick, args.seed)
    print(f"Machine: {machine()}")
    print(f"{task.description}")
    print(
        f"{steps} steps, adamx.adamw(weight_decay={WEIGHT_DECAY}), warmup-cosine "
        f"to 0 from {task.learning_rate}, seed {args.seed}"
    )
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, task.learning_rate, max(1, steps // 10), steps, end_value=0.0
    )
    rows = [train(task, setup, schedule) for setup in SETUPS]
    rounds = 10 if args.quick else 50
    step_times(rows, rounds)
    ratio = wrapper_ratio(task, rows[2], schedule, rounds)
    for row in rows:
        del row["timed"]
    print()
    print(format_table(rows, ratio), flush=True)
    spread = None
    if args.seeds > 1:
        losses = {r["setup"]: [r["train_loss"]] for r in rows}
        for seed in range(args.seed + 1, args.seed + args.seeds):
            seeded = transformer_task(steps, args.quick, seed)
            for setup in SETUPS:
                losses[setup].append(train(seeded, setup, schedule)["train_loss"])
        spread = seed_spread(losses)
        print()
        print(format_spread(spread, args.seed, args.seeds), flush=True)
    if args.png is not None:
        plot(rows, args.png)
        print(f"Loss curves: {args.png}")
    print(f"Total time {time.perf_counter() - started:.1f} s")
    return {"rows": rows, "ratio": ratio, "steps": steps, "seeds": spread}


if __name__ == "__main__":
    main(sys.argv[1:])
