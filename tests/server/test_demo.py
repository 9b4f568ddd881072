"""`make demo`: it picks its model sensibly, runs end to end on the tiny model, and whatever stops it
(SIGTERM, Ctrl-C, even SIGKILL) leaves no server running and, when it can clean up, no temp directory.

The end-to-end tests run the demo as `make demo` does, in a process of its own (`demo.main(model=…)`
on the session's tiny model), read its output as it comes, and wait on it with bounds, never timings.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_server import demo

from .conftest import READY_TIMEOUT_S

REPO = Path(__file__).resolve().parents[2]
# `make demo`, on a given model; with HOLD the demo stays up after its requests (until signalled), so
# that a signal is sure to find it running.
DEMO = """
import sys, time
from pathlib import Path
from inference_server import demo
if sys.argv[2] == "hold":
    answer = demo.run_requests
    def run_requests(client, labels):
        answer(client, labels)
        print("==> test: holding the demo open", flush=True)
        time.sleep(3600)
    demo.run_requests = run_requests
sys.exit(demo.main(Path(sys.argv[1])))
"""
BOUND_S = READY_TIMEOUT_S + demo.STOP_TIMEOUT_S  # start, requests, drain: a bound, not a timing


def test_model_env_uses_the_calibration_and_sha256_that_come_with_a_model(tmp_path: Path) -> None:
    model = tmp_path / "minilm-rt-abc"
    model.mkdir()
    assert demo.model_env(model) == {}
    (model / "calibration.json").write_text('{"temperature": 1.5}')
    (tmp_path / "minilm-rt-abc.sha256").write_text("ab" * 32 + "\n")
    assert demo.model_env(model) == {
        "CALIBRATION_PARAMS_PATH": str(model / "calibration.json"),
        "MODEL_SHA256": "ab" * 32,
    }


def test_falls_back_to_the_tiny_model_when_the_default_is_not_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setattr(demo, "_default_model", lambda: None)
    monkeypatch.setenv("SENTIMENT_CACHE", str(tmp_path))
    cached = tmp_path / "demo" / "tiny-model"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(tiny_model_dir, target_is_directory=True)  # already built: reused, not rebuilt
    assert demo.model_dir() == (cached, "tiny")
    monkeypatch.setattr(demo, "_default_model", lambda: tiny_model_dir)
    assert demo.model_dir() == (tiny_model_dir, "default")


@pytest.fixture
def default_signal_handlers() -> Iterator[None]:
    """Python's own handlers for the three signals, whatever pytest was started with: a test run started
    in the background (`cmd &`, nohup) ignores SIGINT, and the demo rightly keeps an ignored signal
    ignored, which is not what these tests are about."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("default_signal_handlers")
def test_sigterm_and_sighup_interrupt_like_ctrl_c_and_the_previous_handlers_come_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        interrupts = demo._Interrupts()
        with interrupts.installed():
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(sig)  # returns once the Python handler has run
            # A second signal before the clean-up has begun must not raise inside it (that skipped
            # stopping the server): the first one already started the stop.
            signal.raise_signal(signal.SIGINT)
            assert interrupts.received == 2 and interrupts.hurry
    assert {sig: signal.getsignal(sig) for sig in before} == before
    # While the server is being stopped, a first signal lets its drain go on; a second one cuts it short.
    interrupts = demo._Interrupts()
    interrupts.stopping = True
    with interrupts.installed():
        signal.raise_signal(signal.SIGTERM)
        assert interrupts.received == 1 and not interrupts.hurry
        signal.raise_signal(signal.SIGINT)
        assert interrupts.hurry
    assert {sig: signal.getsignal(sig) for sig in before} == before


class RunningDemo:
    """The demo in a subprocess, its output (the server's included) collected line by line."""

    def __init__(self, model: Path, tmp: Path, *, hold: bool) -> None:
        self.tmpdir = tmp / "tmp"  # TMPDIR: where the demo makes its temporary directory
        self.tmpdir.mkdir()
        env = {**os.environ, "TMPDIR": str(self.tmpdir), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DEMO, str(model), "hold" if hold else "run"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.eof = False
        self._changed = threading.Condition()
        # A daemon: a server left behind (the bug these tests look for) would hold the pipe open.
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.eof = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first output line matching `pattern`, waiting for it up to BOUND_S."""
        deadline = time.monotonic() + BOUND_S
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if found := re.search(pattern, line):
                        return found
                seen = len(self.lines)
                if self.eof:
                    pytest.fail(f"the demo ended (rc {self.proc.poll()}) before {pattern!r}:\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no line matching {pattern!r} within {BOUND_S:.0f}s:\n{self.output}")
                self._changed.wait(timeout=left)

    def server_pid(self) -> int:
        return int(self.wait_for(r"\(server pid (\d+)\)").group(1))

    def finish(self) -> int:
        """The demo's exit code, once it has exited and its output has been read to the end."""
        try:
            rc = self.proc.wait(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not exit within {BOUND_S:.0f}s:\n{self.output}")
        # The pipe closes once the demo and any server it left behind have exited: wait a little for the
        # end of the output, not for a leftover server (the tests check for that themselves).
        with self._changed:
            self._changed.wait_for(lambda: self.eof, timeout=10)
        return rc

    def demo_dirs(self) -> list[Path]:
        return sorted(self.tmpdir.glob("sentiment-demo-*"))


def server_alive(pid: int) -> bool:
    """`pid` is a live (not zombie) `python -m inference_server.main`; a reused pid does not count."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and b"inference_server.main" in cmdline


def wait_until_gone(pid: int) -> bool:
    deadline = time.monotonic() + BOUND_S
    while server_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not server_alive(pid)


@pytest.fixture
def running(tiny_model_dir: Path, tmp_path: Path) -> Iterator[list[RunningDemo]]:
    """Started demos; whatever a failing test leaves behind (demo, server) is killed by its pid."""
    demos: list[RunningDemo] = []
    yield demos
    for d in demos:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        for match in re.finditer(r"\(server pid (\d+)\)", d.output):
            if server_alive(pid := int(match.group(1))):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_nothing_behind(
    running: list[RunningDemo], tiny_model_dir: Path, tmp_path: Path
) -> None:
    d = RunningDemo(tiny_model_dir, tmp_path, hold=False)
    running.append(d)
    pid = d.server_pid()
    assert d.finish() == 0, d.output
    out = d.lines
    for title in [f"POST /infer {text!r}" for text in demo.SAMPLES] + [
        "POST /infer/batch",
        "POST /explain",
        "POST /feedback",
    ]:
        at = next(i for i, line in enumerate(out) if line.startswith(f"--> {title}"))
        assert out[at + 1].startswith("    HTTP 200 "), d.output
    assert any(line.startswith("    HTTP 422 ") and "empty_text" in line for line in out), d.output
    assert any(line.startswith("    HTTP 415 ") for line in out), d.output
    # what to try next: the same model, a curl line, /docs, the README
    assert any(f"MODEL_PATH={tiny_model_dir}" in line and "sentiment-server" in line for line in out)
    assert any(line.strip().startswith("curl -s localhost:8080/infer") for line in out)
    assert any("http://localhost:8080/docs" in line for line in out)
    assert any("README.md" in line for line in out)
    assert out[-1] == "==> server stopped (exit code 0)", d.output
    assert "Traceback" not in d.output
    assert not server_alive(pid)
    assert d.demo_dirs() == []


@pytest.mark.slow
def test_sigterm_stops_the_demo_and_its_server_cleanly(
    running: list[RunningDemo], tiny_model_dir: Path, tmp_path: Path
) -> None:
    d = RunningDemo(tiny_model_dir, tmp_path, hold=True)
    running.append(d)
    pid = d.server_pid()
    d.wait_for(r"^==> ready: ")
    d.wait_for(r"^==> test: holding the demo open")
    assert server_alive(pid)
    [tmp] = d.demo_dirs()
    assert (tmp / "feedback.sqlite3").is_file()  # the directory whose removal is checked below
    d.proc.send_signal(signal.SIGTERM)
    assert d.finish() == demo.EXIT_INTERRUPTED, d.output
    assert d.lines[-1] == demo.INTERRUPTED, d.output
    assert "Traceback" not in d.output
    assert not server_alive(pid)
    assert d.demo_dirs() == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_server_dies_with_the_demo_even_on_sigkill(
    running: list[RunningDemo], tiny_model_dir: Path, tmp_path: Path
) -> None:
    d = RunningDemo(tiny_model_dir, tmp_path, hold=True)
    running.append(d)
    pid = d.server_pid()
    d.wait_for(r"^==> test: holding the demo open")
    assert server_alive(pid)
    d.proc.kill()  # no clean-up can run: the kernel's parent-death signal is what stops the server
    d.proc.wait()
    assert wait_until_gone(pid), f"server pid {pid} outlived the demo:\n{d.output}"
