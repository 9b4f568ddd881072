"""Small pieces every ML command shares: the cache root, exit codes, one-line CLI errors, JSON I/O."""

from __future__ import annotations

import argparse
import json
import math
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


def is_unit_fraction(value: object) -> bool:
    """A finite real number in [0, 1]. bool is excluded although it is an int (True would read as an
    F1 of 1.0), and NaN must be excluded by hand: it compares False with everything, so a NaN score
    slips past every `>` threshold check."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1
    )


def unit_fraction_arg(text: str) -> float:
    """argparse `type=` for fractions such as --max-f1-drop: float() alone accepts 'nan' and 'inf'."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not is_unit_fraction(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number in [0, 1]")
    return value


def check_output_file(path: Path | None, flag: str) -> None:
    """Refuse an output path that names a directory before any work is done, rather than failing at
    the final write with the work lost."""
    if path is None:
        return
    if path.is_dir():
        raise MLInputError(f"{flag} {path} is a directory; give the path of a file to write")
    # The nearest existing ancestor must be a directory: under a regular file the write fails only at
    # the end ("File exists"), after a verdict was already printed.
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MLInputError(f"{flag} {path}: {ancestor} is a file, not a directory; give a writable path")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers never see a half-written file (temp file + rename).

    allow_nan=False: a bare NaN/Infinity is not JSON (other tools reject the file) and a NaN score has
    already slipped through a gate once; failing here keeps one from ever being written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MLInputError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise MLInputError(f"{what} {path} is a directory, not a JSON file") from None
    except UnicodeDecodeError as e:
        raise MLInputError(f"{what} {path} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise MLInputError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise MLInputError(f"{what} is not valid JSON: {path}: {e}") from None


def add_model_arguments(
    parser: argparse.ArgumentParser, *, calibration: bool = True, version_aliases: tuple[str, ...] = ()
) -> None:
    """--model, --model-version and (optionally) --calibration, defaulting to the environment the server
    image sets (contract.Env), so a Job in that image needs no flags for them. ``version_aliases``
    keeps a command's older spelling of --model-version (e.g. evaluate's --version) working."""
    parser.add_argument(
        "--model",
        type=Path,
        default=os.environ.get(Env.MODEL_PATH) or None,
        help=f"model directory (default: ${Env.MODEL_PATH})",
    )
    parser.add_argument(
        "--model-version",
        *version_aliases,
        default=os.environ.get(Env.MODEL_VERSION) or None,
        help=f"version recorded in outputs (default: ${Env.MODEL_VERSION}, else the model directory's name)",
    )
    parser.add_argument(
        "--model-sha256",
        default=None,
        help=f"refuse the model unless its artifact has this sha256, as the server does (default: "
        f"${Env.MODEL_SHA256} when --model is ${Env.MODEL_PATH})",
    )
    if calibration:
        parser.add_argument(
            "--calibration",
            type=Path,
            default=os.environ.get(Env.CALIBRATION_PARAMS_PATH) or None,
            help=f"calibration params JSON, confidences as served (default: ${Env.CALIBRATION_PARAMS_PATH})",
        )


def load_model_of(args: argparse.Namespace, path: Path | str | None = None, **options: Any) -> Any:
    """The command's model as the server would load it: from ``path`` (default --model), with the
    version outputs record, and refused unless its artifact matches --model-sha256 / $MODEL_SHA256 when
    one is given (a Job in the server image then checks the same artifact the pods serve)."""
    from inference_server.runtime.model import load_model

    model = Path(path if path is not None else args.model)
    return load_model(
        model, version=model_version_of(args), expected_sha256=expected_sha256(args, model), **options
    )


def expected_sha256(args: argparse.Namespace, model: Path) -> str | None:
    """--model-sha256, else $MODEL_SHA256 when the model is the image's $MODEL_PATH: the pod's hash
    belongs to the pod's model, not to a candidate the same image is asked to evaluate."""
    if args.model_sha256:
        return str(args.model_sha256)
    served = os.environ.get(Env.MODEL_PATH)
    if served and Path(served).resolve() == model.resolve():
        return os.environ.get(Env.MODEL_SHA256) or None
    return None


def model_path_of(args: argparse.Namespace) -> Path:
    """--model, else $MODEL_PATH (its default); having neither is an input error, not a traceback."""
    if args.model is None:
        raise MLInputError(f"give --model or set {Env.MODEL_PATH}")
    return Path(args.model)


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
