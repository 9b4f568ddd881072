"""Container processes: exit codes, signals, and stopping the whole process group."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from e2e.podrunner.processes import ContainerProcess, StartError


def env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


async def test_exit_code_and_log_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "c.log"
    argv = [sys.executable, "-c", "import sys; print('hello'); sys.stderr.write('oops\\n'); sys.exit(3)"]
    process = await ContainerProcess.start(argv, env=env(), cwd=str(tmp_path), log_path=log)
    result = await process.wait()
    assert (result.code, result.signal) == (3, None)
    assert sorted(log.read_text().split()) == ["hello", "oops"]  # one file for both streams


async def test_stop_kills_the_group_and_escalates_to_sigkill(tmp_path: Path) -> None:
    # The shell ignores SIGTERM and has a child: both must be gone after stop().
    script = "trap '' TERM; sleep 60 & echo $! > child.pid; wait"
    process = await ContainerProcess.start(
        ["/bin/sh", "-c", script], env=env(), cwd=str(tmp_path), log_path=tmp_path / "c.log"
    )
    pid_file = tmp_path / "child.pid"
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.02)
    child = int(pid_file.read_text())
    await process.stop(grace_s=0.3)
    assert not process.alive
    assert process.proc.returncode == -signal.SIGKILL
    for _ in range(100):  # the orphan is reaped by whoever adopted it; a zombie does not count
        if not running(child):
            break
        await asyncio.sleep(0.02)
    assert not running(child)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def test_missing_command_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(StartError, match="executable file not found"):
        await ContainerProcess.start(
            ["no-such-binary-xyz"], env=env(), cwd=str(tmp_path), log_path=tmp_path / "l"
        )
    with pytest.raises(StartError, match="set `command`"):
        await ContainerProcess.start([], env=env(), cwd=str(tmp_path), log_path=tmp_path / "l")
