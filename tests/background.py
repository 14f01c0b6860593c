"""Subprocesses that tests wait for, started early to run beside the suite.

Some tests only read what a child process printed: tests/sharding_check.py
on eight simulated devices, examples/multihost.py, each README block in a
fresh interpreter. Such a process is declared as a :class:`Job` when its test
module is imported (nothing starts then); its fixture or test calls
:meth:`Job.result`. Once collection is done, conftest.py hands the jobs that
a selected test wants to one worker thread, which runs them one at a time
while the suite goes on, so on an idle machine they cost a second core's time
instead of the suite's. A test that asks for a job the worker has not reached
runs it itself, at once; deselected tests start nothing, and neither does
``--collect-only``. Left-over processes are killed when the session ends.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest

JOBS: list[Job] = []
# The environment the jobs run in, taken before the first test runs, so that
# a test's monkeypatch.setenv does not reach a job started meanwhile.
_ENV: dict[str, str] = {}


@dataclasses.dataclass
class Command:
    """What to run: subprocess.Popen's arguments, the input and a time limit."""

    args: list[str]
    timeout: float
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cwd: str | os.PathLike | None = None  # None: a fresh temporary folder
    input: str | None = None


class Job:
    """One child process whose output some tests read.

    ``command`` is called when the job starts (not at import), with the
    environment to extend; it may skip (``checkout.require``), and the tests
    asking for the result are then skipped alike. ``wanted_by(item)`` says
    whether a collected test needs the job.
    """

    def __init__(
        self,
        name: str,
        command: Callable[[dict[str, str]], Command],
        wanted_by: Callable[[pytest.Item], bool],
    ):
        self.name, self.command, self.wanted_by = name, command, wanted_by
        self._lock = threading.Lock()
        self._claimed = False
        self._done = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._outcome: subprocess.CompletedProcess | BaseException | None = None
        JOBS.append(self)

    def _claim(self) -> bool:
        with self._lock:
            claimed, self._claimed = self._claimed, True
            return not claimed

    def _run(self) -> None:
        try:
            command = self.command(dict(_ENV or os.environ))
            with tempfile.TemporaryDirectory(prefix=f"{self.name}-") as tmp:
                proc = subprocess.Popen(
                    command.args,
                    stdin=subprocess.PIPE if command.input is not None else None,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=command.env,
                    cwd=tmp if command.cwd is None else command.cwd,
                )
                self._proc = proc
                try:
                    out, err = proc.communicate(command.input, command.timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise
            self._outcome = subprocess.CompletedProcess(
                command.args, proc.returncode, out, err
            )
        except BaseException as err:  # a skip, a timeout: re-raised by result()
            self._outcome = err
        finally:
            self._done.set()

    def result(self) -> subprocess.CompletedProcess:
        """The finished process; runs it here if no worker has started it."""
        if self._claim():
            self._run()
        self._done.wait()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def kill(self) -> None:
        """Kills the process if it is still running."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()


_queue: queue.Queue[Job | None] = queue.Queue()
_worker: threading.Thread | None = None


def _work() -> None:
    while (job := _queue.get()) is not None:
        if job._claim():
            job._run()


def start(items: list[pytest.Item]) -> list[Job]:
    """Queues, in declaration order, the jobs some of ``items`` want."""
    global _worker
    _ENV.clear()
    _ENV.update(os.environ)
    wanted = [job for job in JOBS if any(job.wanted_by(item) for item in items)]
    for job in wanted:
        _queue.put(job)
    if wanted and _worker is None:
        _worker = threading.Thread(target=_work, name="background jobs", daemon=True)
        _worker.start()
    return wanted


def stop() -> None:
    """Drops the jobs not started and kills the one running."""
    global _worker
    while True:
        try:
            job = _queue.get_nowait()
        except queue.Empty:
            break
        if job is not None:
            job._claim()  # never started now
    if _worker is not None:
        _queue.put(None)
        _worker = None
    for job in JOBS:
        job.kill()


def in_module(module: Any, fixture: str) -> Callable[[pytest.Item], bool]:
    """``wanted_by`` for a job waited on by ``fixture`` of test module ``module``."""
    name = module if isinstance(module, str) else module.__name__

    def wanted_by(item: pytest.Item) -> bool:
        module = getattr(item, "module", None)
        return (
            module is not None
            and module.__name__ == name
            and fixture in getattr(item, "fixturenames", ())
        )

    return wanted_by
