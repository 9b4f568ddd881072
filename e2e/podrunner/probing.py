"""Running one probe attempt against a pod (I/O)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from typing import Any

import httpx

from e2e.podrunner.probes import ProbeSpec, resolve_port


async def run_probe(
    spec: ProbeSpec,
    *,
    container: Mapping[str, Any],
    pod_ip: str,
    env: Mapping[str, str],
    cwd: str,
    client: httpx.AsyncClient,
) -> tuple[bool, str]:
    """(passed, message) of one attempt; never raises for a failing target."""
    handler = spec.handler
    try:
        if "httpGet" in handler:
            return await _http_get(handler["httpGet"], container, pod_ip, spec.timeout_s, client)
        if "tcpSocket" in handler:
            return await _tcp(handler["tcpSocket"], container, pod_ip, spec.timeout_s)
        if "exec" in handler:
            return await _exec(list(handler["exec"].get("command") or []), env, cwd, spec.timeout_s)
    except (OSError, ValueError, httpx.HTTPError, TimeoutError) as exc:
        return False, f"{spec.describe()}: {type(exc).__name__}: {exc}"
    return False, "grpc probes are not supported by the podrunner; use httpGet, tcpSocket or exec"


async def _http_get(
    get: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_ip: str,
    timeout: float,
    client: httpx.AsyncClient,
) -> tuple[bool, str]:
    scheme = str(get.get("scheme", "HTTP")).lower()
    host = get.get("host") or pod_ip
    port = resolve_port(get.get("port", 80), container)
    path = get.get("path", "/") or "/"
    if not path.startswith("/"):
        path = "/" + path
    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
    headers.setdefault("User-Agent", "kube-probe/podrunner")
    response = await client.get(f"{scheme}://{host}:{port}{path}", headers=headers, timeout=timeout)
    ok = 200 <= response.status_code < 400
    return ok, f"HTTP probe {path} returned {response.status_code}"


async def _tcp(
    sock: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str, timeout: float
) -> tuple[bool, str]:
    host = sock.get("host") or pod_ip
    port = resolve_port(sock.get("port", 0), container)
    async with asyncio.timeout(timeout):
        _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"tcp {host}:{port} accepted"


async def _exec(command: list[str], env: Mapping[str, str], cwd: str, timeout: float) -> tuple[bool, str]:
    if not command:
        return False, "exec probe has no command"
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await proc.communicate()
    except TimeoutError:
        return False, f"exec probe timed out after {timeout:g}s"
    finally:
        if proc.returncode is None:  # timed out, or the container stopped while probing
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    text = output.decode("utf-8", "replace").strip()[-500:]
    return proc.returncode == 0, f"exit {proc.returncode}: {text}"
