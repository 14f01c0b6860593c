"""Train a Flax MLP on scikit-learn's digits with adamx and optax, with early stopping.

Run:  python examples/train_digits.py [--epochs 60] [--out PNG] [--no-progress]
      python examples/train_digits.py --quick   # a tiny run, a few seconds

The data are scikit-learn's bundled 8×8 digits (1797 images, no download),
pixels scaled to [0, 1], split once with a fixed seed into 70% train, 15%
validation and 15% test. The model is a ``flax.linen`` MLP 64-128-10 with
ReLU, trained with softmax cross-entropy in minibatches of 32: each epoch is
one pass over a fresh shuffle of the training set (the few examples that do
not fill a last batch wait for the next shuffle). Every optimizer starts from
the same initial parameters and sees the same batches in the same order.

Optimizers compared, each with a learning rate that suits it on this task:
``optax.sgd`` (with and without momentum 0.9), ``optax.rmsprop``,
``optax.adagrad``, ``adamx.adam``, ``adamx.adamw``, ``adamx.amsgrad`` and
``adamx.adam`` with 8-bit moments (``mu_dtype="int8", nu_dtype="int8"``).
adamx stores a leaf in 8 bits only when it holds at least 4096 values, so the
hidden layer is 128 wide: the first kernel (64×128 = 8192 values) is stored
in int8, the biases and the 128×10 output kernel stay float32.

Early stopping (``flax.training.early_stopping.EarlyStopping``) watches the
validation loss after every epoch: training stops once it has not improved
for ``--patience`` epochs in a row, and the parameters of the best epoch (the
lowest validation loss) are kept; the test set is evaluated once, on those
parameters.

It prints a table (best epoch, stopped epoch, test accuracy and loss,
optimizer-state bytes per parameter from ``adamx.state_nbytes``, compile time
and milliseconds per training step) and the machine it ran on, and writes one
PNG with the validation loss and accuracy of every optimizer per epoch to
``--out``. Each optimizer's jitted step is compiled on the first batch before
any step is timed (the result is discarded), and its compile time is reported
apart: a time per run that included it made the first optimizer of a kind
look slow, since it also compiles what later ones reuse (the evaluation,
adamx's per-leaf updates), so that Adam seemed slower than AdamW.
"ms/step" is the median over epochs of an epoch's training steps (waited for
at its end; evaluation excluded) over their number: the median keeps a busy
moment of a shared machine from moving one optimizer's number.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.early_stopping import EarlyStopping
from tqdm import tqdm

import adamx

BATCH = 32
MIN_DELTA = 0.0  # any fall in validation loss is progress; the best epoch is the min

# name -> optimizer factory; each learning rate suits its optimizer on this task.
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "optax.sgd": lambda: optax.sgd(0.1),
    "optax.sgd momentum": lambda: optax.sgd(0.02, momentum=0.9),
    "optax.rmsprop": lambda: optax.rmsprop(1e-3),
    "optax.adagrad": lambda: optax.adagrad(0.05),
    "adamx.adam": lambda: adamx.adam(2e-3),
    "adamx.adamw": lambda: adamx.adamw(2e-3, weight_decay=1e-4),
    "adamx.amsgrad": lambda: adamx.amsgrad(2e-3),
    "adamx.adam int8": lambda: adamx.adam(2e-3, mu_dtype="int8", nu_dtype="int8"),
}


class MLP(nn.Module):
    """Dense layers with ReLU between them; the last one gives the logits."""

    features: Sequence[int] = (128, 10)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (n, 10) for images (n, 64)."""
        for width in self.features[:-1]:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.features[-1])(x)


@dataclasses.dataclass(frozen=True)
class Split:
    """Images (n, 64) in [0, 1] and integer labels (n,), as NumPy arrays."""

    x: np.ndarray
    y: np.ndarray


def load_splits(seed: int) -> dict[str, Split]:
    """The digits, shuffled with ``seed`` and split 70/15/15 into train/val/test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train, n_val = int(0.7 * len(y)), int(0.15 * len(y))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {k: Split(x[i], y[i]) for k, i in parts.items()}


def loss_fn(model: nn.Module, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def evaluate(model: nn.Module, params: Any, split: Split) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``params`` on a whole split."""
    loss, accuracy = _evaluate(model, params, split.x, split.y)
    return float(loss), float(accuracy)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(model, params, x, y):
    logits = model.apply({"params": params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)


def new_stopper(patience: int) -> EarlyStopping:
    """Flax's early stopping, set to stop after ``patience`` epochs without progress.

    ``EarlyStopping.update`` raises ``should_stop`` on the first non-improving
    update that finds ``patience_count`` already at its ``patience``, that is on
    the (patience + 1)-th in a row; hence ``patience - 1`` here.
    """
    if patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    return EarlyStopping(min_delta=MIN_DELTA, patience=patience - 1)


def early_stopping_epochs(
    losses: Sequence[float], patience: int
) -> tuple[int, int | None]:
    """(best epoch, stopping epoch or None) for validation losses of epochs 1, 2, ...

    The rule :func:`train` applies, run on a given sequence of losses.
    """
    stopper, best = new_stopper(patience), 0
    for epoch, loss in enumerate(losses, start=1):
        stopper = stopper.update(loss)
        if stopper.has_improved:
            best = epoch
        if stopper.should_stop:
            return best, epoch
    return best, None


def train(
    name: str,
    optimizer: optax.GradientTransformation,
    model: nn.Module,
    init_params: Any,
    data: dict[str, Split],
    epochs: int,
    patience: int,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Trains with early stopping; returns the history and the best parameters.

    The step is compiled (and run once, its result discarded) before training,
    so that ``step_ms`` times only the compiled steps (the median over epochs
    of an epoch's step time over its steps); ``compile_s`` is that first call.
    """
    started = time.perf_counter()
    opt_state = optimizer.init(init_params)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(model, params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_set = data["train"]
    n_batches = len(train_set.y) // BATCH
    first = train_set.x[:BATCH], train_set.y[:BATCH]
    compile_start = time.perf_counter()
    jax.block_until_ready(step(init_params, opt_state, *first))
    compile_s = time.perf_counter() - compile_start
    epoch_step_s = []  # per epoch: the wall time of its steps over their number
    rng = np.random.default_rng(seed)  # the same batches for every optimizer
    params, best_params = init_params, init_params
    stopper = new_stopper(patience)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_acc": []}
    best_epoch = stopped_epoch = 0
    bar = tqdm(range(1, epochs + 1), desc=name, disable=not progress)
    for epoch in bar:
        # Batches are cut in NumPy: one transfer per step, no gather op to dispatch.
        order = rng.permutation(len(train_set.y))[: n_batches * BATCH]
        losses = []
        epoch_start = time.perf_counter()
        for idx in order.reshape(n_batches, BATCH):
            params, opt_state, loss = step(
                params, opt_state, train_set.x[idx], train_set.y[idx]
            )
            losses.append(loss)
        jax.block_until_ready((params, opt_state))
        epoch_step_s.append((time.perf_counter() - epoch_start) / n_batches)
        val_loss, val_acc = evaluate(model, params, data["val"])
        history["train_loss"].append(float(np.mean(jax.device_get(losses))))
        history["val_loss"].append(val_loss)
        history["val_acc"].append(val_acc)
        stopped_epoch = epoch
        stopper = stopper.update(val_loss)
        if stopper.has_improved:  # JAX arrays are immutable: no copy needed
            best_epoch, best_params = epoch, params
        bar.set_postfix(val_loss=f"{val_loss:.4f}", best=best_epoch)
        if stopper.should_stop:
            break
    bar.close()
    test_loss, test_acc = evaluate(model, best_params, data["test"])
    n_params = sum(x.size for x in jax.tree.leaves(init_params))
    return {
        "name": name,
        "history": history,
        "best_epoch": best_epoch,
        "stopped_epoch": stopped_epoch,
        "early_stopped": bool(stopper.should_stop),
        "best_params": best_params,
        "last_params": params,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "bytes_per_param": adamx.state_nbytes(opt_state) / n_params,
        "compile_s": compile_s,
        "step_ms": 1e3 * float(np.median(epoch_step_s)),
        "steps": n_batches * stopped_epoch,
        "seconds": time.perf_counter() - started,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'optimizer':18s} {'best ep':>7s} {'stopped':>7s} {'test acc':>8s} "
        f"{'test loss':>9s} {'state B/param':>13s} {'compile s':>9s} "
        f"{'ms/step':>7s}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        stopped = f"{r['stopped_epoch']}" + ("" if r["early_stopped"] else "*")
        lines.append(
            f"{r['name']:18s} {r['best_epoch']:7d} {stopped:>7s} "
            f"{r['test_acc']:8.4f} {r['test_loss']:9.4f} "
            f"{r['bytes_per_param']:13.3f} {r['compile_s']:9.2f} "
            f"{r['step_ms']:7.3f}"
        )
    lines.append(
        "(* = reached the epoch cap without early stopping; test numbers are for "
        "the best epoch's parameters; compile s is each step's first call, "
        "ms/step the median compiled step, evaluation excluded)"
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


def plot(rows: list[dict[str, Any]], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, r in enumerate(rows):
        h = r["history"]
        epochs = np.arange(1, len(h["val_loss"]) + 1)
        style = {
            "color": f"C{i}",
            "lw": 1.3,
            "ls": "--" if "optax" in r["name"] else "-",
        }
        left.plot(epochs, h["val_loss"], label=r["name"], **style)
        right.plot(epochs, h["val_acc"], label=r["name"], **style)
        best = r["best_epoch"] - 1
        left.plot(epochs[best], h["val_loss"][best], "o", color=f"C{i}", ms=4)
        right.plot(epochs[best], h["val_acc"][best], "o", color=f"C{i}", ms=4)
    left.set(xlabel="epoch", ylabel="validation loss", yscale="log")
    right.set(xlabel="epoch", ylabel="validation accuracy")
    right.set_ylim(top=1.0)
    left.legend(fontsize=8)
    fig.suptitle(
        "Flax MLP 64-128-10 on sklearn digits: validation curves "
        "(dot: best epoch, whose parameters are kept)"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="cap, default 60")
    parser.add_argument(
        "--patience", type=int, default=None, help="epochs without progress, default 5"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("outputs/train_digits.png")
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (also off when stdout is not a terminal)",
    )
    args = parser.parse_args(argv)
    epochs = args.epochs or (8 if args.quick else 60)
    patience = args.patience or (2 if args.quick else 5)
    progress = not args.no_progress and sys.stdout.isatty()

    started = time.perf_counter()
    print(f"Machine: {machine()}")
    data = load_splits(args.seed)
    model = MLP()
    init_params = model.init(jax.random.key(args.seed), data["train"].x[:1])["params"]
    n_params = sum(x.size for x in jax.tree.leaves(init_params))
    sizes = "/".join(str(len(s.y)) for s in data.values())
    print(
        f"MLP 64-128-10 ({n_params} parameters), train/val/test {sizes}, batch "
        f"{BATCH}, at most {epochs} epochs, patience {patience}, seed {args.seed}"
    )
    print(
        "int8 moments apply to leaves of at least 4096 values: here the 64×128 "
        "kernel (8192); the other leaves stay float32"
    )
    rows = [
        train(
            name,
            make(),
            model,
            init_params,
            data,
            epochs,
            patience,
            args.seed,
            progress,
        )
        for name, make in OPTIMIZERS.items()
    ]
    print()
    print(format_table(rows), flush=True)
    plot(rows, args.out)
    print(f"\nValidation curves: {args.out}")
    total = time.perf_counter() - started
    print(f"Total time {total:.1f} s")
    return {"rows": rows, "model": model, "data": data, "patience": patience}


if __name__ == "__main__":
    main(sys.argv[1:])
