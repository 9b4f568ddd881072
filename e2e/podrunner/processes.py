"""Container processes: started in their own process group, logged to a file, stopped as a group."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("podrunner")

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_runner() -> None:
    # In the child between fork and exec: if the runner dies (even by SIGKILL), the kernel sends
    # SIGTERM to the container, so no orphaned server keeps a pod IP and port.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class StartError(RuntimeError):
    """The command could not be executed (kubelet: StartError / RunContainerError)."""


@dataclass
class Exit:
    code: int
    signal: int | None


class ContainerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid

    @classmethod
    async def start(
        cls, argv: list[str], *, env: Mapping[str, str], cwd: str, log_path: Path
    ) -> ContainerProcess:
        if not argv:
            raise StartError("container has no command: the podrunner has no images, so set `command`")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab", buffering=0) as out:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env=dict(env),
                    cwd=cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_runner,
                )
            except FileNotFoundError as exc:
                raise StartError(f'exec: "{argv[0]}": executable file not found in $PATH ({exc})') from exc
            except PermissionError as exc:
                raise StartError(f'exec: "{argv[0]}": permission denied') from exc
            except OSError as exc:
                raise StartError(f'exec: "{argv[0]}": {exc}') from exc
        return cls(proc)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def wait(self) -> Exit:
        code = await self.proc.wait()
        # Children a container left behind die with it, as they would with its cgroup.
        self._signal_group(signal.SIGKILL)
        if code < 0:
            return Exit(128 - code, -code)
        return Exit(code, None)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM the group, then SIGKILL after `grace_s` seconds if it is still there."""
        if not self.alive:
            self._signal_group(signal.SIGKILL)
            return
        self._signal_group(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await self.proc.wait()
        except TimeoutError:
            log.info("pid %d ignored SIGTERM for %.0fs: SIGKILL", self.pid, grace_s)
        self._signal_group(signal.SIGKILL)
        await self.proc.wait()
