"""Step and compile time of adamx's optimizers against optax, PyTorch and the memory.

Run:  python examples/benchmark.py [--repeats 20] [--large-repeats 10]
                                   [--only NAME[,NAME]]
                                   [--cases CASE[,CASE]] [--json PATH] [--png PATH]
      python examples/benchmark.py --quick   # a few thousand parameters, seconds

An optimizer step touches every parameter a handful of times and does little
arithmetic on each, so on a CPU it is bound by memory traffic. This script
measures, in one process, how close each optimizer's jitted step comes to the
machine's memory bandwidth, how it compares with ``optax.adam``, what many
small leaves cost against one large one, and how long each step takes to
compile.

Cases (all float32; sizes are options):

- ``single``: one leaf of ``--single-size`` values (default 100M);
- ``single_10m``: one leaf of ``--single-10m-size`` values (default 10M), the
  reference for the many-leaf case; printed under its actual size
  (``single_4.1k`` with ``--quick``, the JSON rows' ``label``), while
  ``--cases`` and the JSON rows' ``case`` keep the name;
- ``many``: ``--many-leaves`` leaves (default 1000) of ``--many-size`` values
  (default 10k): 10M in all;
- ``transformer``: a transformer-shaped tree of ``--layers`` layers (default
  24), each with query, key, value and output kernels (d×d) and biases, MLP
  kernels (d×4d, 4d×d) and biases and two LayerNorm scales and biases, plus a
  (vocab×d) embedding and a final LayerNorm; ``--d-model`` 512 and
  ``--vocab`` 32000 make 92.0M parameters in 387 leaves.

Optimizers (:data:`OPTIMIZERS`, :data:`TORCH_OPTIMIZERS`; ``--only`` picks
some): ``adamx.adam``, ``adamx.adamw``, ``adamx.amsgrad``, ``adamx.adam``
with bfloat16 and with 8-bit (``"int8"``) moments, ``optax.adam`` (the
baseline), and, when PyTorch is importable, ``torch.optim.Adam`` with
``fused=True`` and with ``foreach=True`` on the CPU, with as many threads as
JAX's process may use. All at learning rate 1e-3.

Each JAX optimizer's step is ``tx.update`` then ``optax.apply_updates``,
jitted with the parameters and the state donated (:func:`make_step`); a fresh
jit per optimizer and case, with the persistent compilation cache off, so
nothing is reused. "compile s" is the wall time of
``step.lower(...).compile()`` (tracing, lowering and XLA together; the JSON
splits them). The step time is the median of ``--repeats`` steps
(``--large-repeats`` on the cases of 50M parameters or more) after 3
warm-up steps, each waited for with ``block_until_ready``, the outputs fed
back in as the next step's donated inputs; the gradients are fixed random
arrays, not donated. PyTorch's gradients are set once as ``.grad`` and each
``step()`` is timed the same way; it has no compile step.

Bytes moved per step count the parameters read and written, the gradients
read, and every state array read and written, at the arrays' real sizes (an
8-bit moment is its codes and its scales): the least traffic a step can
have; a compiled step that keeps temporaries or passes over an array twice
moves more. Effective GB/s = these bytes / step time.
The ceiling it is compared with is measured here, on flat arrays of each
case's total size: the best of a triad ``b = b + s*c`` (12 bytes per value)
and a kernel with Adam's traffic, ``p, m, v = p + g, m + g, v + g`` (read 4
arrays, write 3: 28 bytes per value), both jitted with donation.

Storage kinds (:data:`STORAGE_KINDS`): ``adamx.adam``'s step on one leaf of
``--storage-size`` values (default 10,485,760) with float32, bfloat16,
``adamx.Rounded(jnp.bfloat16)``, 8-bit and 4-bit moments, every kind's
compiled step taken in turn, round after round (``--repeats`` rounds), so
that drift on a shared machine falls on all alike. For each: the median
step time and its ratio to float32, the step's temporaries
(``compiled.memory_analysis().temp_size_in_bytes``) and the stored state,
both per parameter.

Prints the machine and a markdown table (case, optimizer, params, leaves,
compile s, step ms, GB/s, % of the ceiling, × optax.adam in step and compile
time), then each optimizer's ``many`` step time over its ``single_10m`` one,
and the storage kinds' table. Writes every
number with the machine's description to ``--json`` (default
outputs/benchmark.json) and a bar chart of step and compile times to
``--png`` (default outputs/benchmark.png). The default run frees each
optimizer's arrays before the next, peaks at about 8 GiB of memory and takes
5 to 10 minutes on 2 cores, the 8-bit rows the longest: the slowest steps,
and one to two minutes to compile the step for 1000 leaves.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx

LEARNING_RATE = 1e-3
WARMUP = 3  # untimed steps after compiling, before the timed ones
LARGE = 50_000_000  # cases this large time --large-repeats steps, to save time
BASELINE = "optax.adam"

# name -> factory; extend the list to benchmark another optimizer.
OPTIMIZERS: list[tuple[str, Callable[[], optax.GradientTransformation]]] = [
    ("adamx.adam", lambda: adamx.adam(LEARNING_RATE)),
    ("adamx.adamw", lambda: adamx.adamw(LEARNING_RATE)),
    ("adamx.amsgrad", lambda: adamx.amsgrad(LEARNING_RATE)),
    (
        "adamx.adam-bf16",
        lambda: adamx.adam(LEARNING_RATE, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    ),
    (
        "adamx.adam-int8",
        lambda: adamx.adam(LEARNING_RATE, mu_dtype="int8", nu_dtype="int8"),
    ),
    (BASELINE, lambda: optax.adam(LEARNING_RATE)),
]
# name -> keyword arguments of torch.optim.Adam (run when torch is importable).
TORCH_OPTIMIZERS: list[tuple[str, dict[str, Any]]] = [
    ("torch.adam-fused", {"fused": True}),
    ("torch.adam-foreach", {"foreach": True}),
]
CASES = ("single", "single_10m", "many", "transformer")
# Storage kinds of adamx.adam's moments, compared step by step (run_storage).
STORAGE_KINDS: list[tuple[str, dict[str, Any]]] = [
    ("float32", {}),
    ("bf16", {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16}),
    (
        "bf16 Rounded",
        {
            "mu_dtype": adamx.Rounded(jnp.bfloat16),
            "nu_dtype": adamx.Rounded(jnp.bfloat16),
        },
    ),
    ("int8", {"mu_dtype": "int8", "nu_dtype": "int8"}),
    ("int4", {"mu_dtype": "int4", "nu_dtype": "int4"}),
]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of the cases."""

    single: int
    single_10m: int
    many_leaves: int
    many_size: int
    layers: int
    d_model: int
    vocab: int


FULL = Sizes(100_000_000, 10_000_000, 1000, 10_000, 24, 512, 32_000)
QUICK = Sizes(8192, 4096, 8, 512, 1, 16, 128)
STORAGE_SIZE = {"full": 10_485_760, "quick": 16_384}


# ------------------------------------------------------------------------- cases


def _f32(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def transformer_spec(layers: int, d: int, vocab: int) -> dict[str, Any]:
    """The shapes of a transformer's parameters, as a tree of ShapeDtypeStructs."""

    def dense(n_in: int, n_out: int) -> dict[str, Any]:
        return {"kernel": _f32(n_in, n_out), "bias": _f32(n_out)}

    def norm() -> dict[str, Any]:
        return {"scale": _f32(d), "bias": _f32(d)}

    def layer() -> dict[str, Any]:
        return {
            "attention": {name: dense(d, d) for name in ("query", "key", "value")}
            | {"out": dense(d, d)},
            "mlp": {"fc1": dense(d, 4 * d), "fc2": dense(4 * d, d)},
            "norm1": norm(),
            "norm2": norm(),
        }

    return {
        "embedding": _f32(vocab, d),
        "layers": [layer() for _ in range(layers)],
        "final_norm": norm(),
    }


def case_spec(case: str, sizes: Sizes) -> Any:
    """The parameter tree of ``case`` as ShapeDtypeStructs."""
    if case == "single":
        return {"w": _f32(sizes.single)}
    if case == "single_10m":
        return {"w": _f32(sizes.single_10m)}
    if case == "many":
        return {f"w{i:04d}": _f32(sizes.many_size) for i in range(sizes.many_leaves)}
    if case == "transformer":
        return transformer_spec(sizes.layers, sizes.d_model, sizes.vocab)
    raise ValueError(f"unknown case {case!r}; cases are {', '.join(CASES)}")


def materialize(spec: Any, seed: int, scale: float) -> Any:
    """Normal random arrays of standard deviation ``scale`` shaped as ``spec``.

    Drawn with NumPy, so that no leaf shape costs a compilation.
    """
    rng = np.random.default_rng(seed)

    def draw(s: jax.ShapeDtypeStruct) -> jax.Array:
        values = rng.standard_normal(s.shape, dtype=np.float32)
        values *= scale
        return jnp.asarray(values, s.dtype)

    return jax.block_until_ready(jax.tree.map(draw, spec))


def nbytes(tree: Any) -> int:
    """Bytes held by the arrays of ``tree``, at their real dtypes."""
    return sum(int(x.nbytes) for x in jax.tree.leaves(tree))


def count(n: int) -> str:
    """``n`` in three digits with a k or M suffix: 4.1k, 8.19k, 10M, 92M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def case_label(case: str, n_params: int) -> str:
    """The case as printed: ``single_10m`` is named for the size it has."""
    if case == "single_10m":
        return f"single_{count(n_params).lower()}"
    return case


# ---------------------------------------------------------------------- the step


def make_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    """A fresh jitted step of ``tx``, donating the parameters and the state."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def run_jax(
    factory: Callable[[], optax.GradientTransformation],
    base_params: Any,
    grads: Any,
    repeats: int,
) -> dict[str, Any]:
    """Compiles and times one optimizer's step on one case."""
    tx = factory()
    params = jax.block_until_ready(jax.tree.map(jnp.copy, base_params))
    # Jitted: one compilation, where eager init compiles per leaf shape.
    state = jax.block_until_ready(jax.jit(tx.init)(params))
    step = make_step(tx)
    compile_start = time.perf_counter()
    lowered = step.lower(params, state, grads)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    moved = 2 * nbytes(params) + nbytes(grads) + 2 * nbytes(state)
    state_bytes = nbytes(state)
    times = []
    for _ in range(WARMUP + repeats):
        before = time.perf_counter()
        params, state = jax.block_until_ready(compiled(params, state, grads))
        times.append(time.perf_counter() - before)
    del params, state, compiled, lowered, step
    return {
        "framework": "jax",
        "lower_s": lowered_at - compile_start,
        "xla_compile_s": compiled_at - lowered_at,
        "compile_s": compiled_at - compile_start,
        "state_bytes": state_bytes,
        "bytes_per_step": moved,
        "times_s": times,
    }


def run_storage(size: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    """adamx.adam's step with each storage kind on one leaf, interleaved.

    Every kind's compiled, donated step runs once per round, round after
    round, so that a change in the machine's load falls on all alike; the
    step time is the median over ``repeats`` rounds after ``WARMUP``. Step
    temporaries are ``compiled.memory_analysis().temp_size_in_bytes``.
    """
    params = materialize({"w": _f32(size)}, seed, 1.0)
    grads = materialize({"w": _f32(size)}, seed + 1, 1e-3)
    runs = []
    for name, storage in STORAGE_KINDS:
        tx = adamx.adam(LEARNING_RATE, **storage)
        own = jax.block_until_ready(jax.tree.map(jnp.copy, params))
        state = jax.block_until_ready(jax.jit(tx.init)(own))
        compiled = make_step(tx).lower(own, state, grads).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        runs.append([name, compiled, own, state, temp, []])
    for round_ in range(WARMUP + repeats):
        for run in runs:
            _, compiled, own, state, _, times = run
            before = time.perf_counter()
            run[2], run[3] = jax.block_until_ready(compiled(own, state, grads))
            if round_ >= WARMUP:
                times.append(time.perf_counter() - before)
    rows = []
    for name, _, own, state, temp, times in runs:
        rows.append(
            {
                "storage": name,
                "n_params": size,
                "step_ms": 1e3 * statistics.median(times),
                "times_s": times,
                "state_bytes_per_param": adamx.state_nbytes(state) / size,
                "temp_bytes_per_param": temp / size,
                "bytes_per_step": 2 * nbytes(own) + nbytes(grads) + 2 * nbytes(state),
            }
        )
    for row in rows:
        row["step_vs_float32"] = row["step_ms"] / rows[0]["step_ms"]
    return rows


def format_storage(rows: list[dict[str, Any]]) -> str:
    """The storage comparison as a markdown table."""
    lines = [
        f"adamx.adam on one leaf of {rows[0]['n_params']:,} values, storage kinds "
        "interleaved step by step:",
        "",
        "| state | step ms | × float32 | step temporaries B/param "
        "| stored state B/param |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['storage']} | {r['step_ms']:.2f} | {r['step_vs_float32']:.2f} "
            f"| {r['temp_bytes_per_param']:.2f} | {r['state_bytes_per_param']:.3f} |"
        )
    return "\n".join(lines)


def run_torch(
    torch: Any, options: dict[str, Any], base_params: Any, grads: Any, repeats: int
) -> dict[str, Any]:
    """Times ``torch.optim.Adam(**options).step()`` with fixed ``.grad`` tensors."""
    tensors = []
    for p, g in zip(jax.tree.leaves(base_params), jax.tree.leaves(grads), strict=True):
        tensor = torch.from_numpy(np.array(p)).requires_grad_()
        tensor.grad = torch.from_numpy(np.array(g))
        tensors.append(tensor)
    optimizer = torch.optim.Adam(tensors, lr=LEARNING_RATE, **options)
    times = []
    for _ in range(WARMUP + repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    state = [v for s in optimizer.state.values() for v in s.values()]
    state_bytes = sum(v.numel() * v.element_size() for v in state if torch.is_tensor(v))
    params_bytes = sum(t.numel() * t.element_size() for t in tensors)
    del optimizer, tensors, state
    return {
        "framework": "torch",
        "lower_s": None,
        "xla_compile_s": None,
        "compile_s": None,
        "state_bytes": state_bytes,
        "bytes_per_step": 3 * params_bytes + 2 * state_bytes,
        "times_s": times,
    }


# ---------------------------------------------------------------------- ceiling


@functools.partial(jax.jit, donate_argnums=0)
def _triad(b, c):
    return b + 0.5 * c


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))
def _adam_shaped(p, m, v, g):
    return p + g, m + g, v + g


def measure_ceiling(n: int, repeats: int) -> dict[str, float]:
    """Best GB/s of the streaming kernels on flat float32 arrays of ``n`` values."""
    results = {}
    b, c = jnp.zeros(n), jnp.ones(n)
    best = math.inf
    for _ in range(2 + repeats):
        start = time.perf_counter()
        b = jax.block_until_ready(_triad(b, c))
        best = min(best, time.perf_counter() - start)
    results["triad_gb_s"] = 12 * n / best / 1e9
    del b, c
    p, m, v, g = jnp.zeros(n), jnp.zeros(n), jnp.zeros(n), jnp.ones(n)
    best = math.inf
    for _ in range(2 + repeats):
        start = time.perf_counter()
        p, m, v = jax.block_until_ready(_adam_shaped(p, m, v, g))
        best = min(best, time.perf_counter() - start)
    results["adam_shaped_gb_s"] = 28 * n / best / 1e9
    del p, m, v, g
    _collect(4 * n)
    results["ceiling_gb_s"] = max(results["triad_gb_s"], results["adam_shaped_gb_s"])
    return results


# ----------------------------------------------------------------------- machine


def usable_cores() -> int:
    """The cores this process may run on, which JAX's CPU client uses."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _peak_rss_gib() -> float | None:
    """The most memory this process has held, or None where it cannot tell."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    scale = 2**30 if sys.platform == "darwin" else 2**20  # bytes or KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _load_average() -> float | None:
    """The 1-minute load average, or None where the system does not tell."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_info(torch: Any, torch_threads: int | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    memory_gib = None
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "processor": platform.processor(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": memory_gib,
        "jax_backend": jax.default_backend(),
        "jax_devices": [d.device_kind for d in jax.devices()],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "optax": optax.__version__,
        "adamx": adamx.__version__,
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "torch_threads": torch_threads,
        # Other processes' load skews the timings; it is recorded with them.
        "load_average": _load_average(),
    }


def machine_line(info: dict[str, Any]) -> str:
    memory = f", {info['memory_gib']:.1f} GiB" if info["memory_gib"] else ""
    torch = (
        f", torch {info['torch']} ({info['torch_threads']} threads)"
        if info["torch"]
        else ", torch not installed"
    )
    devices = ", ".join(sorted(set(info["jax_devices"])))
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} "
        f"usable){memory}; JAX on {info['jax_backend']} ({devices}); "
        f"jax {info['jax']}, jaxlib {info['jaxlib']}, optax {info['optax']}, "
        f"adamx {info['adamx']}{torch}; Python {info['python']}; load average "
        f"{_cell(info['load_average'], '.2f')} at the start"
    )


# ------------------------------------------------------------------------ report


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Fills in each row's ratios to optax.adam and, on ``many``, to single_10m."""
    by_key = {(r["case"], r["optimizer"]): r for r in rows}
    for row in rows:
        base = by_key.get((row["case"], BASELINE))
        row["step_vs_optax"] = _ratio(row["step_ms"], base and base["step_ms"])
        row["compile_vs_optax"] = _ratio(row["compile_s"], base and base["compile_s"])
        single = by_key.get(("single_10m", row["optimizer"]))
        row["many_vs_single_10m"] = (
            _ratio(row["step_ms"], single and single["step_ms"])
            if row["case"] == "many"
            else None
        )


def _cell(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_ceiling(c: dict[str, float]) -> str:
    """One case's memory-bandwidth ceiling, in words."""
    return (
        f"{c['ceiling_gb_s']:.1f} GB/s on {count(c['n'])} values "
        f"(triad {c['triad_gb_s']:.1f}, Adam-shaped {c['adam_shaped_gb_s']:.1f})"
    )


def format_table(rows: list[dict[str, Any]], ceilings: dict[str, dict]) -> str:
    """The step table, the ceilings, and many leaves against one, in markdown."""
    lines = [
        "| case | optimizer | params | leaves | compile s | step ms | GB/s "
        "| % of ceiling | step × optax | compile × optax |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['optimizer']} | {count(r['n_params'])} "
            f"| {r['n_leaves']} | {_cell(r['compile_s'], '.2f')} "
            f"| {r['step_ms']:.2f} | {r['gb_s']:.1f} "
            f"| {100 * r['fraction_of_ceiling']:.0f}% "
            f"| {_cell(r['step_vs_optax'], '.2f')} "
            f"| {_cell(r['compile_vs_optax'], '.2f')} |"
        )
    lines.append("")
    lines.append("Memory-bandwidth ceiling (best of the streaming kernels):")
    for case, c in ceilings.items():
        lines.append(f"- {case_label(case, c['n'])}: {format_ceiling(c)}")
    many = [r for r in rows if r["many_vs_single_10m"] is not None]
    if many:
        single = next(r["label"] for r in rows if r["case"] == "single_10m")
        lines += [
            "",
            "Many small leaves against one leaf of the same total size:",
            "",
            f"| optimizer | many ms | {single} ms | many ÷ {single} |",
            "|---|--:|--:|--:|",
        ]
        for r in many:
            single = r["step_ms"] / r["many_vs_single_10m"]
            lines.append(
                f"| {r['optimizer']} | {r['step_ms']:.2f} | {single:.2f} "
                f"| {r['many_vs_single_10m']:.2f} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], cases: list[str], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    by_key = {(r["case"], r["optimizer"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / len(names)
    for panel, (ax, field, label) in enumerate(
        zip(
            axes,
            ("step_ms", "compile_s"),
            ("step time (ms)", "compile time (s)"),
            strict=True,
        )
    ):
        for i, name in enumerate(names):
            xs, heights = [], []
            for j, case in enumerate(cases):
                value = by_key.get((case, name), {}).get(field)
                if value is not None:
                    xs.append(j + (i - (len(names) - 1) / 2) * width)
                    heights.append(value)
            if heights:
                ax.bar(xs, heights, width, label=name, color=f"C{i}")
        ax.set_xticks(range(len(cases)), cases)
        ax.set(yscale="log", ylabel=label)
        ax.set_title(
            "median step time (log scale)"
            if panel == 0
            else "compile time, step.lower().compile() (log scale; JAX only)"
        )
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("adamx optimizer step benchmark")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------- main


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few thousand params")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps")
    parser.add_argument(
        "--large-repeats",
        type=int,
        default=10,
        help=f"timed steps on cases of {LARGE / 1e6:.0f}M parameters or more, at "
        "most --repeats (default 10)",
    )
    parser.add_argument("--ceiling-repeats", type=int, default=10)
    parser.add_argument("--only", type=_names, default=None, metavar="NAME[,NAME]")
    parser.add_argument("--cases", type=_names, default=None, metavar="CASE[,CASE]")
    parser.add_argument("--seed", type=int, default=0)
    for field in dataclasses.fields(Sizes):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}-size"
            if field.name in ("single", "single_10m")
            else f"--{field.name.replace('_', '-')}",
            dest=field.name,
            type=int,
            default=None,
            help=f"default {getattr(FULL, field.name)} ({getattr(QUICK, field.name)}"
            " with --quick)",
        )
    parser.add_argument(
        "--storage-size",
        type=int,
        default=None,
        help=f"values of the storage comparison's leaf, default "
        f"{STORAGE_SIZE['full']} ({STORAGE_SIZE['quick']} with --quick); 0 skips it",
    )
    parser.add_argument(
        "--json", type=pathlib.Path, default=pathlib.Path("outputs/benchmark.json")
    )
    parser.add_argument(
        "--png", type=pathlib.Path, default=pathlib.Path("outputs/benchmark.png")
    )
    args = parser.parse_args(argv)

    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch
    jax_names = [name for name, _ in OPTIMIZERS]
    torch_names = [name for name, _ in TORCH_OPTIMIZERS] if torch is not None else []
    known = jax_names + torch_names
    only = args.only or known
    unknown = sorted(set(only) - set(known))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {', '.join(known)}")
    cases = args.cases or list(CASES)
    if sorted(set(cases) - set(CASES)):
        parser.error(f"--cases: choose from {', '.join(CASES)}")
    if min(args.repeats, args.large_repeats, args.ceiling_repeats) < 1:
        parser.error("--repeats, --large-repeats and --ceiling-repeats must be >= 1")
    defaults = QUICK if args.quick else FULL
    sizes = Sizes(
        **{
            f.name: getattr(args, f.name) or getattr(defaults, f.name)
            for f in dataclasses.fields(Sizes)
        }
    )

    threads = usable_cores()
    previous_threads = torch.get_num_threads() if torch is not None else None
    previous_cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    started = time.perf_counter()
    try:
        if torch is not None:
            torch.set_num_threads(threads)
        info = machine_info(torch, threads if torch is not None else None)
        print(machine_line(info), flush=True)
        rows, ceilings = [], {}
        for case in cases:
            rows += run_case(case, sizes, args, only, torch, ceilings)
        storage_size = args.storage_size
        if storage_size is None:
            storage_size = STORAGE_SIZE["quick" if args.quick else "full"]
        storage = []
        if storage_size:
            _progress(f"storage kinds, {storage_size:,} values")
            storage = run_storage(storage_size, args.repeats, args.seed)
    finally:
        jax.config.update("jax_enable_compilation_cache", previous_cache)
        if torch is not None:
            torch.set_num_threads(previous_threads)
    add_ratios(rows)
    wall_s = time.perf_counter() - started

    print()
    print(format_table(rows, ceilings))
    if storage:
        print()
        print(format_storage(storage))
    plot(rows, cases, args.png)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": info,
        "settings": {
            "quick": args.quick,
            "repeats": args.repeats,
            "large_repeats": args.large_repeats,
            "large_params": LARGE,
            "warmup": WARMUP,
            "ceiling_repeats": args.ceiling_repeats,
            "learning_rate": LEARNING_RATE,
            "seed": args.seed,
            "sizes": dataclasses.asdict(sizes),
            "cases": cases,
            "optimizers": only,
            "persistent_compilation_cache": False,
        },
        "ceilings": ceilings,
        "rows": rows,
        "storage": storage,
        "wall_s": wall_s,
        "load_average_at_end": _load_average(),
        "peak_rss_gib": _peak_rss_gib(),
    }
    args.json.write_text(json.dumps(result, indent=1))
    print(f"\nNumbers: {args.json}\nChart: {args.png}")
    print(
        f"Total time {wall_s:.1f} s; load average "
        f"{_cell(result['load_average_at_end'], '.2f')} at the end; peak memory "
        f"{_cell(result['peak_rss_gib'], '.1f', ' GiB')}"
    )
    return result


def run_case(
    case: str,
    sizes: Sizes,
    args: argparse.Namespace,
    only: list[str],
    torch: Any,
    ceilings: dict[str, dict],
) -> list[dict[str, Any]]:
    """Measures the ceiling, then every selected optimizer, on one case."""
    spec = case_spec(case, sizes)
    n_params = sum(math.prod(s.shape) for s in jax.tree.leaves(spec))
    n_leaves = len(jax.tree.leaves(spec))
    same_size = next((c for c in ceilings.values() if c["n"] == n_params), None)
    if same_size is None:
        ceiling = {"n": n_params, **measure_ceiling(n_params, args.ceiling_repeats)}
    else:
        ceiling = dict(same_size)
    ceilings[case] = ceiling
    label = case_label(case, n_params)
    leaves = "leaf" if n_leaves == 1 else "leaves"
    _progress(
        f"{label}: {n_params:,} params in {n_leaves} {leaves}; "
        f"memory ceiling {format_ceiling(ceiling)}"
    )
    params = materialize(spec, args.seed, 0.02)
    grads = materialize(spec, args.seed + 1, 1e-3)
    repeats = args.repeats
    if n_params >= LARGE:
        repeats = min(repeats, args.large_repeats)
    runs: list[tuple[str, Callable[[], dict]]] = [
        (name, functools.partial(run_jax, factory, params, grads, repeats))
        for name, factory in OPTIMIZERS
        if name in only
    ]
    if torch is not None:
        runs += [
            (
                name,
                functools.partial(run_torch, torch, options, params, grads, repeats),
            )
            for name, options in TORCH_OPTIMIZERS
            if name in only
        ]
    rows = []
    for name, run in runs:
        row = {"case": case, "label": label, "optimizer": name}
        row["n_params"] = n_params
        row["n_leaves"] = n_leaves
        row["repeats"] = repeats
        row |= run()
        _collect(4 * n_params)
        timed = row["times_s"][WARMUP:]
        row["first_step_ms"] = 1e3 * row["times_s"][0]
        row["step_ms"] = 1e3 * statistics.median(timed)
        row["step_ms_min"] = 1e3 * min(timed)
        row["gb_s"] = row["bytes_per_step"] / (row["step_ms"] / 1e3) / 1e9
        row["fraction_of_ceiling"] = row["gb_s"] / ceiling["ceiling_gb_s"]
        rows.append(row)
        times = f"step {row['step_ms']:.2f} ms, {row['gb_s']:.1f} GB/s"
        if row["compile_s"] is not None:
            times = f"compile {row['compile_s']:.2f} s, {times}"
        _progress(f"  {name}: {times}")
    del params, grads
    _collect(4 * n_params)
    return rows


def _collect(nbytes: int) -> None:
    """Frees what the last run left, where it is large enough to matter.

    Arrays go with their last reference; a collection also frees any caught
    in reference cycles, but it costs a fraction of a second with JAX and
    PyTorch loaded, so the tiny --quick arrays are left to reference counting.
    """
    if nbytes >= 2**26:
        gc.collect()


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
