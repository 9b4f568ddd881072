from __future__ import annotations

from e2e.podrunner.paths import MountTable

TABLE = MountTable.of(
    {
        "/etc/sentiment": "/state/pod-a/volumes/config",
        "/etc/sentiment/keys/": "/state/pod-a/volumes/keys",
        "/m": "/pvc/m",
    }
)


def test_prefix_is_rewritten_and_longest_mount_wins() -> None:
    assert TABLE.translate("/etc/sentiment") == "/state/pod-a/volumes/config"
    assert (
        TABLE.translate("/etc/sentiment/calibration.json") == "/state/pod-a/volumes/config/calibration.json"
    )
    assert TABLE.translate("/etc/sentiment/keys/k.pem") == "/state/pod-a/volumes/keys/k.pem"


def test_only_whole_path_components_match() -> None:
    assert TABLE.translate("/etc/sentimental") == "/etc/sentimental"
    assert TABLE.translate("/mnt/data") == "/mnt/data"
    assert TABLE.translate("relative/etc/sentiment") == "relative/etc/sentiment"


def test_flag_and_assignment_forms() -> None:
    assert TABLE.translate("--model=/m/v1") == "--model=/pvc/m/v1"
    assert TABLE.translate("MODEL=/m") == "MODEL=/pvc/m"
    assert TABLE.translate("--model=/other") == "--model=/other"


def test_env_and_args() -> None:
    assert TABLE.translate_env({"MODEL_PATH": "/m/x", "OTHER": "v"}) == {
        "MODEL_PATH": "/pvc/m/x",
        "OTHER": "v",
    }
    assert TABLE.translate_args(["serve", "--dir", "/m"]) == ["serve", "--dir", "/pvc/m"]
