"""examples/benchmark.py measures every case and optimizer, and its step is adamx's.

The benchmark runs once, in-process, at its --quick sizes with two timed
steps; the tests read its JSON, its printed table and its PNG. No timing is
asserted: only that every number exists, is positive and finite, and that the
bytes it counts per step are those counted here by hand. The jitted, donated
step it times is checked against plain ``tx.update`` + ``optax.apply_updates``.
"""

import contextlib
import importlib.util
import io
import json
import math
import os
import re
import runpy
import statistics
import struct

import checkout
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# Runs examples/benchmark.py: not in the quick subset (conftest.py).
pytestmark = pytest.mark.slow

HAS_TORCH = importlib.util.find_spec("torch") is not None

CASES = ("single", "single_10m", "many", "transformer")
# single_10m is printed under the size it has at --quick.
LABELS = {"single": "single", "single_10m": "single_4.1k", "many": "many"}
LABELS["transformer"] = "transformer"
# The benchmark's OPTIMIZERS, in order (test_benchmark_lists_the_optimizers).
JAX_NAMES = [
    "adamx.adam",
    "adamx.adamw",
    "adamx.amsgrad",
    "adamx.adam-bf16",
    "adamx.adam-int8",
    "optax.adam",
]
TORCH_NAMES = ["torch.adam-fused", "torch.adam-foreach"]

# The --quick sizes, by hand: 8192 values in the single leaf (so the 8-bit
# moments are quantized: 32 blocks of 256), 4096 in single_10m and in 8 leaves
# of 512, and a 1-layer transformer with d=16 and a 128-word vocabulary:
# 4 (16×16) kernels + 4 biases of 16, (16×64) and (64×16) kernels, biases of
# 64 and 16, 2 norms of 2×16; an embedding of 128×16 and a final norm of 2×16.
N_SINGLE = 8192
QUICK_PARAMS = {
    "single": (N_SINGLE, 1),
    "single_10m": (4096, 1),
    "many": (8 * 512, 8),
    "transformer": (4 * 256 + 4 * 16 + 2 * 1024 + 64 + 16 + 2 * 32 + 128 * 16 + 32, 19),
}
# Bytes one step moves on the single case: params read and written (8n),
# gradients read (4n), every state array read and written, and the int32 step
# count (4 bytes) read and written where the state has one.
N, COUNT = N_SINGLE, 8
INT8_MOMENT = N + N // 128  # a byte a code + an int8 exponent per block of 128
BYTES_PER_STEP = {
    "adamx.adam": 12 * N + 2 * (4 * N + 4 * N) + COUNT,
    "adamx.adamw": 12 * N + 2 * (4 * N + 4 * N) + COUNT,
    "adamx.amsgrad": 12 * N + 2 * (4 * N + 4 * N + 4 * N) + COUNT,
    "adamx.adam-bf16": 12 * N + 2 * (2 * N + 2 * N) + COUNT,
    "adamx.adam-int8": 12 * N + 2 * 2 * INT8_MOMENT + COUNT,
    "optax.adam": 12 * N + 2 * (4 * N + 4 * N) + COUNT,
    # exp_avg and exp_avg_sq, and a float32 step tensor.
    "torch.adam-fused": 12 * N + 2 * (4 * N + 4 * N + 4),
    "torch.adam-foreach": 12 * N + 2 * (4 * N + 4 * N + 4),
}


QUICK_ARGS = ("--quick", "--repeats", "1", "--ceiling-repeats", "1")


def expected_names():
    return JAX_NAMES + (TORCH_NAMES if HAS_TORCH else [])


@pytest.fixture(scope="module")
def bench():
    """examples/benchmark.py's namespace, loaded once (not at import)."""
    return runpy.run_path(
        str(checkout.require("examples/benchmark.py")), run_name="bench"
    )


@pytest.fixture(scope="module")
def run(bench, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("benchmark")
    numbers, png = tmp / "out" / "numbers.json", tmp / "out" / "chart.png"
    cache_before = jax.config.jax_enable_compilation_cache
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        returned = bench["main"](
            [*QUICK_ARGS, "--repeats", "2", "--json", str(numbers), "--png", str(png)]
        )
    assert jax.config.jax_enable_compilation_cache == cache_before
    return {
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "returned": returned,
        "json": json.loads(numbers.read_text()),
        "png": png,
    }


def rows_by_key(result):
    return {(r["case"], r["optimizer"]): r for r in result["rows"]}


def test_benchmark_lists_the_optimizers(bench):
    assert [name for name, _ in bench["OPTIMIZERS"]] == JAX_NAMES
    assert [name for name, _ in bench["TORCH_OPTIMIZERS"]] == TORCH_NAMES


def test_every_case_and_optimizer_has_one_row(run):
    keys = [(r["case"], r["optimizer"]) for r in run["json"]["rows"]]
    assert keys == [(case, name) for case in CASES for name in expected_names()]
    assert run["json"]["rows"] == run["returned"]["rows"]


def test_torch_rows_iff_torch_importable(run):
    torch_rows = [r for r in run["json"]["rows"] if r["framework"] == "torch"]
    assert bool(torch_rows) == HAS_TORCH
    assert (run["json"]["machine"]["torch"] is not None) == HAS_TORCH
    if HAS_TORCH:
        assert run["json"]["machine"]["torch_threads"] == len(os.sched_getaffinity(0))


def _positive_finite(value):
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def test_numbers_are_positive_and_finite(run):
    always = [
        "n_params",
        "n_leaves",
        "state_bytes",
        "bytes_per_step",
        "first_step_ms",
        "step_ms",
        "step_ms_min",
        "gb_s",
        "fraction_of_ceiling",
        "step_vs_optax",
    ]
    compile_fields = ["lower_s", "xla_compile_s", "compile_s", "compile_vs_optax"]
    for row in run["json"]["rows"]:
        where = (row["case"], row["optimizer"])
        for field in always:
            assert _positive_finite(row[field]), (where, field, row[field])
        assert row["repeats"] == 2  # quick cases are far below --large-repeats' size
        assert len(row["times_s"]) == 3 + 2  # warm-up steps, then --repeats
        assert all(_positive_finite(t) for t in row["times_s"]), where
        for field in compile_fields:
            if row["framework"] == "jax":
                assert _positive_finite(row[field]), (where, field, row[field])
            else:
                assert row[field] is None, (where, field)
        if row["case"] == "many":
            assert _positive_finite(row["many_vs_single_10m"]), where
        else:
            assert row["many_vs_single_10m"] is None, where
    for case in CASES:
        ceiling = run["json"]["ceilings"][case]
        for field in ("triad_gb_s", "adam_shaped_gb_s", "ceiling_gb_s"):
            assert _positive_finite(ceiling[field]), (case, field)
        assert ceiling["ceiling_gb_s"] == max(
            ceiling["triad_gb_s"], ceiling["adam_shaped_gb_s"]
        )
    assert _positive_finite(run["json"]["wall_s"])


@pytest.mark.parametrize("case", CASES)
def test_case_sizes(run, case):
    n_params, n_leaves = QUICK_PARAMS[case]
    for row in run["json"]["rows"]:
        if row["case"] == case:
            assert (row["n_params"], row["n_leaves"]) == (n_params, n_leaves)
    assert run["json"]["ceilings"][case]["n"] == n_params


@pytest.mark.parametrize("name", list(BYTES_PER_STEP))
def test_bytes_per_step_counted_by_hand(run, name):
    if name.startswith("torch") and not HAS_TORCH:
        assert name not in {r["optimizer"] for r in run["json"]["rows"]}
        return
    row = rows_by_key(run["json"])[("single", name)]
    assert row["bytes_per_step"] == BYTES_PER_STEP[name]
    assert row["state_bytes"] == (BYTES_PER_STEP[name] - 12 * N) // 2


def test_ratios_are_taken_against_optax_and_single_10m(run):
    rows = rows_by_key(run["json"])
    for (case, name), row in rows.items():
        base = rows[(case, "optax.adam")]
        assert row["step_vs_optax"] == pytest.approx(row["step_ms"] / base["step_ms"])
        if row["compile_s"] is not None:
            assert row["compile_vs_optax"] == pytest.approx(
                row["compile_s"] / base["compile_s"]
            )
        if case == "many":
            single = rows[("single_10m", name)]
            assert row["many_vs_single_10m"] == pytest.approx(
                row["step_ms"] / single["step_ms"]
            )
        seconds = row["step_ms"] / 1e3
        assert row["gb_s"] == pytest.approx(row["bytes_per_step"] / seconds / 1e9)
        ceiling = run["json"]["ceilings"][case]["ceiling_gb_s"]
        assert row["fraction_of_ceiling"] == pytest.approx(row["gb_s"] / ceiling)


def test_machine_is_described(run):
    machine = run["json"]["machine"]
    assert machine["cores"] == os.cpu_count()
    assert machine["jax"] == jax.__version__
    assert machine["optax"] == optax.__version__
    assert machine["jax_devices"] == [d.device_kind for d in jax.devices()]
    assert machine["cpu"]
    assert machine["load_average"] >= 0 and run["json"]["load_average_at_end"] >= 0
    assert _positive_finite(run["json"]["peak_rss_gib"])
    assert run["json"]["settings"]["persistent_compilation_cache"] is False


def table_rows(run):
    """The printed step table's rows, split into stripped cells."""
    lines = run["stdout"].splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("| case |")]
    assert len(header) == 1
    table = lines[header[0] + 2 : header[0] + 2 + len(run["json"]["rows"])]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in table]


def test_table_is_printed_under_the_machine_line(run):
    lines = run["stdout"].splitlines()
    assert lines[0].startswith("Machine: ")
    assert f"jax {jax.__version__}" in lines[0]
    printed = [tuple(cells[:2]) for cells in table_rows(run)]
    assert printed == [
        (LABELS[case], name) for case in CASES for name in expected_names()
    ]
    for name in expected_names():
        assert any(line.startswith(f"| {name} |") for line in lines), name
    assert "| optimizer | many ms | single_4.1k ms | many ÷ single_4.1k |" in lines


def test_cases_are_labelled_by_their_size(run, bench):
    assert {r["case"]: r["label"] for r in run["json"]["rows"]} == LABELS
    assert "single_10m" not in run["stdout"] + run["stderr"]
    assert {cells[2] for cells in table_rows(run)} == {"8.19k", "4.1k", "5.36k"}
    full = bench["FULL"]
    assert bench["case_label"]("single_10m", full.single_10m) == "single_10m"
    assert bench["count"](full.single) == "100M"


def test_progress_is_words_not_dicts(run):
    progress = run["stderr"].splitlines()
    assert progress[0].startswith("single: 8,192 params in 1 leaf; memory ceiling ")
    assert not any("{" in line for line in progress), progress
    assert any(line.startswith("  torch.adam-fused: step ") for line in progress) == (
        HAS_TORCH
    )


def test_chart_is_a_png(run):
    data = run["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 500 and height > 300


def test_only_and_cases_select_rows(bench, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = bench["main"](
            [
                *QUICK_ARGS,
                *("--only", "adamx.adam,optax.adam", "--cases", "single"),
                *("--json", str(tmp_path / "b.json"), "--png", str(tmp_path / "b.png")),
            ]
        )
    rows = [(r["case"], r["optimizer"]) for r in result["rows"]]
    assert rows == [("single", "adamx.adam"), ("single", "optax.adam")]
    assert list(result["ceilings"]) == ["single"]


@pytest.mark.parametrize(
    "argv",
    [["--only", "adamx.nothing"], ["--cases", "huge"], ["--repeats", "0"]],
    ids=["only", "cases", "repeats"],
)
def test_bad_selections_are_refused(bench, argv, capsys):
    with pytest.raises(SystemExit) as err:
        bench["main"](["--quick", *argv])
    assert err.value.code == 2
    assert "error" in capsys.readouterr().err


def test_default_transformer_has_the_stated_shape(bench):
    spec = bench["case_spec"]("transformer", bench["FULL"])
    leaves = jax.tree.leaves(spec)
    d, vocab, layers = 512, 32_000, 24
    per_layer = 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d
    assert (
        sum(math.prod(x.shape) for x in leaves)
        == layers * per_layer + vocab * d + 2 * d
    )
    assert layers * per_layer + vocab * d + 2 * d == 92_042_240
    assert len(leaves) == layers * 16 + 3
    layer_shapes = sorted(x.shape for x in jax.tree.leaves(spec["layers"][0]))
    assert layer_shapes == sorted(
        [(d, d)] * 4
        + [(d,)] * 4
        + [(d, 4 * d), (4 * d,), (4 * d, d), (d,)]
        + [(d,)] * 4
    )
    assert spec["embedding"].shape == (vocab, d)
    assert all(x.dtype == jnp.float32 for x in leaves)


def _step_inputs():
    """Params with a leaf of 8192 values (quantized by the 8-bit storage) and a
    16×32 kernel (too small, kept float32), and three gradients, at the
    benchmark's scales: params 0.02, gradients 1e-3."""
    rng = np.random.default_rng(7)
    shapes = {"w": (8192,), "kernel": (16, 32)}

    def draw(scale):
        return {
            k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32)
            for k, s in shapes.items()
        }

    return draw(0.02), [draw(1e-3) for _ in range(3)]


@pytest.mark.parametrize("name", JAX_NAMES)
def test_jitted_donated_step_matches_plain_update(bench, name):
    tx = dict(bench["OPTIMIZERS"])[name]()
    params, grads = _step_inputs()
    # Two plain steps first, so that the compared step starts from moments
    # and a count that are not zero.
    state = tx.init(params)
    for g in grads[:2]:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)

    @jax.jit
    def undonated(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    donated = jax.tree.map(jnp.copy, (params, state))
    new = bench["make_step"](tx)(*donated, grads[2])
    assert all(x.is_deleted() for x in jax.tree.leaves(donated))

    # Donating the buffers changes nothing in the computation: bit for bit.
    jitted = undonated(params, state, grads[2])
    assert jax.tree.structure(new) == jax.tree.structure(jitted)
    for a, e in zip(jax.tree.leaves(new), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(a, e)

    updates, expected_state = tx.update(grads[2], state, params)
    expected = (optax.apply_updates(params, updates), expected_state)
    assert jax.tree.structure(new) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(new), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        if not jnp.issubdtype(e.dtype, jnp.floating):
            # The int32 count and the uint8 codes of 8-bit moments.
            np.testing.assert_array_equal(a, e)
            continue
        # Not bit for bit: under jit XLA's CPU backend contracts the moving
        # average m + (1 - b)(g - m) into a fused multiply-add, which op-by-op
        # execution rounds twice. Each value may differ by that one rounding:
        # rtol 1e-6 (8 float32 ulps) or, for a moment stored in bfloat16, one
        # bfloat16 ulp when the float32 results fall either side of a rounding
        # boundary; and where m cancels to near zero the difference is an ulp
        # of the leaf's scale, hence atol 1e-6 of the leaf's largest value.
        e64, a64 = np.asarray(e, np.float64), np.asarray(a, np.float64)
        rtol = max(1e-6, float(jnp.finfo(e.dtype).eps))
        atol = 1e-6 * float(np.max(np.abs(e64)))
        np.testing.assert_allclose(a64, e64, rtol=rtol, atol=atol)


# The storage comparison: adamx.adam with every storage kind on one leaf of
# the --quick size (16,384 values: 128 blocks of 128), interleaved.
STORAGE_N = 16_384
STORAGE_BYTES = {  # the state's bytes per parameter, counted by hand
    "float32": 8,
    "bf16": 4,
    "bf16 Rounded": 4,
    "int8": 2 * (1 + 1 / 128),
    "int4": 2 * (0.5 + 1 / 128),
}


def test_storage_rows_cover_every_kind_with_bytes_counted_by_hand(run):
    storage = run["json"]["storage"]
    assert [r["storage"] for r in storage] == list(STORAGE_BYTES)
    for row in storage:
        want = STORAGE_BYTES[row["storage"]] + 4 / STORAGE_N  # + the int32 count
        assert row["n_params"] == STORAGE_N
        assert row["state_bytes_per_param"] == pytest.approx(want)
        assert row["temp_bytes_per_param"] >= 0
        assert len(row["times_s"]) == 2 and all(t > 0 for t in row["times_s"])
        assert row["step_ms"] == pytest.approx(1e3 * statistics.median(row["times_s"]))
        base = storage[0]["step_ms"]
        assert row["step_vs_float32"] == pytest.approx(row["step_ms"] / base)


def test_storage_table_is_printed(run):
    for row in run["json"]["storage"]:
        cells = (
            rf"\| {re.escape(row['storage'])} \| {row['step_ms']:.2f} \| "
            rf"{row['step_vs_float32']:.2f} \| {row['temp_bytes_per_param']:.2f} \| "
            rf"{row['state_bytes_per_param']:.3f} \|"
        )
        assert re.search(cells, run["stdout"]), row["storage"]
