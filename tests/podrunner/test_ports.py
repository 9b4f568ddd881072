from __future__ import annotations

import socket

from e2e.podrunner.ports import DeclaredPort, bound_elsewhere, conflict_message, declared_ports


def test_declared_ports_are_tcp_by_default_and_sctp_is_left_out() -> None:
    container = {
        "ports": [
            {"containerPort": 8080},
            {"containerPort": 9090, "protocol": "UDP", "name": "stats"},
            {"containerPort": 7000, "protocol": "SCTP"},
        ]
    }
    assert declared_ports(container) == [DeclaredPort(8080, "TCP"), DeclaredPort(9090, "UDP")]
    assert declared_ports({"name": "no-ports"}) == []


def test_a_port_someone_listens_on_is_reported_until_it_is_closed() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        assert bound_elsewhere("127.0.0.1", [DeclaredPort(port, "TCP")]) == [f"127.0.0.1:{port}/TCP"]
    finally:
        holder.close()
    assert bound_elsewhere("127.0.0.1", [DeclaredPort(port, "TCP")]) == []


def test_a_bound_udp_port_is_reported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert bound_elsewhere("127.0.0.1", [DeclaredPort(port, "UDP")]) == [f"127.0.0.1:{port}/UDP"]


def test_a_wildcard_listener_takes_the_port_on_every_pod_ip() -> None:
    # A server on 0.0.0.0 would answer the pod's probes at its pod IP as well.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert bound_elsewhere("127.10.0.3", [DeclaredPort(port, "TCP")]) == [f"127.10.0.3:{port}/TCP"]


def test_the_conflict_message_names_the_address() -> None:
    message = conflict_message("web", ["127.11.0.1:8080/TCP"])
    assert message.startswith("cannot start container web: 127.11.0.1:8080/TCP is already bound")
