"""Whether a container's declared ports are free on its pod IP.

A pod IP is a loopback address any local process can bind (an orphan of a stopped cluster, a
program listening on 0.0.0.0). A container whose port is already bound cannot serve, and its probes
would be answered by that other process: such a container is not started at all, like one the
kubelet cannot create.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_SOCKET_TYPES = {"TCP": socket.SOCK_STREAM, "UDP": socket.SOCK_DGRAM}


@dataclass(frozen=True)
class DeclaredPort:
    port: int
    protocol: str  # "TCP" | "UDP"


def declared_ports(container: Mapping[str, Any]) -> list[DeclaredPort]:
    """The container's TCP and UDP `ports[].containerPort` (SCTP cannot be checked here)."""
    found = []
    for entry in container.get("ports") or []:
        protocol = str(entry.get("protocol") or "TCP").upper()
        port = entry.get("containerPort")
        if protocol in _SOCKET_TYPES and isinstance(port, int) and 0 < port < 65536:
            found.append(DeclaredPort(port, protocol))
    return found


def _bindable(ip: str, declared: DeclaredPort) -> bool:
    with socket.socket(socket.AF_INET, _SOCKET_TYPES[declared.protocol]) as sock:
        if declared.protocol == "TCP":
            # As servers do (Python's http.server, Go's net.Listen): a connection of an earlier run
            # lingering in TIME_WAIT must not count as someone else's server.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, declared.port))
        except OSError:
            return False
    return True


def bound_elsewhere(ip: str, ports: Iterable[DeclaredPort]) -> list[str]:
    """`IP:PORT/PROTOCOL` of each declared port that some process already holds on `ip`."""
    return [f"{ip}:{p.port}/{p.protocol}" for p in ports if not _bindable(ip, p)]


def conflict_message(container: str, taken: list[str]) -> str:
    return (
        f"cannot start container {container}: {', '.join(taken)} {'is' if len(taken) == 1 else 'are'} "
        "already bound by a process outside this pod (another cluster on this machine, or an orphan "
        "of a stopped one); "
        "retrying until it is free"
    )
