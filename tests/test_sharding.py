"""adamx state on a 2 x 4 mesh: moments sharded like their parameters, no collective.

The checks need eight devices, which jax creates only if XLA_FLAGS asks for
them before it starts; this process started jax with one. So
``tests/sharding_check.py`` runs them in a child process and prints a JSON
summary, which the tests below read, one test per transform and kind of mesh
axes.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import sharding_check

SCRIPT = pathlib.Path(__file__).resolve().parent / "sharding_check.py"
TIMEOUT_S = 300

AXES = ("Explicit", "Auto")
# transform: (stored in 8 bits, collectives its update may hold)
VARIANTS = {
    "adam_fp32": (False, ()),
    "adam_bf16": (False, ()),
    "adam_int8": (True, ()),
    "amsgrad_int8": (True, ()),
    "adamw_int8": (True, ()),
    "lamb_fp32": (False, ("all-reduce",)),  # the trust ratio's norms
    "adopt_fp32": (False, ()),
    "ademamix_int8": (True, ()),
}
CASES = [(axes, name) for axes in AXES for name in VARIANTS]
IDS = [f"{axes}-{name}" for axes, name in CASES]


@pytest.fixture(scope="module")
def run():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        check=False,
    )
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"no JSON summary (exit {proc.returncode}); stderr:\n{proc.stderr[-4000:]}"
        )
    return proc, summary


@pytest.fixture(scope="module")
def results(run):
    _, summary = run
    return {(r["axes"], r["transform"]): r for r in summary["results"]}


def test_script_exits_zero_with_every_check_passed(run):
    proc, summary = run
    assert summary["devices"] == 8
    assert summary["failures"] == [], "\n".join(summary["failures"])
    assert summary["ok"] is True
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_summary_covers_every_transform_and_mesh(results):
    assert sorted(results) == sorted(CASES)
    assert len(results) == len(AXES) * len(VARIANTS) == 16


@pytest.mark.parametrize(("axes", "name"), CASES, ids=IDS)
def test_init_state_sharded_like_params(results, axes, name):
    result = results[axes, name]
    assert result["failures"]["init"] == []
    report = result["init"]
    assert report and all(leaf["ok"] for leaf in report.values()), report
    # Not vacuous: sharded moments were checked, 8-bit ones where they should be.
    sharded = [p for p, leaf in report.items() if leaf["expected"] != "P()"]
    assert sharded
    quantized, _ = VARIANTS[name]
    assert any(p.endswith(".scales") for p in sharded) == quantized
    assert any(p.endswith(".codes") for p in sharded) == quantized


@pytest.mark.parametrize(("axes", "name"), CASES, ids=IDS)
def test_update_compiles_no_unexpected_collective(results, axes, name):
    result = results[axes, name]
    assert result["failures"]["compile"] == []
    counts = result["collectives"]
    assert set(counts) == set(sharding_check.COLLECTIVES)
    _, allowed = VARIANTS[name]
    assert {op: n for op, n in counts.items() if n and op not in allowed} == {}
    assert result["unexpected_collectives"] == {}
    for op in allowed:
        # The scan finds the collective that the sharded norms cannot avoid.
        assert counts[op] > 0


@pytest.mark.parametrize(("axes", "name"), CASES, ids=IDS)
def test_update_keeps_shardings_and_values(results, axes, name):
    result = results[axes, name]
    assert result["failures"]["compile"] == []
    # Includes the comparison with the same update computed on one device.
    assert result["failures"]["step"] == []
    for what in ("update_state", "updates"):
        report = result[what]
        assert report and all(leaf["ok"] for leaf in report.values()), report
    assert result["warnings"] == []


@pytest.mark.parametrize(
    ("hlo", "expected"),
    [
        ("%all-reduce.3 = f32[] all-reduce(f32[] %x), replica_groups={}", 1),
        ("%ag = (f32[4], f32[8]) all-gather-start(f32[4] %x), dimensions={0}", 1),
        ("%cp = f32[4] collective-permute(f32[4] %x), source_target_pairs={}", 1),
        ("%a = f32[4] all-to-all(%x)\n%r = f32[2] reduce-scatter(%y)", 2),
        ('%add = f32[] add(%x, %y), metadata={op_name="all-reduce"}', 0),
        ("%all-gather-done.1 = f32[8] all-gather-done(%ag)", 0),
    ],
)
def test_collective_scan_counts_opcodes(hlo, expected):
    assert sum(sharding_check.count_collectives(hlo).values()) == expected
