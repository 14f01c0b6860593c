"""examples/multihost.py: two processes, a SIGKILL mid-save, a bitwise resume.

The example is run as it is meant to be run, ``python examples/multihost.py``
from the repository root: its launcher starts two ``jax.distributed`` worker
processes three times (unbroken, interrupted, restarted) and exits nonzero
unless the restarted run's final parameters and optimizer state equal the
unbroken run's bit for bit and the save killed half-way was not restored.
"""

import sys

import background
import checkout
import pytest

# Runs an example: not in the quick subset (conftest.py).
pytestmark = pytest.mark.slow

TIMEOUT_S = 600  # about 30 s here; three jobs of two compiling processes each


def _command(env: dict[str, str]) -> background.Command:
    example = checkout.require("examples/multihost.py")
    return background.Command(
        [sys.executable, str(example)],
        TIMEOUT_S,
        env=dict(env, JAX_PLATFORMS="cpu"),
        cwd=example.parents[1],
    )


# The example runs in a background job (background.py), started as soon as
# the test below is selected, beside the rest of the suite.
JOB = background.Job("multihost", _command, background.in_module(__name__, "run"))


@pytest.fixture
def run():
    return JOB.result()


def test_multihost_resume_after_sigkill_is_bitwise_identical(run):
    proc = run
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr[-4000:]}"
    assert "process 1 SIGKILLed itself while saving step 9" in out
    assert "9.orbax-checkpoint-tmp" in out
    assert "latest_step() = 6, all_steps() = [6]" in out
    assert "partial checkpoint of step 9: not restored, resumed from step 6" in out
    assert "bitwise identical to the unbroken run" in out
