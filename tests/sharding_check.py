"""adamx optimizer state on a 2 x 4 mesh of simulated CPU devices.

Run as a script (``python tests/sharding_check.py``): it must set XLA_FLAGS
before jax starts, so it cannot run inside a process that already started jax
with one device. For every transform of ``TRANSFORMS`` and both kinds of mesh
axes (``Explicit``, where shardings are part of the types, and ``Auto``,
where the compiler propagates them), it checks that

1. ``jax.jit(tx.init)(params)`` gives every moment the sharding of its
   parameter: a plain moment and the ``codes`` of an 8-bit moment the
   parameter's spec, and an 8-bit moment's ``scales`` (shaped
   ``(*shape[:-1], blocks)``) the same spec, so the blocks axis is split over
   the mesh axis that splits the parameter's last axis;
2. the compiled ``jax.jit(tx.update)`` (state donated) holds no collective
   (all-gather, all-reduce, all-to-all, collective-permute, reduce-scatter),
   except the all-reduce that LAMB's per-leaf norms need;
3. one update leaves every moment, and every update, sharded like its
   parameter, and matches the same update computed on one device;
4. ``adamx.sharding.state_shardings(tx, params)`` names the shardings that
   ``jax.jit(tx.init)`` gives, and the same from abstract parameters
   (``jax.ShapeDtypeStruct`` and ``param_shardings``, as when restoring a
   checkpoint); ``jax.jit(tx.init, out_shardings=...)`` with them builds the
   same state, sharded so.

``state_shardings`` of two optax chains (``OPTAX_CHAINS``) must also shard
each moment like its parameter. Then, for ``ZERO_CASES`` with ``Auto`` axes,
ZeRO stage 1: the state split over "data" as well, by ``state_shardings(...,
zero_axis="data")`` given as ``in_shardings``/``out_shardings``, with the
parameters and gradients replicated (plain data parallelism) or sharded as in
``PARAMS``. Each state leaf must have the spec of ``expected_zero_spec``, each
device hold the bytes that spec implies, the update match one device's, and
the compiled update may only all-gather (the updates, which keep the
parameters' sharding), plus LAMB's all-reduce. Last, an 8-bit state saved with
orbax must restore onto ``adamx.sharding.abstract_state`` targets, with and
without ``zero_axis``, with their shardings and the saved values.

It prints one JSON summary on stdout and exits 1 when any check fails.
"""

import os

if __name__ == "__main__":
    # Must precede the first import of jax; importing this module (as pytest's
    # doctest collection does) leaves the environment alone.
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = " ".join(
        flag
        for flag in (
            os.environ.get("XLA_FLAGS", ""),
            "--xla_force_host_platform_device_count=8",
        )
        if flag
    )

import json
import pathlib
import re
import sys
import tempfile
import time
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx.sharding import abstract_state, state_shardings

MESH_SHAPE = (2, 4)
MESH_AXES = ("data", "model")

# name: (shape, spec). Where the last axis is sharded, each shard's length is
# a multiple of the default block size (128), so whole blocks stay in a shard.
# "w", "e" and "b" are large enough to be stored in 8 or 4 bits; "c" and "r"
# stay float32 under "int8" (fewer than Quantized().min_size values).
PARAMS = {
    "w": ((8, 2048), P("data", "model")),  # shard (4, 512): 2 blocks a row
    "e": ((64, 256), P("model", None)),  # shard (16, 256): 2 blocks a row
    "b": ((4096,), P("model")),  # shard 1024: 4 blocks
    "c": ((512,), P("model")),
    "r": ((8, 8), P()),
}
QUANTIZED_PARAMS = ("w", "e", "b")

TRANSFORMS = {
    "adam_fp32": lambda: adamx.adam(1e-3),
    "adam_bf16": lambda: adamx.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    "adam_int8": lambda: adamx.adam(1e-3, mu_dtype="int8", nu_dtype="int8"),
    "amsgrad_int8": lambda: adamx.amsgrad(1e-3, mu_dtype="int8", nu_dtype="int8"),
    "adamw_int8": lambda: adamx.adamw(
        1e-3, weight_decay=1e-2, mu_dtype="int8", nu_dtype="int8"
    ),
    "lamb_fp32": lambda: adamx.lamb(1e-3, weight_decay=1e-2),
    "adopt_fp32": lambda: adamx.adopt(1e-3),
    "ademamix_int8": lambda: adamx.ademamix(1e-3, mu_dtype="int8", nu_dtype="int8"),
    "adam_int4": lambda: adamx.adam(1e-3, mu_dtype="int4", nu_dtype="int4"),
    "adam_bf16_rounded": lambda: adamx.adam(
        1e-3, mu_dtype=adamx.Rounded(jnp.bfloat16), nu_dtype=adamx.Rounded(jnp.bfloat16)
    ),
    # bfloat16 parameters (BF16_PARAMS): the compensation is sharded like them.
    # (the compensation in one byte: int8 codes, sharded like the parameter)
    "lowp_kahan_int8": lambda: adamx.low_precision_params(
        adamx.adam(1e-3, mu_dtype="int8", nu_dtype="int8"),
        "kahan",
        compensation_dtype="int8",
    ),
    "lowp_stochastic": lambda: adamx.low_precision_params(
        adamx.adam(1e-3), "stochastic", seed=1
    ),
}
BF16_PARAMS = frozenset({"lowp_kahan_int8", "lowp_stochastic"})
INT8_TRANSFORMS = frozenset(
    name for name in TRANSFORMS if name.endswith(("_int8", "_int4"))
)
# LAMB's trust ratio sums squares over each whole leaf: a sharded leaf needs
# an all-reduce, and nothing else.
ALLOWED_COLLECTIVES = {"lamb_fp32": frozenset({"all-reduce"})}

# optax chains, with state adamx does not build, for ``state_shardings``:
# optax.adam's init returns constants, which the compiler cannot tie to the
# parameters under Auto axes.
OPTAX_CHAINS = {
    "optax_adam": lambda: optax.adam(1e-3),
    "optax_chain": lambda: optax.chain(
        optax.clip_by_global_norm(1.0),
        adamx.adamw(optax.cosine_decay_schedule(1e-3, 100), mu_dtype=jnp.bfloat16),
        optax.trace(0.9),
    ),
}

ZERO_AXIS = "data"

COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "all-to-all",
    "collective-permute",
    "reduce-scatter",
)
# An HLO instruction's opcode, synchronous or the start of an async pair:
# "%all-reduce.3 = f32[] all-reduce(%x), ..." or "... all-gather-start(...".
_COLLECTIVE_RE = re.compile(r"\b(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Occurrences of each collective opcode in compiled HLO text."""
    counts = dict.fromkeys(COLLECTIVES, 0)
    for match in _COLLECTIVE_RE.finditer(hlo_text):
        counts[match.group(1)] += 1
    return counts


def make_mesh(axis_type: AxisType) -> jax.sharding.Mesh:
    return jax.make_mesh(MESH_SHAPE, MESH_AXES, axis_types=(axis_type,) * 2)


def make_params(mesh, seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        name: jax.device_put(
            rng.standard_normal(shape).astype(np.float32), NamedSharding(mesh, spec)
        )
        for name, (shape, spec) in PARAMS.items()
    }


def _param_of(path) -> tuple[str | None, str]:
    """The parameter a state leaf belongs to, and the leaf's part of the moment."""
    for i, key in enumerate(path):
        if isinstance(key, jax.tree_util.DictKey) and key.key in PARAMS:
            rest = path[i + 1 :]
            if not rest:
                return key.key, "moment"
            if len(rest) == 1 and isinstance(rest[0], jax.tree_util.GetAttrKey):
                return key.key, rest[0].name  # "codes" or "scales"
            raise AssertionError(f"unexpected state path {jax.tree_util.keystr(path)}")
    return None, "other"


def expected_sharding(mesh, path, leaf) -> NamedSharding:
    """The sharding a state leaf must have: its parameter's spec, or replicated.

    A scales leaf is ``(*shape[:-1], blocks)``: the parameter's spec splits its
    leading axes alike and its blocks axis over the mesh axis that splits the
    parameter's last axis, which is again the parameter's spec.
    """
    name, _ = _param_of(path)
    if name is None or np.ndim(leaf) == 0:  # scalars (a compensation's 0) too
        return NamedSharding(mesh, P())
    spec = tuple(PARAMS[name][1])
    return NamedSharding(mesh, P(*spec, *([None] * (np.ndim(leaf) - len(spec)))))


def _spec(leaf) -> str:
    sharding = leaf.sharding
    return str(sharding.spec) if isinstance(sharding, NamedSharding) else str(sharding)


def check_shardings(mesh, tree, what: str) -> tuple[dict, list[str]]:
    """Every leaf of ``tree`` against ``expected_sharding``: (report, failures)."""
    report, failures = {}, []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        where = jax.tree_util.keystr(path)
        expected = expected_sharding(mesh, path, leaf)
        ok = leaf.sharding.is_equivalent_to(expected, np.ndim(leaf))
        report[where] = {
            "shape": list(np.shape(leaf)),
            "spec": _spec(leaf),
            "expected": str(expected.spec),
            "ok": bool(ok),
        }
        if not ok:
            failures.append(
                f"{what} {where}: sharded {_spec(leaf)}, expected {expected.spec}"
            )
    return report, failures


def check_covers_params(state, quantized: bool) -> list[str]:
    """Failures unless every parameter has moments, 8-bit ones where they should."""
    parts: dict[str, set[str]] = {name: set() for name in PARAMS}
    for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]:
        name, part = _param_of(path)
        if name is not None:
            parts[name].add(part)
    failures = [f"no state leaf for parameter {n!r}" for n, p in parts.items() if not p]
    for name, found in parts.items():
        want = (
            {"codes", "scales"}
            if quantized and name in QUANTIZED_PARAMS
            else {"moment"}
        )
        # low_precision_params's compensation is a plain leaf like a moment.
        if found and found != want and found != want | {"moment"}:
            failures.append(f"parameter {name!r}: state parts {sorted(found)}")
    return failures


def _on_one_device(tree):
    return jax.device_put(jax.device_get(tree), jax.devices()[0])


def _close(actual, expected, *, rtol: float, atol: float) -> list[str]:
    failures = []
    flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
    flat_e = jax.tree.leaves(expected)
    for (path, a), e in zip(flat_a, flat_e, strict=True):
        a64 = np.asarray(jax.device_get(a)).astype(np.float64)
        e64 = np.asarray(jax.device_get(e)).astype(np.float64)
        if not np.allclose(a64, e64, rtol=rtol, atol=atol):
            worst = float(np.max(np.abs(a64 - e64)))
            failures.append(
                f"{jax.tree_util.keystr(path)} differs from one device's by {worst:.3g}"
            )
    return failures


def _raised(err: Exception) -> str:
    return f"raised {type(err).__name__}: {str(err).splitlines()[0]}"


def check_transform(name: str, axis_type: AxisType) -> dict:
    """The four checks of the module docstring for one transform and mesh.

    The result's ``failures`` lists what failed, by check: "init" (1),
    "compile" (2), "step" (3) and "helper" (4).
    """
    mesh = make_mesh(axis_type)
    result: dict = {
        "transform": name,
        "axes": axis_type.name,
        "failures": {"init": [], "helper": [], "compile": [], "step": []},
    }
    tx = TRANSFORMS[name]()
    params = make_params(mesh, seed=0)
    grads = make_params(mesh, seed=1)
    if name in BF16_PARAMS:
        params, grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), (params, grads))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check_transform(mesh, tx, name, params, grads, result)
    result["warnings"] = [str(w.message) for w in caught]
    result["failures"]["step"] += [f"warning: {w}" for w in result["warnings"]]
    return result


def _check_transform(mesh, tx, name, params, grads, result) -> None:
    failures = result["failures"]
    # 1. init under jit, on the mesh.
    try:
        with jax.set_mesh(mesh):
            state = jax.block_until_ready(jax.jit(tx.init)(params))
    except Exception as err:
        failures["init"].append(_raised(err))
        result["traceback"] = traceback.format_exc(limit=-8)
        # Go on to check the update from the state that one device gives.
        state = jax.jit(tx.init)(_on_one_device(params))
    else:
        result["init"], bad = check_shardings(mesh, state, "init state")
        failures["init"] += bad
    failures["init"] += check_covers_params(state, name in INT8_TRANSFORMS)
    _check_helper(mesh, tx, params, state, result)

    # 2. The update compiled for the shardings the state must have (those of
    # init's state where check 1 passes), so this check stands on its own.
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    state_shardings = jax.tree_util.tree_map_with_path(
        lambda path, x: expected_sharding(mesh, path, x), state
    )
    state = jax.device_put(state, state_shardings)
    inputs = (grads, state, params)
    host_inputs = jax.device_get(inputs)
    update = jax.jit(
        tx.update,
        in_shardings=(param_shardings, state_shardings, param_shardings),
        donate_argnums=1,
    )
    try:
        with jax.set_mesh(mesh):
            compiled = update.lower(*inputs).compile()
    except Exception as err:
        failures["compile"].append(_raised(err))
        result["traceback"] = traceback.format_exc(limit=-8)
        return
    counts = count_collectives(compiled.as_text())
    allowed = ALLOWED_COLLECTIVES.get(name, frozenset())
    unexpected = {k: n for k, n in counts.items() if n and k not in allowed}
    result["collectives"] = counts
    result["unexpected_collectives"] = unexpected
    if unexpected:
        failures["compile"].append(f"collectives {unexpected}")

    # 3. One update: the state and the updates keep the parameters' shardings.
    try:
        with jax.set_mesh(mesh):
            updates, new_state = jax.block_until_ready(compiled(*inputs))
    except Exception as err:
        failures["step"].append(_raised(err))
        result["traceback"] = traceback.format_exc(limit=-8)
        return
    result["update_state"], bad = check_shardings(mesh, new_state, "new state")
    failures["step"] += bad
    result["updates"], bad = check_shardings(mesh, updates, "updates")
    failures["step"] += bad
    # Sharding must not change the arithmetic. LAMB's sums may add in another
    # order; everything else is elementwise, so 8-bit codes agree exactly.
    ref_updates, ref_state = jax.jit(tx.update)(*_on_one_device(host_inputs))
    failures["step"] += _close(updates, ref_updates, rtol=1e-5, atol=1e-9)
    failures["step"] += _close(new_state, ref_state, rtol=1e-6, atol=0.0)


def _same_shardings(actual, expected, what: str) -> list[str]:
    """Failures where two trees differ in structure or in any leaf's sharding.

    ``actual`` holds arrays, ``expected`` shardings.
    """
    if jax.tree.structure(actual) != jax.tree.structure(expected):
        return [f"{what}: tree {jax.tree.structure(expected)}"]
    failures = []
    flat = jax.tree_util.tree_flatten_with_path(actual)[0]
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(expected), strict=True):
        if not leaf.sharding.is_equivalent_to(sharding, np.ndim(leaf)):
            failures.append(
                f"{what} {jax.tree_util.keystr(path)}: {_spec(leaf)} against "
                f"{getattr(sharding, 'spec', sharding)}"
            )
    return failures


def _check_helper(mesh, tx, params, state, result) -> None:
    """Check 4: ``state_shardings`` against ``jax.jit(tx.init)``'s own shardings."""
    failures = result["failures"]["helper"]
    try:
        shardings = state_shardings(tx, params)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params
        )
        from_abstract = state_shardings(
            tx, abstract, jax.tree.map(lambda x: x.sharding, params)
        )
        with jax.set_mesh(mesh):
            init = jax.jit(tx.init, out_shardings=shardings)
            placed = jax.block_until_ready(init(params))
        # init itself on parameters that do not exist yet, with their shardings.
        planned = tx.init(
            jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                params,
            )
        )
    except Exception as err:
        failures.append(_raised(err))
        result["traceback"] = traceback.format_exc(limit=-8)
        return
    leaves = jax.tree.leaves(shardings)
    result["helper_leaves"] = len(leaves)
    if not all(isinstance(s, NamedSharding) and s.mesh == mesh for s in leaves):
        failures.append("state_shardings: a leaf is not a NamedSharding on the mesh")
    failures += _same_shardings(state, shardings, "jit(tx.init) against helper")
    failures += _same_shardings(state, from_abstract, "helper from abstract params")
    failures += _same_shardings(placed, shardings, "jit(init, out_shardings)")
    failures += _same_shardings(planned, shardings, "init on ShapeDtypeStruct")
    if not all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(planned)):
        failures.append("init on ShapeDtypeStruct: a leaf is not abstract")
    shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(planned)]
    if shapes != [(x.shape, x.dtype) for x in jax.tree.leaves(state)]:
        failures.append("init on ShapeDtypeStruct: shapes or dtypes differ")
    # The spec each leaf must have, from the parameters' table, not the helper.
    _, bad = check_shardings(mesh, placed, "jit(init, out_shardings)")
    failures += bad
    failures += _close(placed, state, rtol=0.0, atol=0.0)


def check_optax_chain(name: str, axis_type: AxisType) -> dict:
    """``state_shardings`` of an optax chain: each leaf like its parameter."""
    mesh = make_mesh(axis_type)
    tx = OPTAX_CHAINS[name]()
    params = make_params(mesh, seed=0)
    shardings = state_shardings(tx, params)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init, out_shardings=shardings)(params)
    report, failures = check_shardings(mesh, state, "init state")
    failures += check_covers_params(state, quantized=False)
    failures += _same_shardings(state, shardings, "jit(init, out_shardings)")
    return {
        "transform": name,
        "axes": axis_type.name,
        "init": report,
        "failures": failures,
    }


def _device_bytes(tree, device) -> int:
    """Bytes of ``tree``'s arrays held on ``device``."""
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


# ZeRO stage 1 on top of the parameters' own sharding: "data" joins each
# moment's first unsplit axis that it divides, else (as the minor part) an
# axis split already; "w" is split over "data" already. 8-bit "e" has scales
# shaped (64, 2) (two blocks of 128 a row), which "data" splits like the codes.
ZERO_ON_SHARDED = {
    "w": P("data", "model"),
    "e": P("model", "data"),
    "b": P(("model", "data")),
    "c": P(("model", "data")),
    "r": P("data", None),
}
# Where 8-bit codes and scales would split otherwise than the parameter's
# moment (none, at 128 values a block).
ZERO_ON_SHARDED_INT8: dict[str, P] = {}
# (transform, layout of the parameters): replicated is plain data
# parallelism; sharded adds "data" to the parameters' PARAMS specs.
ZERO_CASES = (
    ("adam_fp32", "replicated"),
    ("adam_int8", "replicated"),
    ("lamb_fp32", "replicated"),
    ("adam_int8", "sharded"),
)


def expected_zero_spec(path, leaf, layout: str, quantized: bool) -> P:
    """The spec a state leaf must have under ZeRO stage 1 over "data"."""
    name, part = _param_of(path)
    if name is None or np.ndim(leaf) == 0:
        return P()
    if layout == "replicated":
        # Every parameter's first axis is even, so is each state leaf's.
        return P(ZERO_AXIS, *([None] * (np.ndim(leaf) - 1)))
    if quantized and part in ("codes", "scales") and name in ZERO_ON_SHARDED_INT8:
        return ZERO_ON_SHARDED_INT8[name]
    return ZERO_ON_SHARDED[name]


def _spec_size(mesh, spec: P) -> int:
    """How many pieces ``spec`` cuts an array into on ``mesh``."""
    size = 1
    for entry in spec:
        for axis in (
            () if entry is None else (entry,) if isinstance(entry, str) else entry
        ):
            size *= mesh.shape[axis]
    return size


def check_zero(name: str, layout: str) -> dict:
    """ZeRO stage 1: state split over "data" as well, parameters left as they are."""
    mesh = make_mesh(AxisType.Auto)
    failures: list[str] = []
    result: dict = {"transform": name, "axes": f"Auto {layout}", "failures": failures}
    tx = TRANSFORMS[name]()
    quantized = name in INT8_TRANSFORMS
    host_params = jax.device_get(make_params(mesh, seed=0))
    host_grads = jax.device_get(make_params(mesh, seed=1))
    if layout == "replicated":
        param_shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), host_params)
    else:
        param_shardings = {
            n: NamedSharding(mesh, spec) for n, (_, spec) in PARAMS.items()
        }
    params = jax.device_put(host_params, param_shardings)
    grads = jax.device_put(host_grads, param_shardings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shardings = state_shardings(tx, params, zero_axis=ZERO_AXIS)
        with jax.set_mesh(mesh):
            state = jax.jit(tx.init, out_shardings=shardings)(params)
            compiled = (
                jax.jit(
                    tx.update,
                    in_shardings=(param_shardings, shardings, param_shardings),
                    out_shardings=(param_shardings, shardings),
                )
                .lower(grads, state, params)
                .compile()
            )
            updates, new_state = jax.block_until_ready(compiled(grads, state, params))
    failures += [f"warning: {w.message}" for w in caught]
    for what, tree in (("init state", state), ("new state", new_state)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            spec = expected_zero_spec(path, leaf, layout, quantized)
            if not leaf.sharding.is_equivalent_to(
                NamedSharding(mesh, spec), np.ndim(leaf)
            ):
                failures.append(
                    f"{what} {jax.tree_util.keystr(path)}: {_spec(leaf)}, "
                    f"expected {spec}"
                )
    # Bytes each device must hold: each leaf's bytes over its pieces.
    expected_bytes = sum(
        leaf.nbytes
        // _spec_size(mesh, expected_zero_spec(path, leaf, layout, quantized))
        for path, leaf in jax.tree_util.tree_flatten_with_path(new_state)[0]
    )
    failures += _same_shardings(updates, param_shardings, "updates")

    devices = jax.devices()
    result["state_bytes"] = {
        "total": adamx.state_nbytes(new_state),
        "per_device": [_device_bytes(new_state, d) for d in devices],
        "per_device_expected": expected_bytes,
        "per_device_without_zero": _device_bytes(
            state_before_zero(tx, params), devices[0]
        ),
    }
    if set(result["state_bytes"]["per_device"]) != {expected_bytes}:
        failures.append(f"state bytes {result['state_bytes']}")

    counts = count_collectives(compiled.as_text())
    allowed = {"all-gather"} | ALLOWED_COLLECTIVES.get(name, frozenset())
    result["collectives"] = counts
    unexpected = {op: n for op, n in counts.items() if n and op not in allowed}
    if unexpected:
        failures.append(f"collectives {unexpected}")
    if not counts["all-gather"]:
        failures.append("no all-gather: the updates must come back whole")

    ref_updates, ref_state = jax.jit(tx.update)(
        *_on_one_device((host_grads, tx.init(host_params), host_params))
    )
    failures += _close(updates, ref_updates, rtol=1e-5, atol=1e-9)
    failures += _close(new_state, ref_state, rtol=1e-6, atol=0.0)
    return result


def state_before_zero(tx, params):
    """``jax.jit(tx.init)(params)``: the state sharded like the parameters only."""
    with jax.set_mesh(jax.tree.leaves(params)[0].sharding.mesh):
        return jax.jit(tx.init)(params)


def check_restore() -> dict:
    """A checkpoint restored onto ``abstract_state`` targets, plain and ZeRO.

    An 8-bit state saved with orbax from the parameters' sharding comes back
    with each target's shardings and the saved values.
    """
    import orbax.checkpoint as ocp

    mesh = make_mesh(AxisType.Auto)
    failures: list[str] = []
    result: dict = {"transform": "adam_int8", "axes": "Auto restore"}
    tx = TRANSFORMS["adam_int8"]()
    params = make_params(mesh, seed=0)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
        _, state = jax.jit(tx.update)(make_params(mesh, seed=1), state, params)
    # What a restoring process has: shapes, dtypes and shardings, no arrays.
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    with (
        tempfile.TemporaryDirectory() as directory,
        warnings.catch_warnings(record=True) as caught,
        ocp.StandardCheckpointer() as checkpointer,
    ):
        warnings.simplefilter("always")
        path = pathlib.Path(directory) / "state"
        checkpointer.save(path, state)
        checkpointer.wait_until_finished()
        for zero_axis in (None, ZERO_AXIS):
            target = abstract_state(tx, abstract, zero_axis=zero_axis)
            restored = checkpointer.restore(path, target)
            what = f"restored (zero_axis={zero_axis})"
            failures += _same_shardings(
                restored, jax.tree.map(lambda t: t.sharding, target), what
            )
            failures += _close(restored, state, rtol=0.0, atol=0.0)
            result[f"b codes, zero_axis={zero_axis}"] = _spec(restored[0].mu["b"].codes)
    result["warnings"] = [str(w.message) for w in caught]
    result["failures"] = failures
    return result


def main() -> int:
    start = time.perf_counter()
    summary: dict = {
        "jax_version": jax.__version__,
        "devices": jax.device_count(),
        "mesh": dict(zip(MESH_AXES, MESH_SHAPE, strict=True)),
        "params": {n: [list(s), str(p)] for n, (s, p) in PARAMS.items()},
        "results": [],
    }
    if jax.device_count() != 8:
        summary["error"] = f"expected 8 devices, got {jax.device_count()}"
        print(json.dumps(summary, indent=1))
        return 1
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        for name in TRANSFORMS:
            t0 = time.perf_counter()
            try:
                result = check_transform(name, axis_type)
            except Exception as err:
                result = {
                    "transform": name,
                    "axes": axis_type.name,
                    "failures": {"check": [_raised(err)]},
                    "traceback": traceback.format_exc(limit=-8),
                }
            result["seconds"] = round(time.perf_counter() - t0, 2)
            summary["results"].append(result)
    summary["optax"] = []
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        for name in OPTAX_CHAINS:
            try:
                result = check_optax_chain(name, axis_type)
            except Exception as err:
                result = {
                    "transform": name,
                    "axes": axis_type.name,
                    "failures": [_raised(err)],
                    "traceback": traceback.format_exc(limit=-8),
                }
            summary["optax"].append(result)
    summary["zero"] = []
    for name, layout in ZERO_CASES:
        t0 = time.perf_counter()
        try:
            result = check_zero(name, layout)
        except Exception as err:
            result = {
                "transform": name,
                "axes": f"Auto {layout}",
                "failures": [_raised(err)],
                "traceback": traceback.format_exc(limit=-8),
            }
        result["seconds"] = round(time.perf_counter() - t0, 2)
        summary["zero"].append(result)
    t0 = time.perf_counter()
    try:
        result = check_restore()
    except Exception as err:
        result = {
            "transform": "adam_int8",
            "axes": "Auto restore",
            "failures": [_raised(err)],
            "traceback": traceback.format_exc(limit=-8),
        }
    result["seconds"] = round(time.perf_counter() - t0, 2)
    summary["restore"] = result
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["failures"] = [
        f"{r['axes']} {r['transform']} {check}: {f}"
        for r in summary["results"]
        for check, failed in r["failures"].items()
        for f in failed
    ]
    summary["failures"] += [
        f"{r['axes']} {r['transform']}: {f}"
        for r in [*summary["optax"], *summary["zero"], summary["restore"]]
        for f in r["failures"]
    ]
    summary["ok"] = not summary["failures"]
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    jax.config.update("jax_numpy_rank_promotion", "raise")
    sys.exit(main())
