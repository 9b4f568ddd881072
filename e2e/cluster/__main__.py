"""`python -m e2e.cluster up|down|status [--state-dir DIR]` (`make cluster-up` / `make cluster-down`).

`up` leaves the cluster running and prints the admin kubeconfig's path as its last line.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from e2e.cluster import launcher
from e2e.cluster.manifest import ManifestError
from e2e.cluster.processes import StartError


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM during `up` takes the same path as Ctrl-C: stop what was started, then exit.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the cluster keeps its files "
        f"(default: $SENTIMENT_CLUSTER_DIR or {launcher.default_state_dir()})",
    )
    args = parser.parse_args(argv)
    if args.command == "up":
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            cluster = launcher.up(args.state_dir)
        except (ManifestError, StartError) as exc:
            print(f"cluster: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("cluster: interrupted; everything started was stopped", file=sys.stderr)
            return 130
        print(
            f"export KUBECONFIG={cluster.kubeconfig}   # kubectl get nodes,crds", file=sys.stderr, flush=True
        )
        print(cluster.kubeconfig, flush=True)
        return 0
    if args.command == "down":
        problems = launcher.down(args.state_dir)
        for problem in problems:
            print(f"cluster: {problem}", file=sys.stderr)
        print("cluster: stopped", file=sys.stderr)
        return 1 if any("still listening" in p for p in problems) else 0
    ok, lines = launcher.status(args.state_dir)
    print("\n".join(lines))
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
