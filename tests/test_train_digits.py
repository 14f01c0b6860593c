"""examples/train_digits.py trains each optimizer, stops early, keeps the best epoch.

The example runs once, in-process, with --quick; the tests read its printed
table, its PNG and what main() returns. The early-stopping rule is checked on
hand-made loss sequences, and the training loop's restoring of the best
parameters on a run whose validation loss can only rise.
"""

import contextlib
import io
import itertools
import math
import re
import runpy
import struct
import zlib

import checkout
import jax
import optax
import pytest

# Runs an example: not in the quick subset (conftest.py).
pytestmark = pytest.mark.slow

OPTIMIZERS = (
    "optax.sgd",
    "optax.sgd momentum",
    "optax.rmsprop",
    "optax.adagrad",
    "adamx.adam",
    "adamx.adamw",
    "adamx.amsgrad",
    "adamx.adam int8",
)
# The MLP 64-128-10: two kernels and two biases.
KERNEL_1, REST = 64 * 128, 128 + 128 * 10 + 10
N_PARAMS = KERNEL_1 + REST
# Float32 values of state kept per parameter: sgd none, momentum/rmsprop/adagrad
# one, Adam two, AMSGrad three (m, v, max v); the step counters add a few bytes.
FLOAT32_MOMENTS = {
    "optax.sgd": 0,
    "optax.sgd momentum": 1,
    "optax.rmsprop": 1,
    "optax.adagrad": 1,
    "adamx.adam": 2,
    "adamx.adamw": 2,
    "adamx.amsgrad": 3,
}
COUNTERS = 16


@pytest.fixture(scope="module")
def example():
    path = checkout.require("examples/train_digits.py")
    return runpy.run_path(str(path), run_name="td")


@pytest.fixture(scope="module")
def run(example, tmp_path_factory):
    png = tmp_path_factory.mktemp("train_digits") / "curves" / "digits.png"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = example["main"](["--quick", "--out", str(png), "--no-progress"])
    return {"stdout": out.getvalue(), "png": png, **result}


def rows_by_name(run):
    return {row["name"]: row for row in run["rows"]}


def test_prints_a_row_per_optimizer_and_the_machine(run):
    printed = re.findall(
        r"^(\S+(?: \S+)?)\s+(\d+)\s+(\d+)\*?\s+(\d\.\d{4})\s+(\d+\.\d{4})\s+"
        r"(\d+\.\d{3})\s+(\d+\.\d{2})\s+(\d+\.\d{3})$",
        run["stdout"],
        re.M,
    )
    assert [p[0] for p in printed] == list(OPTIMIZERS)
    assert "Machine: " in run["stdout"] and "CPUs; jax " in run["stdout"]
    # The printed numbers are the returned ones.
    for (_, best, stopped, acc, loss, nbytes, compile_s, step_ms), row in zip(
        printed, run["rows"], strict=True
    ):
        assert int(best) == row["best_epoch"]
        assert int(stopped) == row["stopped_epoch"]
        assert float(acc) == pytest.approx(row["test_acc"], abs=5e-5)
        assert float(loss) == pytest.approx(row["test_loss"], abs=5e-5)
        assert float(nbytes) == pytest.approx(row["bytes_per_param"], abs=5e-4)
        assert float(compile_s) == pytest.approx(row["compile_s"], abs=5e-3)
        assert float(step_ms) == pytest.approx(row["step_ms"], abs=5e-4)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_compile_time_is_kept_out_of_the_step_time(run, example, name):
    # Each step is compiled before the timed steps, so no optimizer's step time
    # carries a compilation: a compiled step of this MLP takes well under a
    # millisecond, a compilation a tenth of a second or more.
    row = rows_by_name(run)[name]
    assert 0 < row["step_ms"] < 1e3 * row["compile_s"] < 1e3 * row["seconds"]
    batches = len(run["data"]["train"].y) // example["BATCH"]
    assert row["steps"] == row["stopped_epoch"] * batches


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking its CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body, crc = data[16:29], struct.unpack(">I", data[29:33])[0]
    assert zlib.crc32(b"IHDR" + body) == crc
    assert data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", body[:8])


def test_writes_one_valid_png(run):
    assert run["png"].exists()
    width, height = png_size(run["png"].read_bytes())
    assert width > height > 300  # two panels side by side
    assert run["png"].stat().st_size > 20_000
    assert list(run["png"].parent.iterdir()) == [run["png"]]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_accuracies_losses_and_epochs_are_sane(run, name):
    row = rows_by_name(run)[name]
    history = row["history"]
    assert 1 <= row["best_epoch"] <= row["stopped_epoch"] <= 8  # --quick: 8 epochs
    assert len(history["val_loss"]) == len(history["val_acc"]) == row["stopped_epoch"]
    for acc in [row["test_acc"], *history["val_acc"]]:
        assert 0.0 <= acc <= 1.0
    assert all(math.isfinite(x) for x in history["val_loss"])
    # Every optimizer learns: cross-entropy well under log(10), that of chance.
    assert row["test_loss"] < 0.5 * math.log(10)


def test_adam_beats_chance_by_far(run):
    rows = rows_by_name(run)
    # Ten balanced classes: chance is about 0.1.
    assert rows["adamx.adam"]["test_acc"] > 0.85
    assert rows["adamx.adam int8"]["test_acc"] > 0.85


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_reported_numbers_are_those_of_the_best_epoch(run, example, name):
    row = rows_by_name(run)[name]
    model, data, evaluate = run["model"], run["data"], example["evaluate"]
    val_losses = row["history"]["val_loss"]
    best = row["best_epoch"]
    # The kept parameters are those that gave the best epoch's validation loss,
    # and the reported test numbers are theirs.
    val_loss, val_acc = evaluate(model, row["best_params"], data["val"])
    assert val_loss == pytest.approx(val_losses[best - 1], rel=1e-5)
    assert val_acc == pytest.approx(row["history"]["val_acc"][best - 1], abs=1e-6)
    test_loss, test_acc = evaluate(model, row["best_params"], data["test"])
    assert (test_loss, test_acc) == pytest.approx((row["test_loss"], row["test_acc"]))
    # The best epoch is the lowest validation loss up to where training stopped.
    assert val_losses[best - 1] == min(val_losses)
    if row["early_stopped"]:
        assert row["stopped_epoch"] - best == run["patience"]
    # The training loop applied the same rule as early_stopping_epochs.
    stopped = row["stopped_epoch"] if row["early_stopped"] else None
    rule = example["early_stopping_epochs"](val_losses, run["patience"])
    assert rule == (best, stopped)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_bytes_per_parameter(run, name):
    nbytes = rows_by_name(run)[name]["bytes_per_param"] * N_PARAMS
    if name in FLOAT32_MOMENTS:
        assert 0 <= nbytes - 4 * FLOAT32_MOMENTS[name] * N_PARAMS <= COUNTERS
    else:
        # m and v of the 64×128 kernel in one byte a value plus a float32 scale
        # per block of at most 256 values (a block never spans two rows of 128);
        # the other leaves stay float32.
        low = 2 * KERNEL_1 + 8 * REST
        high = 2 * KERNEL_1 * (1 + 4 / 128) + 8 * REST + COUNTERS
        assert low < nbytes <= high
        assert nbytes / N_PARAMS < 3.0  # against 8 for float32 Adam


@pytest.mark.parametrize(
    ("losses", "patience", "expected"),
    [
        # Improves at epochs 1, 2, 5; epochs 3-4 are only 2 of patience 3.
        ([1.0, 0.9, 0.95, 0.91, 0.8, 0.85, 0.85, 0.81, 0.9], 3, (5, 8)),
        # Patience 2: stops at the second epoch in a row without progress.
        ([1.0, 0.9, 0.95, 0.91, 0.8, 0.85, 0.85, 0.81, 0.9], 2, (2, 4)),
        # Patience 1: the first epoch without progress stops training.
        ([2.0, 1.0, 0.5, 0.6, 0.1], 1, (3, 4)),
        # Any fall, however small, is progress; an equal loss is not.
        ([1.0, 0.999999, 0.9999985, 0.9999985], 1, (3, 4)),
        # Never stalls: no stop, the last epoch is the best.
        ([3.0, 2.0, 1.0, 0.5], 1, (4, None)),
        # A rise then a plateau: the first epoch stays the best.
        ([0.5, 0.7, 0.5, 0.5, 0.4], 3, (1, 4)),
    ],
)
def test_early_stopping_rule(example, losses, patience, expected):
    assert example["early_stopping_epochs"](losses, patience) == expected


def test_early_stopping_rejects_zero_patience(example):
    with pytest.raises(ValueError, match="patience"):
        example["early_stopping_epochs"]([1.0], 0)


def test_training_keeps_the_best_epoch_when_loss_rises(run, example):
    # Gradient ascent (a negative learning rate) makes the validation loss rise
    # every epoch: epoch 1 is the best, training stops at 1 + patience, and the
    # parameters kept are epoch 1's, not the last ones.
    model, data, evaluate = run["model"], run["data"], example["evaluate"]
    init = model.init(jax.random.key(1), data["train"].x[:1])["params"]
    row = example["train"](
        "ascent", optax.sgd(-0.05), model, init, data, 10, 2, 0, False
    )
    val_losses = row["history"]["val_loss"]
    assert all(a < b for a, b in itertools.pairwise(val_losses))
    assert (row["best_epoch"], row["stopped_epoch"]) == (1, 3)
    assert row["early_stopped"]
    best_loss, _ = evaluate(model, row["best_params"], data["val"])
    last_loss, _ = evaluate(model, row["last_params"], data["val"])
    assert best_loss == pytest.approx(val_losses[0], rel=1e-5)
    assert last_loss == pytest.approx(val_losses[2], rel=1e-5)
    assert best_loss < last_loss
    test_best, _ = evaluate(model, row["best_params"], data["test"])
    test_last, _ = evaluate(model, row["last_params"], data["test"])
    assert row["test_loss"] == pytest.approx(test_best) and test_best < test_last
