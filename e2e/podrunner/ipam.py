"""Pod IP allocation from a loopback CIDR.

Every 127.0.0.0/8 address routes to `lo` on Linux, so a process can bind any of them: a pod's
server listens on its own IP and two pods can both use port 8080. Addresses are handed out
round-robin so that a released IP is not reused at once (a just-stopped process may still hold it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class PoolExhausted(RuntimeError):
    """Every usable address of the CIDR is taken."""


@dataclass
class IpPool:
    cidr: ipaddress.IPv4Network
    _by_owner: dict[str, ipaddress.IPv4Address] = field(default_factory=dict)
    _cursor: int = 0

    @classmethod
    def parse(cls, cidr: str) -> IpPool:
        network = ipaddress.ip_network(cidr, strict=True)
        if not isinstance(network, ipaddress.IPv4Network) or not network.subnet_of(LOOPBACK):
            raise ValueError(f"pod CIDR {cidr!r} must lie inside 127.0.0.0/8 (loopback) so pods can bind it")
        if network.num_addresses < 4:
            raise ValueError(f"pod CIDR {cidr!r} is too small; use a /30 or larger")
        return cls(network)

    def _usable(self, address: ipaddress.IPv4Address) -> bool:
        # .0 and .255 host bytes confuse people reading addresses; the network's first and
        # last addresses are never handed out.
        last_octet = int(address) & 0xFF
        return address not in (self.cidr.network_address, self.cidr.broadcast_address) and last_octet not in (
            0,
            255,
        )

    def allocate(self, owner: str, preferred: str | None = None) -> str:
        """The owner's address: the one it has, else `preferred` when free and usable, else the next free."""
        if owner in self._by_owner:
            return str(self._by_owner[owner])
        taken = set(self._by_owner.values())
        if preferred:
            candidate = ipaddress.ip_address(preferred)
            if (
                isinstance(candidate, ipaddress.IPv4Address)
                and candidate in self.cidr
                and candidate not in taken
                and self._usable(candidate)
            ):
                self._by_owner[owner] = candidate
                return str(candidate)
        size = self.cidr.num_addresses
        base = int(self.cidr.network_address)
        for step in range(size):
            offset = (self._cursor + step) % size
            candidate = ipaddress.IPv4Address(base + offset)
            if candidate not in taken and self._usable(candidate):
                self._cursor = (offset + 1) % size
                self._by_owner[owner] = candidate
                return str(candidate)
        raise PoolExhausted(f"no free pod IP left in {self.cidr} ({len(taken)} in use)")

    def release(self, owner: str) -> None:
        self._by_owner.pop(owner, None)

    def in_use(self) -> dict[str, str]:
        return {owner: str(ip) for owner, ip in self._by_owner.items()}
