"""Starting, watching and stopping the cluster's processes.

Each process runs in its own session (so its process group can be signalled as a whole), logs to
one file, and carries STATE_ENV=<state dir> in its environment, which its children inherit. `stop`
signals exactly the recorded processes (checked by pid *and* start time, so a reused pid is never
hit) and then sweeps any process still carrying this cluster's marker: the servers a pod runner
started, for example, when the pod runner itself was killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from e2e.cluster.config import STATE_ENV, ProcessSpec, ReadyCheck

PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A process did not start or did not become ready; the message carries its log's tail."""


@dataclass(frozen=True)
class Record:
    """What state.json keeps about one started process."""

    name: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a reused pid from ours
    log: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Record:
        return cls(
            name=str(data["name"]),
            pid=int(str(data["pid"])),
            start_ticks=int(str(data["start_ticks"])),
            log=str(data["log"]),
        )


def start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def is_alive(record: Record) -> bool:
    ticks = start_ticks(record.pid)
    if ticks is None or ticks != record.start_ticks:
        return False
    # A zombie (exited, not yet reaped by a parent) is not running.
    try:
        state = Path(f"/proc/{record.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    # Fixture-owned clusters: if pytest is killed outright (SIGKILL), the kernel kills our children
    # too, so no control plane outlives its test session. SIGKILL, not SIGTERM: all of them would
    # get it at once, and a kube-apiserver whose etcd is going away waits in graceful shutdown forever.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    spec: ProcessSpec, *, root: Path, log: Path, die_with_parent: bool, pythonpath: Path | None = None
) -> tuple[subprocess.Popen[bytes], Record]:
    """Start `spec` in `root` (its cwd) with its own session and log; `pythonpath` goes first on
    PYTHONPATH, so `python -m e2e....` finds this repository from any working directory."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, STATE_ENV: str(root)}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p)
    with log.open("ab") as out:
        try:
            proc = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=root,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
                pass_fds=spec.pass_fds,
            )
        except OSError as exc:
            raise StartError(f"{spec.name}: cannot run {spec.argv[0]}: {exc}") from exc
    ticks = start_ticks(proc.pid)
    return proc, Record(name=spec.name, pid=proc.pid, start_ticks=ticks or 0, log=str(log))


def ssl_context(mode: str, ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if mode == "none":
        return None
    if mode == "insecure":
        # The controller-manager and scheduler serve /healthz with a self-signed certificate.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def probe(check: ReadyCheck, ctx: ssl.SSLContext | None) -> tuple[bool, str]:
    """(ready?, what it answered) for one GET. Loopback only: never through a proxy from the environment."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(check.url, timeout=3) as resp:
            body = resp.read(4096).decode(errors="replace")
            return resp.status == 200 and check.expect in body, f"HTTP {resp.status}: {body[:300]}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read(600).decode(errors='replace')}"
    except (OSError, ssl.SSLError) as exc:
        return False, str(exc)


def wait_until(
    what: str,
    condition: Callable[[], tuple[bool, str]],
    *,
    timeout_s: float,
    log: Path | None = None,
    proc: subprocess.Popen[bytes] | None = None,
    interval_s: float = 0.2,
) -> None:
    """Poll `condition` until it holds; on timeout or exit, raise with the last answer and the log's tail."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        if proc is not None and proc.poll() is not None:
            raise StartError(
                f"{what}: the process exited with code {proc.returncode} while starting; "
                f"last lines of {log}:\n{tail(log) if log else ''}"
            )
        ok, last = condition()
        if ok:
            return
        if time.monotonic() > deadline:
            detail = f"; last lines of {log}:\n{tail(log)}" if log else ""
            raise StartError(f"{what}: not ready after {timeout_s:.0f} s (last answer: {last}){detail}")
        time.sleep(interval_s)


def marked_pids(root: Path) -> list[int]:
    """Processes (other than this one) whose environment carries this cluster's marker."""
    marker = f"{STATE_ENV}={root}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ or environ.endswith(marker[:-1]):
            found.append(int(entry.name))
    return found


def _signal_group(record: Record, sig: signal.Signals) -> None:
    if not is_alive(record):
        return
    try:
        os.killpg(record.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(record.pid, sig)


def _wait_gone(records: Iterable[Record], timeout_s: float) -> list[Record]:
    deadline = time.monotonic() + timeout_s
    pending = list(records)
    while pending and time.monotonic() < deadline:
        pending = [r for r in pending if is_alive(r)]
        if pending:
            time.sleep(0.1)
    return [r for r in pending if is_alive(r)]


def _reap(children: Iterable[subprocess.Popen[bytes]]) -> None:
    for proc in children:
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)


# Reverse dependency order: the pod runner stops its pods while the API server still answers, the
# API server drains before etcd goes (the other way round it hangs on storage until killed).
STOP_ORDER: tuple[tuple[str, ...], ...] = (("podrunner",), (), ("kube-apiserver",), ("etcd",))


def stop(
    records: list[Record],
    root: Path,
    *,
    grace_s: float = 15.0,
    children: Iterable[subprocess.Popen[bytes]] = (),
) -> list[str]:
    """Stop every recorded process, batch by batch in STOP_ORDER (`()` stands for all not named),
    then any straggler carrying the marker. Returns one line per process that needed SIGKILL."""
    children = list(children)
    forced: list[str] = []
    named = {name for batch in STOP_ORDER for name in batch}
    for names in STOP_ORDER:
        batch = [r for r in records if (r.name in names if names else r.name not in named)]
        for record in batch:
            _signal_group(record, signal.SIGTERM)
        _reap(children)
        for record in _wait_gone(batch, grace_s):
            forced.append(f"{record.name} (pid {record.pid}) ignored SIGTERM for {grace_s:.0f} s: killed")
            _signal_group(record, signal.SIGKILL)
        _wait_gone(batch, 5)
    stragglers = marked_pids(root)
    for pid in stragglers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while stragglers and time.monotonic() < deadline:
        time.sleep(0.1)
        stragglers = [p for p in marked_pids(root) if p in stragglers]
    for pid in stragglers:
        forced.append(f"pid {pid} (started by this cluster) ignored SIGTERM: killed")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap(children)
    return forced
