"""`sentiment-ml`: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy
imports (torch, transformers) inside functions, so ``sentiment-ml --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from inference_server.ml.common import cli_error

# subcommand -> (module under inference_server.ml, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "datasets": ("datasets", "build the baseline datasets (JSONL splits + manifest)"),
    "train": ("train", "fine-tune the packaged encoder into a model directory"),
    "evaluate": ("evaluate", "evaluate a model on a dataset split, write metrics.json"),
    "compare": ("compare", "pre-deploy gate: candidate metrics vs the production baseline"),
    "calibrate": ("calibrate", "fit temperature scaling on the validation split"),
    "quantize": ("quantize", "FP32 vs INT8 (torch, ONNX Runtime): size, latency, throughput, F1, agreement"),
    "bias-audit": ("bias_audit", "per-group rates on the curated bias-audit dataset"),
    "explain": ("explain", "per-token saliency for given texts, as an HTML report"),
    "registry": ("registry", "the model registry metadata file (register, promote, list, show)"),
    "drift": ("drift", "drift statistics between a reference and a current window"),
    "reprocess": ("reprocess", "re-score historic records by ID, resumable and shardable"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentiment-ml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(f"inference_server.ml.{module_name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Jobs share their pod's cores with sidecars and, locally, with other work: stop libgomp's idle
    # threads from spinning (see inference_server/main.py). Must precede the first torch import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args))
    except KeyboardInterrupt:
        print("sentiment-ml: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # Last line of defence for a file the command did not validate (an output path that is a
        # directory, a full disk, a permission): the environment is at fault, not the code, so it is
        # a one-line input error.
        return cli_error(args.command, _os_error_text(exc))
    except Exception:
        # Anything else (KeyError, TypeError, …) is a bug: its traceback stays for the report, but the
        # exit code is 2, "nothing decided". Left to the interpreter it would exit 1, which a Job reads
        # as a verdict (gate failed, drift); commands validate their inputs instead of relying on this.
        traceback.print_exc()
        return cli_error(args.command, "internal error (traceback above); no verdict was reached")


def _os_error_text(exc: OSError) -> str:
    if exc.filename is None:
        return str(exc)
    return f"{exc.filename}: {exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())
