"""Optimizer-state storage: what float32, bfloat16, 8- and 4-bit moments cost and keep.

Run:  python examples/state_memory.py [--steps 300] [--out PNG] [--json [PATH]]
      python examples/state_memory.py --quick   # tiny sizes, 40 steps

Trains the same two models with ``adamx.adamw`` once per storage kind of its
moments, with the same initial parameters and the same minibatches:

- ``fp32``: the default (moments follow the float32 parameters);
- ``bf16``: ``mu_dtype=nu_dtype=jnp.bfloat16``, round to nearest;
- ``bf16-sr``: ``mu_dtype=nu_dtype=adamx.StochasticRounding()``;
- ``bf16-rd``: ``mu_dtype=nu_dtype=adamx.Rounded(jnp.bfloat16)``, the step
  taken from the stored moments;
- ``int8``: ``mu_dtype=nu_dtype="int8"``, block-wise 8-bit float codes for
  leaves of at least 4096 values (smaller leaves stay float32);
- ``int4``: ``mu_dtype=nu_dtype="int4"``, the same with 4-bit codes.

Tasks:

(a) an MLP 64-256-256-10 on scikit-learn's bundled digits (no download);
(b) a byte-level decoder-only transformer language model written in plain JAX
    (token and position embeddings, 2 pre-LayerNorm blocks of causal
    self-attention and MLP, d_model 128, 4 heads, context 64) trained on the
    source text of a few standard-library modules of the running Python
    (read with ``inspect.getsource``; deterministic, no download; the text,
    and so the numbers, depend on the Python version, which is printed).

For each task it prints a table: final train loss (mean of the last 20
steps), validation loss, their relative difference against fp32, state bytes
per parameter (``adamx.state_nbytes(opt_state) / n_params``), the temporaries
of the optimizer step alone (``tx.update`` and ``optax.apply_updates``,
jitted with the parameters and the state donated:
``compiled.memory_analysis().temp_size_in_bytes / n_params``), and the median
jitted training step time (forward, backward and optimizer; after warm-up,
``block_until_ready``) with its ratio to fp32 (every run's compiled step
taken in turn, round after round, so that a change in the machine's load
falls on all alike). A reference row ``fp32 seed+1`` trains fp32 from a
different initialization on the same batches: how far two ordinary float32
runs land apart, the noise to read the other rows against (left out with
``--quick`` unless ``--reference`` is given). The targets (8-bit and
bfloat16 within 1% of fp32, 4-bit within 2%) are reported, not asserted: a
row is "met" inside its target, "in noise" outside it but no farther from
fp32 than the seed+1 run, and "missed" beyond both.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import inspect
import itertools
import json
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx

KINDS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16": {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16},
    "bf16-sr": {
        "mu_dtype": adamx.StochasticRounding(),
        "nu_dtype": adamx.StochasticRounding(),
    },
    "bf16-rd": {
        "mu_dtype": adamx.Rounded(jnp.bfloat16),
        "nu_dtype": adamx.Rounded(jnp.bfloat16),
    },
    "int8": {"mu_dtype": "int8", "nu_dtype": "int8"},
    "int4": {"mu_dtype": "int4", "nu_dtype": "int4"},
}
# Relative tolerance on the final train loss against fp32 that each kind aims for.
TARGETS = {"bf16": 0.01, "bf16-sr": 0.01, "bf16-rd": 0.01, "int8": 0.01, "int4": 0.02}
REFERENCE = "fp32 seed+1"
TAIL = 20  # final train loss: mean of this many last steps
WARMUP = 2  # untimed rounds of steps before the timed ones

# Standard-library modules whose source is the language model's text.
CORPUS_MODULES = (
    "argparse",
    "textwrap",
    "string",
    "functools",
    "contextlib",
    "json.decoder",
    "json.encoder",
)


@dataclasses.dataclass(frozen=True)
class Task:
    """One model and its data, trained identically for every storage kind."""

    name: str
    params: Any  # initial parameters, float32
    alt_params: Any  # another initialization, for the reference row
    loss_fn: Callable[[Any, Any], jax.Array]  # (params, batch) -> scalar
    batches: list[Any]  # one per step, already on the device
    val_batches: list[Any]
    learning_rate: float
    timing_rounds: int  # timed steps per run
    description: str


# --------------------------------------------------------------------------- data


def digits_task(steps: int, quick: bool, seed: int) -> Task:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train = 1500
    tr, va = order[:n_train], order[n_train:]
    widths = (64, 64, 64, 10) if quick else (64, 256, 256, 10)
    batch = 32 if quick else 64

    def init(key):
        params = {}
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            key, sub = jax.random.split(key)
            scale = math.sqrt(2.0 / fan_in)
            params[f"w{i}"] = scale * jax.random.normal(sub, (fan_in, fan_out))
            params[f"b{i}"] = jnp.zeros((fan_out,))
        return params

    n_layers = len(widths) - 1

    def loss_fn(params, batch):
        h, labels = batch
        for i in range(n_layers):
            h = h @ params[f"w{i}"] + params[f"b{i}"][None, :]
            if i < n_layers - 1:
                h = jax.nn.relu(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, labels).mean()

    rng = np.random.default_rng(seed + 1)
    idx = [rng.choice(tr, size=batch, replace=False) for _ in range(steps)]
    batches = [(jnp.asarray(x[i]), jnp.asarray(y[i])) for i in idx]
    val = [(jnp.asarray(x[va]), jnp.asarray(y[va]))]
    key = jax.random.key(seed)
    return Task(
        name="digits MLP",
        params=init(key),
        alt_params=init(jax.random.fold_in(key, 1)),
        loss_fn=loss_fn,
        batches=batches,
        val_batches=val,
        learning_rate=3e-3,
        timing_rounds=200,
        description=(
            f"MLP {'-'.join(map(str, widths))} on sklearn digits "
            f"({n_train} train / {len(va)} val), batch {batch}"
        ),
    )


def stdlib_corpus() -> bytes:
    """The source text of :data:`CORPUS_MODULES`, concatenated, as UTF-8 bytes."""
    parts = [
        inspect.getsource(importlib.import_module(name)) for name in CORPUS_MODULES
    ]
    return "\n".join(parts).encode("utf-8")


def _layer_norm(x, gain, bias):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * gain[None, None, :] + bias[
        None, None, :
    ]


def transformer_task(steps: int, quick: bool, seed: int) -> Task:
    vocab = 256  # bytes
    d, heads, layers, ctx, batch = (32, 2, 1, 16, 8) if quick else (128, 4, 2, 64, 16)
    head_dim = d // heads

    text = np.frombuffer(stdlib_corpus(), dtype=np.uint8).astype(np.int32)
    n_train = int(0.9 * len(text))
    train_text, val_text = text[:n_train], text[n_train:]

    def init(key):
        keys = iter(jax.random.split(key, 4 + 4 * layers))

        def dense(fan_in, fan_out, scale=1.0):
            w = jax.random.normal(next(keys), (fan_in, fan_out))
            return w * (scale / math.sqrt(fan_in))

        params = {
            "tok": 0.02 * jax.random.normal(next(keys), (vocab, d)),
            "pos": 0.02 * jax.random.normal(next(keys), (ctx, d)),
            "ln_f": (jnp.ones((d,)), jnp.zeros((d,))),
            "head": dense(d, vocab),
            "blocks": [],
        }
        for _ in range(layers):
            params["blocks"].append(
                {
                    "ln1": (jnp.ones((d,)), jnp.zeros((d,))),
                    "qkv": dense(d, 3 * d),
                    "proj": dense(d, d, 1.0 / math.sqrt(2 * layers)),
                    "ln2": (jnp.ones((d,)), jnp.zeros((d,))),
                    "fc": dense(d, 4 * d),
                    "fc_b": jnp.zeros((4 * d,)),
                    "out": dense(4 * d, d, 1.0 / math.sqrt(2 * layers)),
                    "out_b": jnp.zeros((d,)),
                }
            )
        return params

    causal = jnp.tril(jnp.ones((ctx, ctx), dtype=bool))[None, None, :, :]

    def forward(params, tokens):
        b, t = tokens.shape
        h = params["tok"][tokens] + params["pos"][None, :t, :]
        for blk in params["blocks"]:
            a = _layer_norm(h, *blk["ln1"])
            q, k, v = jnp.split(a @ blk["qkv"], 3, axis=-1)
            q, k, v = (z.reshape(b, t, heads, head_dim) for z in (q, k, v))
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
            scores = jnp.where(causal[:, :, :t, :t], scores, -1e9)
            att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
            h = h + att.reshape(b, t, d) @ blk["proj"]
            a = _layer_norm(h, *blk["ln2"])
            a = jax.nn.gelu(a @ blk["fc"] + blk["fc_b"][None, None, :])
            h = h + a @ blk["out"] + blk["out_b"][None, None, :]
        return _layer_norm(h, *params["ln_f"]) @ params["head"]

    def loss_fn(params, tokens):
        logits = forward(params, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, tokens[:, 1:]
        ).mean()

    rng = np.random.default_rng(seed + 1)
    starts = rng.integers(0, n_train - ctx - 1, size=(steps, batch))
    offsets = np.arange(ctx + 1)[None, :]
    batches = [jnp.asarray(train_text[s[:, None] + offsets]) for s in starts]
    # Validation: consecutive non-overlapping windows from the held-out tail.
    n_windows = min((len(val_text) - 1) // ctx, 16 if quick else 192)
    val_starts = np.arange(n_windows) * ctx
    windows = val_text[val_starts[:, None] + offsets]
    val = [jnp.asarray(windows[i : i + 64]) for i in range(0, n_windows, 64)]
    key = jax.random.key(seed)
    return Task(
        name="byte transformer LM",
        params=init(key),
        alt_params=init(jax.random.fold_in(key, 1)),
        loss_fn=loss_fn,
        batches=batches,
        val_batches=val,
        learning_rate=3e-3,
        timing_rounds=10 if quick else 40,
        description=(
            f"decoder LM d_model {d}, {heads} heads, {layers} layers, context "
            f"{ctx}, batch {batch}, on {len(text)} bytes of Python "
            f"{platform.python_version()} stdlib source ({', '.join(CORPUS_MODULES)};"
            f" sha256 {hashlib.sha256(text.astype(np.uint8)).hexdigest()[:12]}),"
            f" {n_train} train / {len(val_text)} val bytes"
        ),
    )


# ----------------------------------------------------------------------- training


def train(task: Task, kind: str, storage: dict[str, Any], params: Any) -> dict:
    """Trains one run; returns its numbers and, under "timer", a timed step."""
    steps = len(task.batches)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        task.learning_rate,
        warmup_steps=max(1, steps // 10),
        decay_steps=steps,
        end_value=task.learning_rate / 10,
    )
    opt = adamx.adamw(schedule, weight_decay=1e-4, **storage)
    opt_state = jax.jit(opt.init)(params)  # one compilation, not one per leaf

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(task.loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    losses = []
    for batch in task.batches:
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(loss)
    losses = [float(x) for x in jax.block_until_ready(losses)]
    seconds = time.perf_counter() - start
    eval_loss = jax.jit(task.loss_fn)
    val = [float(eval_loss(params, b)) for b in task.val_batches]
    sizes = [len(jax.tree.leaves(b)[0]) for b in task.val_batches]
    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    state_bytes = adamx.state_nbytes(opt_state)

    def opt_step(params, opt_state, grads):
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    compiled = (
        jax.jit(opt_step, donate_argnums=(0, 1))
        .lower(params, opt_state, params)
        .compile()
    )
    temp_bytes = compiled.memory_analysis().temp_size_in_bytes

    def timer() -> float:
        start = time.perf_counter()
        jax.block_until_ready(step(params, opt_state, task.batches[-1]))
        return time.perf_counter() - start

    return {
        "kind": kind,
        "losses": losses,
        "train_loss": float(np.mean(losses[-TAIL:])),
        "val_loss": float(np.average(val, weights=sizes)),
        "n_params": n_params,
        "state_bytes": state_bytes,
        "bytes_per_param": state_bytes / n_params,
        "step_temp_bytes_per_param": temp_bytes / n_params,
        "run_s": seconds,  # the whole run, compilation included
        "timer": timer,
    }


def run_task(task: Task, reference: bool) -> list[dict]:
    runs = [(kind, storage, task.params) for kind, storage in KINDS.items()]
    if reference:
        runs.append((REFERENCE, {}, task.alt_params))
    rows = [train(task, *run) for run in runs]
    # Step times: every run's compiled step, taken in turn, round after round,
    # so that a change in the machine's load falls on all of them alike.
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(WARMUP):
        for row in rows:
            row["timer"]()
    for _ in range(task.timing_rounds):
        for row, record in zip(rows, times, strict=True):
            record.append(row["timer"]())
    base = rows[0]
    for row, record in zip(rows, times, strict=True):
        del row["timer"]
        row["step_ms"] = 1e3 * float(np.median(record))
    for row in rows:
        row["train_rel"] = row["train_loss"] / base["train_loss"] - 1.0
        row["val_rel"] = row["val_loss"] / base["val_loss"] - 1.0
        row["time_ratio"] = row["step_ms"] / base["step_ms"]
    spread = [abs(r["train_rel"]) for r in rows if r["kind"] == REFERENCE]
    for row in rows:
        target = TARGETS.get(row["kind"])
        row["target"] = target
        row["seed_spread"] = spread[0] if spread else None
        row["meets_target"] = (
            None if target is None else abs(row["train_rel"]) <= target
        )
        row["verdict"] = verdict(row)
    return rows


def verdict(row: dict) -> str | None:
    """The row's verdict: met, in noise (within the fp32 seed spread) or missed."""
    if row["target"] is None:
        return None
    if row["meets_target"]:
        return "met"
    spread = row["seed_spread"]
    if spread is not None and abs(row["train_rel"]) <= spread:
        return "in noise"
    return "missed"


def format_table(task: Task, rows: list[dict]) -> str:
    header = (
        f"{'storage':12s} {'train loss':>10s} {'val loss':>9s} {'Δtrain':>8s} "
        f"{'Δval':>8s} {'target':>15s} {'B/param':>8s} {'temp B/p':>8s} "
        f"{'step ms':>8s} {'× fp32':>7s}"
    )
    lines = [f"{task.name}: {task.description}", header, "-" * len(header)]
    for r in rows:
        target = (
            "-" if r["target"] is None else f"±{100 * r['target']:.0f}% {r['verdict']}"
        )
        lines.append(
            f"{r['kind']:12s} {r['train_loss']:10.5f} {r['val_loss']:9.5f} "
            f"{100 * r['train_rel']:+7.2f}% {100 * r['val_rel']:+7.2f}% "
            f"{target:>15s} {r['bytes_per_param']:8.3f} "
            f"{r['step_temp_bytes_per_param']:8.2f} {r['step_ms']:8.2f} "
            f"{r['time_ratio']:7.2f}"
        )
    n = rows[0]["n_params"]
    spread = rows[0]["seed_spread"]
    noise = "" if spread is None else f"; fp32 seed-to-seed spread {100 * spread:.2f}%"
    lines.append(
        f"({n} parameters; Δ = relative difference of the loss against fp32; "
        f"train loss = mean of the last {TAIL} steps{noise}; temp B/p = the "
        "optimizer step's temporaries per parameter)"
    )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs; jax {jax.__version__} on {jax.devices()}; "
        f"Python {platform.python_version()}"
    )


def plot(results: dict[str, list[dict]], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    colors = {kind: f"C{i}" for i, kind in enumerate([*KINDS, REFERENCE])}
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7.5))
    axes = np.asarray(axes).reshape(2, len(results))
    for col, (name, rows) in enumerate(results.items()):
        top, bottom = axes[0, col], axes[1, col]
        window = max(1, min(TAIL, len(rows[0]["losses"]) // 5))
        kernel = np.ones(window) / window

        def smooth(values, kernel=kernel):
            return np.convolve(values, kernel, mode="valid")

        base = smooth(rows[0]["losses"])
        x = np.arange(len(base)) + window
        for r in rows:
            style = {
                "color": colors[r["kind"]],
                "ls": ":" if r["kind"] == REFERENCE else "-",
                "label": r["kind"],
                "lw": 1.2,
            }
            curve = smooth(r["losses"])
            top.plot(x, curve, **style)
            if r is not rows[0]:
                bottom.plot(x, 100 * (curve / base - 1), **style)
        top.set(title=name, ylabel="train loss", yscale="log")
        top.yaxis.set_major_formatter(ScalarFormatter())
        if base.max() < 10 * base.min():  # under a decade: label the minor ticks
            top.yaxis.set_minor_formatter(ScalarFormatter())
            top.tick_params(axis="y", which="minor", labelsize=7)
        bottom.axhline(0.0, color="k", lw=0.5)
        bottom.set(xlabel="step", ylabel="train loss vs fp32 (%)")
        top.legend()
        bottom.legend()
    fig.suptitle(
        "adamx.adamw, optimizer-state storage: train loss "
        f"(moving average of {window} steps), same batches"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default 300")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 40 steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"add the '{REFERENCE}' row (default: on, off with --quick)",
    )
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("outputs/state_memory.png")
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write the numbers as JSON (default path: --out with .json)",
    )
    args = parser.parse_args(argv)
    steps = args.steps or (40 if args.quick else 300)
    if steps <= TAIL:
        parser.error(f"--steps must exceed {TAIL}")
    if args.reference is None:
        args.reference = not args.quick

    started = time.perf_counter()
    print(f"Machine: {machine()}")
    print(
        f"{steps} steps per run, adamx.adamw, warmup-cosine schedule, seed {args.seed}"
    )
    results: dict[str, list[dict]] = {}
    descriptions = {}
    for make in (digits_task, transformer_task):
        task = make(steps, args.quick, args.seed)
        rows = run_task(task, args.reference)
        results[task.name] = rows
        descriptions[task.name] = task.description
        print()
        print(format_table(task, rows), flush=True)
    plot(results, args.out)
    print(f"\nLoss curves: {args.out}")
    if args.json is not None:
        path = pathlib.Path(args.json) if args.json else args.out.with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine(),
            "steps": steps,
            "quick": args.quick,
            "seed": args.seed,
            "tasks": {
                name: {"description": descriptions[name], "runs": rows}
                for name, rows in results.items()
            },
        }
        path.write_text(json.dumps(payload, indent=1))
        print(f"Numbers: {path}")
    print(f"Total time {time.perf_counter() - started:.1f} s")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
