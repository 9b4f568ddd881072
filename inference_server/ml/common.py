"""Small pieces every ML command shares: the cache root, exit codes, one-line CLI errors, JSON I/O."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

from inference_server.contract import Env
from inference_server.runtime.atomic import write_bytes_atomic

EXIT_OK: Final = 0
EXIT_GATE_FAILED: Final = 1  # the command ran and its verdict is "fail" (compare, audits)
EXIT_BAD_INPUT: Final = 2  # missing/corrupt input, bad arguments: nothing was decided

CACHE_ENV: Final = "SENTIMENT_CACHE"


class MLInputError(Exception):
    """An input the user can fix (missing file, corrupt dataset, unusable split); the message says how."""


def cache_root() -> Path:
    raw = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "sentiment-rollouts")
    return Path(raw).expanduser()


def cli_error(command: str, message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"sentiment-ml {command}: error: {message}", file=sys.stderr)
    return code


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers never see a half-written file (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MLInputError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise MLInputError(f"{what} is not valid JSON: {path}: {e}") from None


def add_model_arguments(parser: argparse.ArgumentParser, *, calibration: bool = True) -> None:
    """--model, --model-version and (optionally) --calibration, defaulting to the environment the server
    image sets (contract.Env), so a Job in that image needs no flags for them."""
    parser.add_argument(
        "--model",
        type=Path,
        default=os.environ.get(Env.MODEL_PATH),
        help=f"model directory (default: ${Env.MODEL_PATH})",
    )
    parser.add_argument(
        "--model-version",
        default=os.environ.get(Env.MODEL_VERSION) or None,
        help=f"version recorded in outputs (default: ${Env.MODEL_VERSION}, else the model directory's name)",
    )
    if calibration:
        parser.add_argument(
            "--calibration",
            type=Path,
            default=os.environ.get(Env.CALIBRATION_PARAMS_PATH) or None,
            help=f"calibration params JSON, confidences as served (default: ${Env.CALIBRATION_PARAMS_PATH})",
        )


def model_version_of(args: argparse.Namespace) -> str:
    """--model-version, else $MODEL_VERSION (its default), else the model directory's name: reports and
    metrics then name the model even when nobody passed a version."""
    if args.model_version:
        return str(args.model_version)
    return Path(args.model).resolve().name if args.model else "unknown"


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """--data-dir: the dataset root that `sentiment-ml datasets` builds (default: under the cache)."""
    parser.add_argument(
        "--data-dir", type=Path, default=None, help=f"dataset root (default: ${CACHE_ENV}/datasets)"
    )
