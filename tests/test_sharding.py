"""adamx state on a 2 x 4 mesh: moments sharded like their parameters, no collective.

The checks need eight devices, which jax creates only if XLA_FLAGS asks for
them before it starts; this process started jax with one. So
``tests/sharding_check.py`` runs them in a child process and prints a JSON
summary, which the tests below read, one test per transform and kind of mesh
axes: the state's shardings, ``adamx.sharding.state_shardings`` against them,
and ZeRO stage 1 (state split over "data"). The tests at the end check
``state_shardings``' arguments on this process's one device.
"""

import json
import pathlib
import sys

import background
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sharding_check
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx.sharding import abstract_state, state_shardings

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
    "adam_int4": (True, ()),
    "adam_bf16_rounded": (False, ()),
    # adamx.low_precision_params on bfloat16 parameters: no collectives either
    "lowp_kahan_int8": (True, ()),
    "lowp_stochastic": (False, ()),
}
CASES = [(axes, name) for axes in AXES for name in VARIANTS]
IDS = [f"{axes}-{name}" for axes, name in CASES]
OPTAX_CASES = [(axes, name) for axes in AXES for name in ("optax_adam", "optax_chain")]
# (transform, parameters' layout): collectives its ZeRO update may hold.
ZERO = {
    ("adam_fp32", "replicated"): ("all-gather",),
    ("adam_int8", "replicated"): ("all-gather",),
    ("lamb_fp32", "replicated"): ("all-gather", "all-reduce"),
    ("adam_int8", "sharded"): ("all-gather",),
}


# The script runs in a background job (background.py), started as soon as
# a selected test uses the `run` fixture, beside the rest of the suite.
SCRIPT_JOB = background.Job(
    "sharding_check",
    lambda env: background.Command(
        [sys.executable, str(SCRIPT)],
        TIMEOUT_S,
        env=dict(env, JAX_PLATFORMS="cpu"),
    ),
    background.in_module(__name__, "run"),
)


@pytest.fixture(scope="module")
def run():
    proc = SCRIPT_JOB.result()
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


@pytest.mark.slow
def test_script_exits_zero_with_every_check_passed(run):
    proc, summary = run
    assert summary["devices"] == 8
    assert summary["failures"] == [], "\n".join(summary["failures"])
    assert summary["ok"] is True
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def zero(run):
    _, summary = run
    return {(r["transform"], r["axes"].split()[-1]): r for r in summary["zero"]}


@pytest.mark.slow
def test_summary_covers_every_transform_and_mesh(run, results, zero):
    _, summary = run
    assert sorted(results) == sorted(CASES)
    assert len(results) == len(AXES) * len(VARIANTS) == 24
    optax_cases = [(r["axes"], r["transform"]) for r in summary["optax"]]
    assert sorted(optax_cases) == sorted(OPTAX_CASES)
    assert sorted(zero) == sorted(ZERO)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize(("axes", "name"), CASES, ids=IDS)
def test_state_shardings_name_the_init_states_shardings(results, axes, name):
    result = results[axes, name]
    # From arrays and from abstract parameters, and as out_shardings of init.
    assert result["failures"]["helper"] == []
    assert result["helper_leaves"] == len(result["init"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("axes", "name"), OPTAX_CASES, ids=[f"{a}-{n}" for a, n in OPTAX_CASES]
)
def test_state_shardings_of_optax_chains(run, axes, name):
    _, summary = run
    (result,) = [
        r for r in summary["optax"] if (r["axes"], r["transform"]) == (axes, name)
    ]
    assert result["failures"] == []
    report = result["init"]
    assert report and all(leaf["ok"] for leaf in report.values()), report
    assert any(leaf["expected"] != "P()" for leaf in report.values())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "layout"), ZERO, ids=[f"{name}-{layout}" for name, layout in ZERO]
)
def test_zero_state_split_over_data(zero, name, layout):
    result = zero[name, layout]
    # Specs, per-device bytes, and values against one device's update.
    assert result["failures"] == []
    state_bytes = result["state_bytes"]
    per_device = state_bytes["per_device"]
    assert len(per_device) == 8
    assert set(per_device) == {state_bytes["per_device_expected"]}
    # Splitting over "data" (size 2) saves memory: about half where the
    # parameters are replicated; less where "w" is split over "data" already.
    without_zero = state_bytes["per_device_without_zero"]
    assert per_device[0] < (0.51 if layout == "replicated" else 0.9) * without_zero
    counts = result["collectives"]
    assert counts["all-gather"] > 0  # the updates come back whole
    allowed = ZERO[name, layout]
    assert {op: n for op, n in counts.items() if n and op not in allowed} == {}


@pytest.mark.slow
def test_checkpoint_restores_onto_abstract_state(run):
    _, summary = run
    result = summary["restore"]
    assert result["failures"] == []
    assert result["warnings"] == []
    # The ZeRO target adds "data" to the split of "b"'s codes on restore.
    assert result["b codes, zero_axis=None"] == "P('model',)"
    assert result["b codes, zero_axis=data"] == "P(('model', 'data'),)"


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


def _entries(sharding) -> tuple:
    """A NamedSharding's spec without trailing Nones: P("a", None) is P("a")."""
    entries = tuple(sharding.spec)
    while entries and entries[-1] is None:
        entries = entries[:-1]
    return entries


def _one_device_params():
    mesh = jax.make_mesh((1,), ("data",))
    sharding = NamedSharding(mesh, P(None, "data"))
    params = {
        "w": jax.device_put(np.ones((4, 1024), np.float32), sharding),
        "b": jax.device_put(np.ones((3,), np.float32), NamedSharding(mesh, P())),
    }
    return mesh, params


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: adamx.adam(1e-3, mu_dtype="int8"),
        lambda: adamx.amsgrad(1e-3, mu_dtype=jnp.bfloat16),
        lambda: optax.chain(
            optax.clip(1.0), adamx.lamb(optax.linear_schedule(1, 0, 9))
        ),
        lambda: optax.adam(1e-3),
    ],
    ids=["adam_int8", "amsgrad_bf16", "optax_chain_lamb", "optax_adam"],
)
def test_abstract_state_matches_eval_shape(make_tx):
    mesh, params = _one_device_params()
    tx = make_tx()
    target = abstract_state(tx, params)
    expected = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(target) == jax.tree.structure(expected)
    for got, want in zip(
        jax.tree.leaves(target), jax.tree.leaves(expected), strict=True
    ):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
        assert isinstance(got.sharding, NamedSharding) and got.sharding.mesh == mesh
    shardings = state_shardings(tx, params)
    assert jax.tree.leaves(shardings) == [t.sharding for t in jax.tree.leaves(target)]


def test_param_shardings_override_and_broadcast():
    mesh, params = _one_device_params()
    tx = adamx.adam(1e-3)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    one = NamedSharding(mesh, P("data"))
    shardings = state_shardings(tx, abstract, one)
    assert _entries(shardings[0].mu["w"]) == ("data",)
    assert _entries(shardings[0].count) == ()
    per_leaf = state_shardings(tx, abstract, {"w": one, "b": NamedSharding(mesh, P())})
    assert _entries(per_leaf[0].nu["w"]) == ("data",)
    assert _entries(per_leaf[0].nu["b"]) == ()


def test_zero_axis_splits_first_divisible_axis():
    _, params = _one_device_params()
    shardings = state_shardings(
        adamx.adam(1e-3, nu_dtype="int8"), params, zero_axis="data"
    )
    # "w" is split over "data" already; "b" takes it on its only axis.
    assert _entries(shardings[0].nu["w"].codes) == (None, "data")
    assert _entries(shardings[0].nu["w"].scales) == (None, "data")
    assert _entries(shardings[0].mu["b"]) == ("data",)
    assert _entries(shardings[0].count) == ()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"zero_axis": "model"}, ValueError, r"zero_axis='model'.*not 'model'"),
        ({"param_shardings": P("data")}, TypeError, "PartitionSpec"),
        ({"param_shardings": "data"}, TypeError, "not a jax.sharding.Sharding"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    _, params = _one_device_params()
    with pytest.raises(error, match=match):
        state_shardings(adamx.adam(1e-3), params, **kwargs)


def test_zero_axis_needs_a_mesh():
    params = {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32)}
    with pytest.raises(ValueError, match="no mesh"):
        state_shardings(adamx.adam(1e-3), params, zero_axis="data")
