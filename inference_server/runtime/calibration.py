"""Temperature scaling: the calibration parameters file and how it turns logits into probabilities."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference_server.runtime.atomic import write_bytes_atomic

CALIBRATION_SCHEMA_VERSION = 1


class CalibrationError(ValueError):
    """The calibration parameters file is missing, malformed or out of range."""


@dataclass(frozen=True)
class CalibrationParams:
    """What CALIBRATION_PARAMS_PATH holds. Logits are divided by `temperature` before softmax."""

    temperature: float
    method: str = "temperature"
    fitted_on: str = ""  # dataset name and sha256 the temperature was fitted on
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. ece/nll before and after
    schema_version: int = CALIBRATION_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.method != "temperature":
            raise CalibrationError(f"unsupported calibration method {self.method!r}")
        if not (math.isfinite(self.temperature) and 0.01 <= self.temperature <= 100.0):
            raise CalibrationError(f"temperature must be within [0.01, 100], got {self.temperature}")
        # A fit on NaN logits still returns a temperature inside the bounds; its NaN figures are the
        # only trace of it, so a file carrying them is refused rather than served.
        for name, value in self.metrics.items():
            if not math.isfinite(value):
                raise CalibrationError(f"calibration metric {name!r} must be a finite number, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path | str) -> None:
        """Atomically (a server may be reading it), and never with a bare NaN, which is not JSON."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        write_bytes_atomic(Path(path), text.encode("utf-8"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationParams:
        if not isinstance(data, dict) or "temperature" not in data:
            raise CalibrationError("calibration params need a 'temperature' field")
        temperature = data["temperature"]
        # A JSON number: `true` or "2" is a file some other tool wrote, not a fitted temperature.
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise CalibrationError(f"temperature must be a JSON number, got {temperature!r}")
        version = data.get("schema_version", CALIBRATION_SCHEMA_VERSION)
        if type(version) is not int or version != CALIBRATION_SCHEMA_VERSION:
            raise CalibrationError(
                f"schema_version {version!r} is not {CALIBRATION_SCHEMA_VERSION}, the only one this server "
                "reads: the file was written by another sentiment-ml version; refit it with this one's "
                "`sentiment-ml calibrate`, or upgrade the server"
            )
        try:
            return cls(
                temperature=float(temperature),
                method=str(data.get("method", "temperature")),
                fitted_on=str(data.get("fitted_on", "")),
                metrics={str(k): float(v) for k, v in dict(data.get("metrics", {})).items()},
                schema_version=CALIBRATION_SCHEMA_VERSION,
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"malformed calibration params: {exc}") from exc

    @classmethod
    def load(cls, path: Path | str) -> CalibrationParams:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CalibrationError(f"calibration params file not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"calibration params file {path} is not valid JSON: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise CalibrationError(
                f"calibration params file {path} is not UTF-8 JSON ({exc.reason} at byte {exc.start}): "
                "write it as UTF-8, as `sentiment-ml calibrate` does"
            ) from exc
        except OSError as exc:
            raise CalibrationError(
                f"cannot read calibration params file {path}: {exc.strerror or exc}"
            ) from exc
        return cls.from_dict(data)


def softmax(logits: npt.ArrayLike) -> npt.NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)  # shift for numerical stability
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out


def probabilities(logits: npt.ArrayLike, params: CalibrationParams | None) -> npt.NDArray[np.float64]:
    """Class probabilities from logits, temperature-scaled when calibration params are given."""
    z = np.asarray(logits, dtype=np.float64)
    if params is not None:
        z = z / params.temperature
    return softmax(z)
