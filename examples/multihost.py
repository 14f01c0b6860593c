"""Two processes, eight devices: training survives a SIGKILL, bit for bit.

Run:  python examples/multihost.py [--steps 12] [--save-at 6] [--die-at 9]
(orbax-checkpoint is in the ``test`` extra; about 30 s on two CPU cores.)

The script is a launcher: it starts two worker processes of itself on this
machine (``--worker``, an internal mode), each with four simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``), joined by
``jax.distributed.initialize("127.0.0.1:PORT", num_processes=2, process_id=i)``
with gloo as the CPU collectives. ``jax.devices()`` then lists eight devices,
four of them addressable by each process, and the ``data`` axis of the mesh
spans all eight. That is the many-host program of the README's section "Many
devices and many hosts"; on real hosts, drop the simulated devices and give
every host the coordinator's address and its own ``process_id``.

The workers train an MLP 32-128-16 (6288 parameters) on a synthetic
regression task with ``adamx.adamw(1e-3, mu_dtype="int8", nu_dtype="int8")``:
the 32 x 128 weight's moments are stored as 8-bit codes with one int8
exponent per block of 128 values (``QuantizedArray``), the smaller leaves'
(under ``Quantized.min_size``) in float32. Parameters are replicated and the
optimizer state is split over ``data``, ZeRO stage 1:
``adamx.state_shardings(tx, params, zero_axis="data")``. Each process feeds
its own rows of every batch with ``jax.make_array_from_process_local_data``;
batch ``i`` is a function of ``i`` alone, so a resumed run sees the same data.
The train step is jitted with in/out shardings and donates parameters and
state. The launcher runs three jobs:

1. unbroken: ``--steps`` steps; the final parameters and optimizer state are
   gathered onto every device (a jitted identity with replicated
   ``out_shardings``) and process 0 writes them.
2. interrupted: the same training, saving an Orbax checkpoint
   (``ocp.CheckpointManager``, synchronous, every process calls ``save``) after
   step ``--save-at``. Training goes on and at step ``--die-at`` a second save
   starts; process 1 writes its shards of it and then SIGKILLs itself, before
   the checkpoint is committed: a ``StandardCheckpointHandler`` subclass
   returns from ``async_save`` a future that, once Orbax waits on it before
   its commit barrier, waits for the process's writes and SIGKILLs it. The
   launcher sees it die and SIGKILLs process 0, which waits for it at that
   barrier.
3. restarted: two fresh processes ask the manager for ``latest_step()``,
   restore it into ``adamx.abstract_state(tx, abstract_params, zero_axis=...)``
   (``jax.ShapeDtypeStruct`` with shardings; each process reads only its
   shards), train the remaining steps on the same batches and write the final
   state as in 1.

The launcher then compares every leaf of the final parameters and optimizer
state, the int8 codes and their scales included, with the unbroken run's as
raw bytes, and exits nonzero unless all are identical and the restart resumed
from ``--save-at``.

Why the killed save is never restored: on a local filesystem Orbax writes
step ``s`` into a temporary directory ``<s>.orbax-checkpoint-tmp`` (every
process its own shards, then a barrier). Only after all processes have written
does process 0 finalize it: it writes ``commit_success.txt`` into it and
renames it to ``<s>`` (``AtomicRenameTemporaryPath``, the default class where
the filesystem renames atomically; on GCS it is ``CommitFileTemporaryPath``,
whose mark of completion is the ``commit_success.txt`` file alone).
``CheckpointManager`` lists as steps only directories whose name does not
contain ``.orbax-checkpoint-tmp``, so ``latest_step()`` and ``all_steps()``
skip an unfinished save, however much of it was written, and ``restore(s)``
of it raises ``FileNotFoundError`` (as read in orbax-checkpoint 0.12's
``path/atomicity.py`` and ``path/step.py``). The launcher prints what the
kill left on disk and what the restarted manager reported. The
manager leaves the temporary directory where it is
(``CheckpointManagerOptions.cleanup_tmp_directories`` is off by default); a
later save of the same step replaces it.
"""

from __future__ import annotations

import os

# Before jax is imported: four simulated CPU devices in this process.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    flag
    for flag in (
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=4",
    )
    if flag
)

import argparse
import json
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 4
IN, HIDDEN, OUT, BATCH = 32, 128, 16, 64
LEARNING_RATE = 1e-3
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's mark of an uncommitted step
JOB_TIMEOUT_S = 300.0


# ---------------------------------------------------------------- the worker


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((IN, HIDDEN)) / np.sqrt(IN)).astype(np.float32),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": (rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32),
        "b2": np.zeros(OUT, np.float32),
    }


def batch(step: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The whole batch of step ``step``: a function of the step index only."""
    teacher = np.random.default_rng(seed).standard_normal((IN, OUT)) / np.sqrt(IN)
    rng = np.random.default_rng([seed, step])
    x = rng.standard_normal((BATCH, IN)).astype(np.float32)
    y = np.tanh(x @ teacher) + 0.1 * rng.standard_normal((BATCH, OUT))
    return x, y.astype(np.float32)


def worker(args: argparse.Namespace) -> None:
    started = time.perf_counter()

    def log(what: str) -> None:
        print(f"[{time.perf_counter() - started:6.2f} s] {what}", flush=True)

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"127.0.0.1:{args.port}",
        num_processes=NUM_PROCESSES,
        process_id=args.process_id,
    )

    log("jax.distributed initialized")
    import jax.numpy as jnp
    import optax
    import orbax.checkpoint as ocp
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import adamx

    if jax.device_count() != NUM_PROCESSES * DEVICES_PER_PROCESS:
        raise SystemExit(f"expected 8 devices, found {jax.device_count()}")
    workdir = pathlib.Path(args.workdir)
    rank = jax.process_index()
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P("data"))

    tx = adamx.adamw(LEARNING_RATE, mu_dtype="int8", nu_dtype="int8")
    host_params = init_params()
    param_sh = dict.fromkeys(host_params, replicated)
    abstract_params = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated)
        for k, v in host_params.items()
    }
    opt_sh = adamx.state_shardings(tx, abstract_params, zero_axis="data")
    split = [sh for sh in jax.tree.leaves(opt_sh) if "data" in sh.spec]
    log(f"{len(split)} of {len(jax.tree.leaves(opt_sh))} state leaves split over data")

    def loss_fn(params, x, y):
        hidden = jax.nn.gelu(x @ params["w1"] + params["b1"][None, :])
        pred = hidden @ params["w2"] + params["b2"][None, :]
        return jnp.mean((pred - y) ** 2)

    def train_step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    step_fn = jax.jit(
        train_step,
        in_shardings=(param_sh, opt_sh, rows, rows),
        out_shardings=(param_sh, opt_sh, replicated),
        donate_argnums=(0, 1),
    )

    # This process's rows of a batch: those of the devices it addresses.
    starts = sorted(
        index[0].start or 0
        for index in rows.addressable_devices_indices_map((BATCH, IN)).values()
    )
    local = slice(starts[0], starts[-1] + BATCH // jax.device_count())

    def global_batch(step: int):
        return tuple(
            jax.make_array_from_process_local_data(rows, part[local], part.shape)
            for part in batch(step)
        )

    def save_final(params, state, name: str) -> None:
        # One jitted all-gather of the whole tree: every leaf fully replicated,
        # so each process holds all of it and process 0 writes it.
        tree = {"params": params, "opt_state": state}
        gathered = jax.jit(lambda t: t, out_shardings=replicated)(tree)
        if rank == 0:
            leaves = jax.tree_util.tree_flatten_with_path(gathered)[0]
            np.savez(
                workdir / name,
                **{
                    jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
                    for path, leaf in leaves
                },
            )

    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    ckpt_dir = (workdir / "checkpoints").absolute()

    if args.job == "resume":
        manager = ocp.CheckpointManager(ckpt_dir, options=options)
        start = manager.latest_step()
        if start is None:
            raise SystemExit("no complete checkpoint to resume from")
        target = {
            "params": abstract_params,
            "opt_state": adamx.abstract_state(tx, abstract_params, zero_axis="data"),
        }
        restore_args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        # Asked for by number, the killed save is refused too.
        try:
            manager.restore(args.die_at, args=restore_args)
            refused = None
        except (ValueError, FileNotFoundError) as error:
            refused = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        restored = manager.restore(start, args=restore_args)["state"]
        params, state = restored["params"], restored["opt_state"]
        log(f"restored step {start}")
        if rank == 0:
            report = {
                "latest_step": start,
                "all_steps": list(manager.all_steps()),
                "refused": refused,
            }
            (workdir / "resume.json").write_text(json.dumps(report))
    else:
        start = 0
        params = {
            k: jax.make_array_from_callback(v.shape, replicated, lambda i, v=v: v[i])
            for k, v in host_params.items()
        }
        state = jax.jit(tx.init, out_shardings=opt_sh)(params)
        log("initialized")

    manager = None
    if args.job == "interrupted":
        handler = kill_after_write_handler()
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        registry.add("state", ocp.args.StandardSave, handler)
        registry.add("state", ocp.args.StandardRestore, handler)
        manager = ocp.CheckpointManager(
            ckpt_dir, options=options, handler_registry=registry
        )

    for step in range(start, args.steps):
        params, state, _ = step_fn(params, state, *global_batch(step))
        done = step + 1
        log(f"step {done}")
        if manager is not None and done in (args.save_at, args.die_at):
            # Process 1 dies inside the second save, after writing its shards.
            handler.kill = done == args.die_at and rank == 1
            tree = {"params": params, "opt_state": state}
            manager.save(
                done, args=ocp.args.Composite(state=ocp.args.StandardSave(tree))
            )
            manager.wait_until_finished()
            log(f"saved step {done}")
        if manager is not None and done == args.die_at:
            raise SystemExit("the save at --die-at returned: nobody was killed")

    save_final(params, state, f"final_{args.job}.npz")
    log("final state written")


def kill_after_write_handler() -> Any:
    """A ``StandardCheckpointHandler`` that can die between write and commit.

    Its ``kill`` attribute, when set, makes the process SIGKILL itself once its
    own shards of the save are written, before Orbax commits the step.
    """
    import orbax.checkpoint as ocp

    class _Handler(ocp.StandardCheckpointHandler):
        kill = False

        async def async_save(self, directory, *args, **kwargs):
            futures = await super().async_save(directory, *args, **kwargs)
            if not self.kill:
                return futures
            return [_DieWhenWritten(futures or [])]

    return _Handler()


class _DieWhenWritten:
    """Waited on by Orbax before its commit barrier: waits, then SIGKILLs."""

    def __init__(self, futures: list[Any]):
        self._futures = futures

    def result(self, timeout: float | None = None) -> None:
        for future in self._futures:
            future.result()  # this process's shards are on disk now
        os.kill(os.getpid(), signal.SIGKILL)


# -------------------------------------------------------------- the launcher


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(
    job: str, args: argparse.Namespace, workdir: pathlib.Path
) -> tuple[list[int], int | None]:
    """Starts both workers and waits for both to end.

    As soon as one worker dies by a signal, the other is SIGKILLed: it would
    wait for its dead peer at the next collective or barrier until JAX's
    heartbeat timeout. Returns the exit codes and the rank that died first by
    a signal (None when none did).
    """
    port = free_port()
    procs, logs = [], []
    for rank in range(NUM_PROCESSES):
        log = open(workdir / f"{job}.{rank}.log", "w")  # noqa: SIM115
        logs.append(log)
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker"]
        cmd += [f"--job={job}", f"--process-id={rank}", f"--port={port}"]
        cmd += [f"--workdir={workdir}", f"--steps={args.steps}"]
        cmd += [f"--save-at={args.save_at}", f"--die-at={args.die_at}"]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    first_dead = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(code is not None for code in codes):
                break
            signalled = [
                r for r, code in enumerate(codes) if code is not None and code < 0
            ]
            if signalled:
                first_dead = signalled[0]
                break
            if time.monotonic() > deadline:
                print(f"{job}: timed out after {JOB_TIMEOUT_S:.0f} s")
                break
            time.sleep(0.02)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    return [p.returncode for p in procs], first_dead


def log_tail(workdir: pathlib.Path, job: str) -> str:
    return "\n".join(
        f"--- {job}, process {rank} (last lines) ---\n"
        + "\n".join((workdir / f"{job}.{rank}.log").read_text().splitlines()[-15:])
        for rank in range(NUM_PROCESSES)
    )


def bytes_of(a: np.ndarray) -> np.ndarray:
    """``a``'s raw bytes, so that -0.0, NaN and bfloat16 compare bit for bit."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def launcher(args: argparse.Namespace) -> int:
    if not 0 < args.save_at < args.die_at <= args.steps:
        raise SystemExit("needs 0 < --save-at < --die-at <= --steps")
    keep = args.workdir is not None
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="adamx-multihost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    print(
        f"adamx multihost: {NUM_PROCESSES} processes x {DEVICES_PER_PROCESS} CPU "
        f"devices (gloo), mesh data={NUM_PROCESSES * DEVICES_PER_PROCESS}; "
        f"MLP {IN}-{HIDDEN}-{OUT}, adamw with int8 moments, state ZeRO-split over "
        f"data; {args.steps} steps"
    )
    ok = scenario(args, workdir)
    if ok and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"files (worker logs, checkpoints, final states) kept in {workdir}")
    return 0 if ok else 1


def scenario(args: argparse.Namespace, workdir: pathlib.Path) -> bool:
    """The three jobs and the comparison; True when everything held."""
    ckpt_dir = workdir / "checkpoints"
    t0 = time.perf_counter()
    codes, _ = run_job("unbroken", args, workdir)
    t1 = time.perf_counter()
    if codes != [0, 0]:
        print(log_tail(workdir, "unbroken"))
        print(f"unbroken run failed: exit codes {codes}")
        return False
    print(f"(1) unbroken: {args.steps} steps, {t1 - t0:.1f} s")

    codes, first_dead = run_job("interrupted", args, workdir)
    t2 = time.perf_counter()
    partial = ckpt_dir / f"{args.die_at}{TMP_SUFFIX}"
    if first_dead != 1 or codes[1] != -signal.SIGKILL or not partial.is_dir():
        print(log_tail(workdir, "interrupted"))
        print(
            f"interrupted run: process 1 did not die by SIGKILL inside the save of "
            f"step {args.die_at} (exit codes {codes})"
        )
        return False
    on_disk = sorted(p.name for p in ckpt_dir.iterdir())
    written = sum(1 for p in partial.rglob("*") if p.is_file())
    committed = (partial / "commit_success.txt").exists()
    print(
        f"(2) interrupted: step {args.save_at} checkpointed; process 1 SIGKILLed "
        f"itself while saving step {args.die_at}, then the launcher SIGKILLed "
        f"process 0 (exit codes {codes}), {t2 - t1:.1f} s\n"
        f"    on disk: {on_disk}; {partial.name}/ holds {written} files, "
        f"commit_success.txt: {committed}"
    )

    codes, _ = run_job("resume", args, workdir)
    t3 = time.perf_counter()
    if codes != [0, 0]:
        print(log_tail(workdir, "resume"))
        print(f"restarted run failed: exit codes {codes}")
        return False
    report = json.loads((workdir / "resume.json").read_text())
    latest = report["latest_step"]
    print(
        f"(3) restarted: latest_step() = {latest}, all_steps() = "
        f"{report['all_steps']}; restored step {latest} and trained steps "
        f"{latest + 1}-{args.steps}, {t3 - t2:.1f} s"
    )
    print(f"    restore({args.die_at}): refused with {report['refused']}")
    partial_ok = (
        latest == args.save_at
        and args.die_at not in report["all_steps"]
        and report["refused"] is not None
    )
    print(
        f"partial checkpoint of step {args.die_at}: "
        + ("not restored" if partial_ok else "MISTAKEN FOR A COMPLETE ONE")
        + f", resumed from step {latest}"
    )

    with (
        np.load(workdir / "final_unbroken.npz") as a,
        np.load(workdir / "final_resume.npz") as b,
    ):
        names = sorted(a.files)
        same_names = names == sorted(b.files)
        differing = [
            name
            for name in names
            if not same_names
            or a[name].dtype != b[name].dtype
            or a[name].shape != b[name].shape
            or not np.array_equal(bytes_of(a[name]), bytes_of(b[name]))
        ]
        dtypes = sorted({str(a[name].dtype) for name in names})
    identical = same_names and not differing
    verdict = "bitwise identical" if identical else f"DIFFERENT in {differing}"
    print(
        f"final parameters and optimizer state ({len(names)} leaves: "
        f"{', '.join(dtypes)}): {verdict} to the unbroken run's "
        f"[{time.perf_counter() - t0:.1f} s in all]"
    )
    return identical and partial_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-at", type=int, default=6, help="checkpointed step")
    parser.add_argument(
        "--die-at", type=int, default=9, help="step whose save is killed"
    )
    parser.add_argument("--workdir", help="keep files here (default: a temp dir)")
    # Internal: the worker processes the launcher starts.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--job",
        choices=("unbroken", "interrupted", "resume"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return launcher(args)


if __name__ == "__main__":
    sys.exit(main())
