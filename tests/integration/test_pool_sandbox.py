"""The process pool where Lambda runs it: without /dev/shm.

A script runs in a private mount namespace whose /dev/shm is an empty read-only tmpfs, as
on Lambda (``unshare -m``; needs root or user namespaces, skipped with the reason when not
permitted). There ``concurrent.futures.ProcessPoolExecutor`` must fail (the proof that the
sandbox is real) and the pool must work, worker deaths included. The same script outside
the sandbox is the control: there the executor works.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_SHM = "mount -t tmpfs -o ro,size=0 none /dev/shm"
TIMEOUT_S = 120

SCRIPT = """
import asyncio, json, os, signal
from concurrent.futures import ProcessPoolExecutor

from lambdaloop.compute.pool import ProcessPool, WorkerDied

def square(x):
    return x * x

def die(_):
    os.kill(os.getpid(), signal.SIGKILL)

report = {}
try:
    with ProcessPoolExecutor(2) as executor:
        report["executor"] = list(executor.map(square, range(10)))
except Exception as exc:
    report["executor"] = f"{type(exc).__name__}: {exc}"

async def main():
    pool = ProcessPool(2)
    try:
        report["map"] = await pool.map(square, range(10_000))
        report["run"] = await pool.run(square, 12)
        try:
            await pool.run(die, None)
        except WorkerDied as exc:
            report["died"] = exc.exitcode
        report["after"] = await pool.map(square, range(10), chunksize=1)
        report["workers"] = len(pool.pids)
    finally:
        await pool.aclose()

asyncio.run(main())
print(json.dumps(report))
"""


def run_script(sandboxed: bool) -> dict[str, Any]:
    command = [sys.executable, "-c", SCRIPT]
    if sandboxed:
        command = ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{NO_SHM} && "$@"']
        command += ["sh", sys.executable, "-c", SCRIPT]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "shared")}
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@functools.cache
def sandbox_refusal() -> str | None:
    """Why no sandbox can be made here, or ``None`` when it can (probed once)."""
    if shutil.which("unshare") is None:
        return "no unshare binary"
    probe = ["unshare", "-m", "--propagation", "private", "sh", "-c", NO_SHM]
    try:
        done = subprocess.run(probe, check=False, capture_output=True, text=True, timeout=TIMEOUT_S)
    except OSError as exc:
        return f"unshare cannot run: {exc}"
    if done.returncode != 0:
        return f"unshare/mount not permitted here: {done.stderr.strip() or done.returncode}"
    return None


@pytest.fixture
def sandbox() -> None:
    reason = sandbox_refusal()
    if reason is not None:
        pytest.skip(f"cannot hide /dev/shm: {reason}")


@pytest.mark.usefixtures("sandbox")
def test_without_dev_shm_the_executor_fails_and_the_pool_works() -> None:
    report = run_script(sandboxed=True)
    assert isinstance(report["executor"], str)  # "OSError: ...", not its results
    assert "Error" in report["executor"]
    assert report["map"] == [x * x for x in range(10_000)]
    assert report["run"] == 144
    assert report["died"] == -9
    assert report["after"] == [x * x for x in range(10)]
    assert report["workers"] == 2


def test_the_control_with_dev_shm_has_a_working_executor() -> None:
    report = run_script(sandboxed=False)
    assert report["executor"] == [x * x for x in range(10)]
    assert report["map"] == [x * x for x in range(10_000)]
