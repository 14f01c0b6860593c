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
   parameter, and matches the same update computed on one device.

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
import re
import sys
import time
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx

MESH_SHAPE = (2, 4)
MESH_AXES = ("data", "model")

# name: (shape, spec). Where the last axis is sharded, each shard's length is
# a multiple of the default block size (256), so whole blocks stay in a shard.
# "w", "e" and "b" are large enough to be stored in 8 bits; "c" and "r" stay
# float32 under "int8" (fewer than Quantized().min_size values).
PARAMS = {
    "w": ((8, 2048), P("data", "model")),  # shard (4, 512): 2 blocks a row
    "e": ((64, 256), P("model", None)),  # shard (16, 256): 1 block a row
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
}
INT8_TRANSFORMS = frozenset(name for name in TRANSFORMS if name.endswith("_int8"))
# LAMB's trust ratio sums squares over each whole leaf: a sharded leaf needs
# an all-reduce, and nothing else.
ALLOWED_COLLECTIVES = {"lamb_fp32": frozenset({"all-reduce"})}

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
    if name is None:
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
        if found and found != want:
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
    """The three checks of the module docstring for one transform and mesh.

    The result's ``failures`` lists what failed, by check: "init" (1),
    "compile" (2) and "step" (3).
    """
    mesh = make_mesh(axis_type)
    result: dict = {
        "transform": name,
        "axes": axis_type.name,
        "failures": {"init": [], "compile": [], "step": []},
    }
    tx = TRANSFORMS[name]()
    params = make_params(mesh, seed=0)
    grads = make_params(mesh, seed=1)
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
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["failures"] = [
        f"{r['axes']} {r['transform']} {check}: {f}"
        for r in summary["results"]
        for check, failed in r["failures"].items()
        for f in failed
    ]
    summary["ok"] = not summary["failures"]
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    jax.config.update("jax_numpy_rank_promotion", "raise")
    sys.exit(main())
