"""adamx on a device mesh: state sharded like the parameters, or ZeRO-style.

Run:  python examples/zero_sharding.py [--steps 20]

Eight CPU devices are simulated: ``XLA_FLAGS`` gets
``--xla_force_host_platform_device_count=8`` at the top of this file, before
``jax`` is imported, because jax reads it once, when its CPU backend starts.
On a machine with eight accelerators, delete those lines and the same code
runs on them.

An MLP 64-1024-16 is trained on a synthetic regression task with
``adamx.adamw`` (first moment in 8 bits, second in bfloat16), the batch split
over the ``data`` axis of a 2 x 4 ``('data', 'model')`` mesh, three ways:

(a) tensor parallel: the hidden layer's weights split over ``model``, and the
    state sharded like them: ``adamx.sharding.state_shardings(tx, params)``
    gives ``out_shardings`` for ``jax.jit(tx.init)`` and the train step;
(b) ZeRO stage 1: parameters replicated (plain data parallelism), the state
    split over ``data`` with ``state_shardings(tx, params, zero_axis="data")``;
    the step all-gathers the updates;
(c) both: parameters as in (a), state split over ``data`` as well.

Each run's state bytes on one device are printed, and its parameters after
``--steps`` steps are compared with the same training on a single device.
"""

from __future__ import annotations

import os

# Before jax is imported: simulate eight CPU devices.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    flag
    for flag in (
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
    )
    if flag
)

import argparse
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx.sharding import state_shardings

IN, HIDDEN, OUT, BATCH = 64, 1024, 16, 256
# (a): the hidden layer split over "model". Each device's part of w1's last
# axis is 1024 / 4 = 256 values, one whole 8-bit block, so quantizing the
# moments needs no communication.
TENSOR_PARALLEL = {
    "w1": P(None, "model"),
    "b1": P("model"),
    "w2": P("model", None),
    "b2": P(),
}


def init_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((IN, HIDDEN)) / np.sqrt(IN)).astype(np.float32),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": (rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32),
        "b2": np.zeros(OUT, np.float32),
    }


def batches(steps: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fixed random teacher's outputs, with noise, on Gaussian inputs."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((IN, OUT)).astype(np.float32) / np.sqrt(IN)
    out = []
    for _ in range(steps):
        x = rng.standard_normal((BATCH, IN)).astype(np.float32)
        y = np.tanh(x @ teacher) + 0.1 * rng.standard_normal((BATCH, OUT))
        out.append((x, y.astype(np.float32)))
    return out


def loss_fn(params, x, y):
    hidden = jax.nn.gelu(x @ params["w1"] + params["b1"][None, :])
    pred = hidden @ params["w2"] + params["b2"][None, :]
    return jnp.mean((pred - y) ** 2)


def make_optimizer() -> optax.GradientTransformation:
    return adamx.adamw(1e-3, weight_decay=1e-4, mu_dtype="int8", nu_dtype=jnp.bfloat16)


def train_step(tx):
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def device_bytes(tree, device) -> int:
    """Bytes of ``tree``'s arrays stored on ``device``."""
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


def collectives(hlo: str) -> dict[str, int]:
    ops = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all")
    found = re.findall(r"\b(" + "|".join(ops) + r")(?:-start)?\(", hlo)
    return {op: found.count(op) for op in ops if op in found}


def train(step, params, state, data) -> dict:
    """Runs ``step`` over ``data``: parameters after the first and last steps."""
    losses = []
    for i, (x, y) in enumerate(data):
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
        if i == 0:
            first = jax.device_get(params)
    return {
        "first": first,
        "last": jax.device_get(params),
        "loss": losses[-1],
        "state_bytes": device_bytes(state, jax.devices()[0]),
    }


def train_on_one_device(host_params, data) -> dict:
    tx = make_optimizer()
    params = jax.device_put(host_params, jax.devices()[0])
    return train(jax.jit(train_step(tx)), params, jax.jit(tx.init)(params), data)


def train_on_mesh(mesh, host_params, data, param_specs, zero_axis=None) -> dict:
    """Trains on ``mesh``; the state's shardings come from ``state_shardings``."""
    tx = make_optimizer()
    param_shardings = {k: NamedSharding(mesh, s) for k, s in param_specs.items()}
    batch = NamedSharding(mesh, P("data", None))
    params = jax.device_put(host_params, param_shardings)
    # One Sharding per state leaf: moments (8-bit codes and scales too) like
    # their parameters, counts replicated; split over zero_axis as well.
    opt_shardings = state_shardings(tx, params, zero_axis=zero_axis)
    state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    step = jax.jit(
        train_step(tx),
        in_shardings=(param_shardings, opt_shardings, batch, batch),
        out_shardings=(param_shardings, opt_shardings, NamedSharding(mesh, P())),
        donate_argnums=(0, 1),
    )
    compiled = step.lower(params, state, *data[0]).compile()
    result = train(compiled, params, state, data)
    result["spec"] = jax.tree.leaves(opt_shardings[0].mu["w1"])[0].spec
    result["collectives"] = collectives(compiled.as_text())
    return result


def max_diff(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if jax.device_count() != 8:
        raise SystemExit(f"needs 8 devices, found {jax.device_count()}")
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    host_params = init_params(seed=0)
    data = batches(args.steps, seed=1)
    n_params = sum(p.size for p in host_params.values())
    devices = f"{jax.device_count()} {jax.devices()[0].platform.upper()} devices"
    print(f"jax {jax.__version__}, {devices}, mesh {dict(mesh.shape)}")
    print(f"MLP {IN}-{HIDDEN}-{OUT}: {n_params} parameters, {args.steps} steps")

    ref = train_on_one_device(host_params, data)
    print(f"one device: state {ref['state_bytes']} bytes, loss {ref['loss']:.5f}")

    replicated = dict.fromkeys(TENSOR_PARALLEL, P())
    runs = {
        "(a) params over model": (TENSOR_PARALLEL, None),
        "(b) ZeRO: state over data": (replicated, "data"),
        "(c) both": (TENSOR_PARALLEL, "data"),
    }
    print(
        f"\n{'layout':26} {'state B/device':>14} {'vs 1 dev':>8}  {'mu[w1] spec':18}"
        f" {'|Δ| step 1':>10} {'|Δ| last':>9} {'loss':>8}  collectives in the step"
    )
    first_step, last_loss = 0.0, 0.0
    for label, (specs, zero_axis) in runs.items():
        run = train_on_mesh(mesh, host_params, data, specs, zero_axis)
        first = max_diff(run["first"], ref["first"])
        last = max_diff(run["last"], ref["last"])
        first_step = max(first_step, first)
        last_loss = max(last_loss, abs(run["loss"] - ref["loss"]) / ref["loss"])
        print(
            f"{label:26} {run['state_bytes']:>14} "
            f"{run['state_bytes'] / ref['state_bytes']:>7.3f}x  {run['spec']!s:18} "
            f"{first:>10.1e} {last:>9.1e} {run['loss']:>8.5f}  {run['collectives']}"
        )
    # The sharded matmuls add in another order than one device does, so the
    # gradients, and after one step the parameters, agree to float32 rounding.
    # Later steps feed those last-bit differences through 8-bit and bfloat16
    # rounding of the moments, which can move a moment by one code, so the
    # runs drift apart by a fraction of the learning rate; the losses agree.
    ok = first_step < 1e-5 and last_loss < 1e-3
    print(
        f"\none-device run {'matched' if ok else 'NOT matched'}: parameters after "
        f"step 1 within {first_step:.1e} (float32 rounding), final loss within "
        f"{last_loss:.1e} relative"
    )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
