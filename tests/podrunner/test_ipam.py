from __future__ import annotations

import pytest

from e2e.podrunner.ipam import IpPool, PoolExhausted


def test_addresses_are_unique_stable_per_owner_and_inside_the_cidr() -> None:
    pool = IpPool.parse("127.10.0.0/24")
    first, second = pool.allocate("a"), pool.allocate("b")
    assert first != second
    assert pool.allocate("a") == first
    assert first.startswith("127.10.0.") and second.startswith("127.10.0.")
    assert first not in ("127.10.0.0", "127.10.0.255")


def test_released_addresses_are_not_reused_at_once() -> None:
    pool = IpPool.parse("127.10.0.0/24")
    first = pool.allocate("a")
    pool.release("a")
    assert pool.allocate("b") != first


def test_preferred_address_is_kept_when_free_for_adoption() -> None:
    pool = IpPool.parse("127.10.0.0/16")
    assert pool.allocate("a", preferred="127.10.3.4") == "127.10.3.4"
    assert pool.allocate("b", preferred="127.10.3.4") != "127.10.3.4"  # taken
    assert pool.allocate("c", preferred="10.0.0.1") != "10.0.0.1"  # outside the CIDR


def test_exhaustion_and_bad_cidrs_are_reported() -> None:
    pool = IpPool.parse("127.10.0.0/30")  # 4 addresses, 2 usable
    pool.allocate("a")
    pool.allocate("b")
    with pytest.raises(PoolExhausted, match="no free pod IP"):
        pool.allocate("c")
    with pytest.raises(ValueError, match="loopback"):
        IpPool.parse("10.0.0.0/16")
    with pytest.raises(ValueError, match="too small"):
        IpPool.parse("127.10.0.0/31")
