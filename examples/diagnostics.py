"""Logging adamx.with_stats while training, and what recording costs.

Two parts:

1. Train a small MLP on scikit-learn's bundled digits with
   ``adamx.with_stats(adamx.adam(...), every=LOG_EVERY)`` and read the
   statistics every ``LOG_EVERY`` steps, the way a training loop logs. The
   signal-to-noise ratio mean |m̂|/√v̂ falls as training nears an optimum (seed
   004's reading of Adam's update); the plot shows it with the loss and the
   norms.
2. Time a jitted, donated Adam step on a 10M-parameter tree (100 leaves of
   100k) without statistics and with ``every`` = 1, 10 and 100, the steps
   interleaved so that drift on a shared machine hits all of them alike. For
   each: the median step (for ``every`` > 1 a step that does not record), the
   mean over the run (every ``every``-th step records, so this is the
   amortized cost), the median recording step, and the temporaries XLA
   allocates for the step (``compiled.memory_analysis()``), per parameter.

Run: ``python examples/diagnostics.py`` (``--quick`` for a smoke test). It
prints both tables and writes ``outputs/diagnostics.png``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(data.target)


def _init_mlp(key, sizes):
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        key, sub = jax.random.split(key)
        scale = np.sqrt(2.0 / fan_in)
        params.append(
            {
                "w": jax.random.normal(sub, (fan_in, fan_out)) * scale,
                "b": jnp.zeros(fan_out),
            }
        )
    return params


def _loss(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
    logits = h @ params[-1]["w"] + params[-1]["b"][None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_and_log(steps: int, log_every: int, batch: int = 128) -> list[dict]:
    """Mini-batch Adam on digits; the logged statistics, one dict per read."""
    x, y = _digits()
    params = _init_mlp(jax.random.PRNGKey(0), [64, 128, 10])
    opt = adamx.with_stats(adamx.adam(3e-3), every=log_every)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        index = jax.random.randint(key, (batch,), 0, x.shape[0])
        loss, grads = jax.value_and_grad(_loss)(params, x[index], y[index])
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    log = []
    for t in range(steps):
        params, state, loss = step(params, state, jax.random.PRNGKey(t))
        if t % log_every == 0:  # the only host reads
            stats = jax.device_get(state.stats)
            log.append(
                {"loss": float(loss)}
                | {name: float(value) for name, value in stats._asdict().items()}
            )
    return log


def time_recording(
    leaves: int, size: int, repeats: int, everies: tuple[int, ...]
) -> dict:
    """Step times (ms) and temporaries of donated Adam without and with statistics.

    Returns ``{"median": ..., "mean": ..., "recording": ..., "temp_bytes":
    ...}``, each a dict by variant name; ``temp_bytes`` is per parameter.
    """
    params = {f"w{i:03d}": jnp.ones((size,)) for i in range(leaves)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    variants = {"adam": (adamx.adam(1e-3), 0)} | {
        f"with_stats every={n}": (adamx.with_stats(adamx.adam(1e-3), every=n), n)
        for n in everies
    }
    runs = {}
    temp_bytes = {}
    for name, (opt, every) in variants.items():

        def step(params, state, grads, opt=opt):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        p = jax.tree.map(jnp.copy, params)
        s = opt.init(p)
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(p, s, grads).compile()
        temp_bytes[name] = compiled.memory_analysis().temp_size_in_bytes
        for _ in range(3):
            p, s = compiled(p, s, grads)
        jax.block_until_ready(p)
        runs[name] = {"step": compiled, "p": p, "s": s, "every": every, "t": []}
    for i in range(repeats):
        for run in runs.values():
            start = time.perf_counter()
            run["p"], run["s"] = run["step"](run["p"], run["s"], grads)
            jax.block_until_ready((run["p"], run["s"]))
            # The count before this step was 3 + i: it records when that is a
            # multiple of every.
            recorded = run["every"] and (3 + i) % run["every"] == 0
            run["t"].append((time.perf_counter() - start, bool(recorded)))
    result: dict[str, dict[str, float]] = {
        "median": {},
        "mean": {},
        "recording": {},
        "temp_bytes": {},
    }
    for name, run in runs.items():
        times = np.array([t for t, _ in run["t"]])
        recording = [t for t, recorded in run["t"] if recorded]
        result["median"][name] = 1e3 * float(np.median(times))
        result["mean"][name] = 1e3 * float(np.mean(times))
        result["recording"][name] = (
            1e3 * float(np.median(recording)) if recording else float("nan")
        )
        result["temp_bytes"][name] = temp_bytes[name] / (leaves * size)
    return result


def plot(log: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [entry["step"] for entry in log]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [e["loss"] for e in log])
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].plot(steps, [e["snr_mean"] for e in log], label="mean")
    axes[1].plot(steps, [e["snr_max"] for e in log], label="max", alpha=0.6)
    axes[1].set(title="signal-to-noise |m̂|/√v̂", xlabel="step", yscale="log")
    axes[1].legend()
    axes[2].plot(steps, [e["grad_norm"] for e in log], label="gradient")
    axes[2].plot(steps, [e["update_norm"] for e in log], label="update")
    axes[2].set(title="global norms", xlabel="step", yscale="log")
    axes[2].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-test size")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--png", default="outputs/diagnostics.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.log_every, args.repeats = 60, 10, 3
    leaves, size = (4, 1000) if args.quick else (100, 100_000)

    log = train_and_log(args.steps, args.log_every)
    print("step   loss     snr mean  snr max   |g|       |u|")
    shown = log[:: max(1, len(log) // 10)]
    if shown[-1] is not log[-1]:
        shown.append(log[-1])
    for entry in shown:
        print(
            f"{entry['step']:5.0f}  {entry['loss']:.4f}   {entry['snr_mean']:.4f}"
            f"    {entry['snr_max']:.3f}     {entry['grad_norm']:.4f}"
            f"    {entry['update_norm']:.4f}"
        )
    plot(log, pathlib.Path(args.png))

    timings = time_recording(leaves, size, args.repeats, (1, 10, 100))
    median, mean = timings["median"], timings["mean"]
    print(
        f"\nstep time, {leaves * size / 1e6:g}M params in {leaves} leaves, "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__} "
        f"({jax.default_backend()}), {args.repeats} donated jitted steps of each, "
        "interleaved:"
    )
    print(
        f"  {'':22s} {'median':>9s} {'ratio':>6s} {'mean':>9s} {'ratio':>6s}"
        f" {'recording':>10s} {'temp B/param':>13s}"
    )
    for name in median:
        recording = timings["recording"][name]
        recording = "-" if math.isnan(recording) else f"{recording:.2f}"
        print(
            f"  {name:22s} {median[name]:6.2f} ms {median[name] / median['adam']:5.2f}x"
            f" {mean[name]:6.2f} ms {mean[name] / mean['adam']:5.2f}x"
            f" {recording:>7s} ms"
            f" {timings['temp_bytes'][name]:13.3f}"
        )
    return {"log": log, "timings_ms": median, "timings": timings}


if __name__ == "__main__":
    main()
