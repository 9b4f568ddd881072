from __future__ import annotations

from e2e.podrunner.runner import base_environment, node_internal_ip


def test_base_environment_puts_the_venv_first_and_inherits_little() -> None:
    environ = {
        "PATH": "/usr/bin:/venv/bin:/bin",
        "HOME": "/root",
        "AWS_SECRET_ACCESS_KEY": "x",
        "LANG": "C.UTF-8",
    }
    env = base_environment(environ, "/venv/bin/python", ("127.0.0.1", 6443))
    assert env["PATH"] == "/venv/bin:/usr/bin:/bin"
    assert env["HOME"] == "/root" and env["LANG"] == "C.UTF-8"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("127.0.0.1", "6443")


def test_node_internal_ip_must_be_loopback() -> None:
    node = {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}
    assert node_internal_ip(node) == "127.0.0.1"
    assert (
        node_internal_ip({"status": {"addresses": [{"type": "InternalIP", "address": "10.1.2.3"}]}})
        == "127.0.0.1"
    )
