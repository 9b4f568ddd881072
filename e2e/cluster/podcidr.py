"""One loopback pod CIDR per running cluster on this machine.

A cluster hands out pod IPs from 127.N.0.0/16. Two clusters on one machine (two CI jobs, or
`make cluster-up` next to the e2e fixture's own cluster) must never share N: the second one's
probes and Prometheus scrapes would reach the first one's servers at the same IP and port.

A cluster holds N by binding the abstract Unix socket `RESERVATION_PREFIX + N`. Abstract names
are scoped to the network namespace, exactly the scope in which 127/8 addresses are shared, and the
kernel frees a name when its last descriptor closes: a cluster that is gone, however it went,
frees its CIDR with no lock file to clean up. The launcher binds the name and hands the descriptor
to every process of the cluster, so N stays held until the last of them (Prometheus and pod-sd
scrape 127.N as long as they run, even after the pod runner died) has exited.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from e2e.cluster.processes import StartError

# 127.0/16 holds 127.0.0.1, where the control plane listens; 127.10/16 was every cluster's CIDR
# before CIDRs were reserved: a cluster still running that code keeps it to itself.
OCTETS = range(11, 255)
RESERVATION_PREFIX = "sentiment-rollouts/pod-cidr/"


class CidrsExhausted(StartError):
    """Every candidate CIDR is held by a running cluster."""


def cidr(octet: int) -> str:
    return f"127.{octet}.0.0/16"


def reservation_name(octet: int) -> str:
    return f"\0{RESERVATION_PREFIX}{octet}"


@dataclass
class Reservation:
    """A held pod CIDR; it stays held while any process keeps `fileno()` open."""

    cidr: str
    sock: socket.socket

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _try_bind(octet: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(reservation_name(octet))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    return sock


def reserve(octets: Iterable[int] = OCTETS) -> Reservation:
    """The first CIDR no other cluster holds, held until the returned reservation is closed."""
    candidates = list(octets)
    for octet in candidates:
        sock = _try_bind(octet)
        if sock is not None:
            return Reservation(cidr(octet), sock)
    span = f"{cidr(candidates[0])} … {cidr(candidates[-1])}" if candidates else "(none)"
    raise CidrsExhausted(
        f"every pod CIDR {span} is held by a running cluster; stop one "
        "(`make cluster-down`, or `python -m e2e.cluster down --state-dir DIR`)"
    )


def held(octet: int) -> bool:
    """Whether some running cluster holds 127.`octet`.0.0/16 now."""
    sock = _try_bind(octet)
    if sock is None:
        return True
    sock.close()
    return False
