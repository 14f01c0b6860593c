"""examples/multihost.py: two processes, a SIGKILL mid-save, a bitwise resume.

The example is run as it is meant to be run, ``python examples/multihost.py``
from the repository root: its launcher starts two ``jax.distributed`` worker
processes three times (unbroken, interrupted, restarted) and exits nonzero
unless the restarted run's final parameters and optimizer state equal the
unbroken run's bit for bit and the save killed half-way was not restored.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "multihost.py"
TIMEOUT_S = 600  # about 30 s here; three jobs of two compiling processes each


def test_multihost_resume_after_sigkill_is_bitwise_identical():
    if not EXAMPLE.is_file():
        pytest.skip(f"needs the repository checkout: {EXAMPLE} is missing")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr[-4000:]}"
    assert "process 1 SIGKILLed itself while saving step 9" in out
    assert "9.orbax-checkpoint-tmp" in out
    assert "latest_step() = 6, all_steps() = [6]" in out
    assert "partial checkpoint of step 9: not restored, resumed from step 6" in out
    assert "bitwise identical to the unbroken run" in out
