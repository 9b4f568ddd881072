"""`python -m e2e.podrunner --kubeconfig K --node NODE --state-dir D [--pod-cidr 127.10.0.0/16]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from e2e.podrunner.runner import Runner


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.podrunner",
        description="Run the Pods bound to a fake (KWOK) node as local processes with loopback pod IPs.",
    )
    parser.add_argument("--kubeconfig", required=True, help="admin kubeconfig of the local control plane")
    parser.add_argument("--node", required=True, help="the Node whose Pods this runner owns")
    parser.add_argument(
        "--state-dir", required=True, type=Path, help="volumes, logs (logs/NS/POD/CONTAINER.log)"
    )
    parser.add_argument("--pod-cidr", default="127.10.0.0/16", help="loopback CIDR for pod IPs")
    parser.add_argument(
        "--grace-cap",
        type=float,
        default=10.0,
        help="longest wait between SIGTERM and SIGKILL, whatever the pod asks (seconds)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call drowns the lifecycle
    if not Path(args.kubeconfig).is_file():
        print(
            f"podrunner: kubeconfig {args.kubeconfig} does not exist; start the control plane first",
            file=sys.stderr,
        )
        return 2
    try:
        runner = Runner(
            kubeconfig=args.kubeconfig,
            node=args.node,
            state_dir=args.state_dir,
            pod_cidr=args.pod_cidr,
            grace_cap_s=args.grace_cap,
        )
    except ValueError as exc:
        print(f"podrunner: {exc}", file=sys.stderr)
        return 2
    args.state_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_serve(runner))


async def _serve(runner: Runner) -> int:
    task = asyncio.create_task(runner.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    logging.getLogger("podrunner").info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
