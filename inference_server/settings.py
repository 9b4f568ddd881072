"""Typed server configuration, read from the environment (names in contract.Env).

Invalid configuration stops start-up: ``load_settings`` raises ``ConfigError`` with one line per bad
variable, naming it, and ``sentiment-server`` prints that and exits 2.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from inference_server.contract import DRIFT_THRESHOLD_DEFAULT, DRIFT_THRESHOLD_MAX, HTTP_PORT, Env
from inference_server.contract import Path as ApiPath
from inference_server.runtime.quantization import DEFAULT_INT8_BACKEND, Int8Backend, normalise_int8_backend


class ConfigError(ValueError):
    """The environment does not describe a valid server; the message names every bad variable."""


def _env(name: Env) -> AliasChoices:
    return AliasChoices(str(name))


PositiveInt = Annotated[int, Field(gt=0)]

# Fields that are policy, not configuration: settable in code (tests, the demo), never from the
# environment. BaseSettings would otherwise read each by its field name (FEEDBACK_RETENTION_DAYS=3650
# would quietly turn the 30-day purge off); they are not in contract.Env.
POLICY_FIELDS = frozenset({"feedback_retention_days", "recent_requests_max", "recent_requests_ttl_seconds"})


class _WithoutPolicy(PydanticBaseSettingsSource):
    """Another source (the environment, a dotenv or secrets directory) minus POLICY_FIELDS."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ delegates to the inner source

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._inner().items() if k not in POLICY_FIELDS}


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, populate_by_name=True, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments (init) may set policy fields; nothing read from outside the process may.
        outside = (env_settings, dotenv_settings, file_secret_settings)
        return (init_settings, *(_WithoutPolicy(source) for source in outside))

    # --- the data-plane contract (DESIGN.md) ---
    model_path: Path = Field(validation_alias=_env(Env.MODEL_PATH))
    model_version: str = Field(
        "unknown", min_length=1, max_length=128, validation_alias=_env(Env.MODEL_VERSION)
    )
    model_sha256: str | None = Field(None, validation_alias=_env(Env.MODEL_SHA256))
    max_tokens: int = Field(256, ge=8, le=8192, validation_alias=_env(Env.MAX_TOKENS))
    enable_batch: bool = Field(False, validation_alias=_env(Env.ENABLE_BATCH))
    # The drift job's and the CRD's bounds (positive, at most 100), so no value passes here only.
    drift_threshold: float = Field(
        DRIFT_THRESHOLD_DEFAULT, gt=0, le=DRIFT_THRESHOLD_MAX, validation_alias=_env(Env.DRIFT_THRESHOLD)
    )
    calibration_params_path: Path | None = Field(None, validation_alias=_env(Env.CALIBRATION_PARAMS_PATH))
    enable_ab_routing: bool = Field(False, validation_alias=_env(Env.ENABLE_AB_ROUTING))
    enable_quantized_model: bool = Field(False, validation_alias=_env(Env.ENABLE_QUANTIZED_MODEL))
    # How enable_quantized_model is served (runtime/quantization.py); ONNX Runtime builds its INT8 file
    # once into ONNX_CACHE_DIR (None: $ONNX_CACHE_DIR or the user cache, see runtime/onnx_int8.py).
    int8_backend: Int8Backend = Field(DEFAULT_INT8_BACKEND, validation_alias=_env(Env.INT8_BACKEND))
    onnx_cache_dir: Path | None = Field(None, validation_alias=_env(Env.ONNX_CACHE_DIR))
    enable_explainability: bool = Field(False, validation_alias=_env(Env.ENABLE_EXPLAINABILITY))
    otlp_endpoint: str | None = Field(None, validation_alias=_env(Env.OTEL_EXPORTER_OTLP_ENDPOINT))

    # --- server tuning ---
    host: str = Field("0.0.0.0", min_length=1, validation_alias=_env(Env.HOST))
    port: int = Field(HTTP_PORT, ge=1, le=65535, validation_alias=_env(Env.PORT))
    max_batch_size: int = Field(32, ge=1, le=1024, validation_alias=_env(Env.MAX_BATCH_SIZE))
    batch_wait_ms: float = Field(3.0, ge=0, le=1000, validation_alias=_env(Env.BATCH_WAIT_MS))
    max_batch_tokens: int = Field(8192, ge=8, validation_alias=_env(Env.MAX_BATCH_TOKENS))
    max_batch_items: int = Field(64, ge=1, le=4096, validation_alias=_env(Env.MAX_BATCH_ITEMS))
    max_body_bytes: int = Field(256 * 1024, ge=1024, validation_alias=_env(Env.MAX_BODY_BYTES))
    rate_limit_infer_per_second: float = Field(
        1000.0, ge=0, validation_alias=_env(Env.RATE_LIMIT_INFER_PER_SECOND)
    )
    rate_limit_batch_per_second: float = Field(
        50.0, ge=0, validation_alias=_env(Env.RATE_LIMIT_BATCH_PER_SECOND)
    )
    rate_limit_explain_per_second: float = Field(
        10.0, ge=0, validation_alias=_env(Env.RATE_LIMIT_EXPLAIN_PER_SECOND)
    )
    feedback_db_path: Path = Field(
        Path(tempfile.gettempdir()) / "sentiment-feedback.sqlite3",
        validation_alias=_env(Env.FEEDBACK_DB_PATH),
    )
    torch_threads: int = Field(0, ge=0, le=256, validation_alias=_env(Env.TORCH_THREADS))
    # Slices of a batch that run side by side, sharing the threads (serving/batching.py); 0: one per
    # thread (serving/engine.py).
    forward_workers: int = Field(0, ge=0, le=256, validation_alias=_env(Env.FORWARD_WORKERS))
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, le=600, validation_alias=_env(Env.SHUTDOWN_GRACE_SECONDS)
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_env(Env.LOG_LEVEL)
    )

    # Policy of the feedback loop (POLICY_FIELDS): never read from the environment. Retention may be
    # shortened in code, never lengthened past the documented 30 days.
    feedback_retention_days: PositiveInt = Field(30, le=30)
    recent_requests_max: PositiveInt = 10_000
    recent_requests_ttl_seconds: PositiveInt = 24 * 3600

    @field_validator("model_sha256")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        v = value.strip().lower().removeprefix("sha256:")
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("must be 64 hexadecimal characters (optionally prefixed 'sha256:')")
        return v

    @field_validator("otlp_endpoint", mode="before")
    @classmethod
    def _otlp_http_url(cls, value: object) -> object:
        """The exporter speaks OTLP over HTTP: a value without an http(s) scheme and a host (a gRPC-style
        ``collector:4317``) is accepted by the SDK and then fails every export, losing every span."""
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            return value
        url = urlsplit(value.strip())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"{value!r} is not an http(s) URL with a host; OTLP/HTTP needs one such as "
                "http://otel-collector:4318"
            )
        return value.strip()

    @field_validator("model_path")
    @classmethod
    def _model_dir_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory (expected a Hugging Face model directory)")
        return value

    @field_validator("calibration_params_path", "onnx_cache_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("calibration_params_path")
    @classmethod
    def _calibration_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file (expected temperature-scaling JSON)")
        return value

    @field_validator("int8_backend", mode="before")
    @classmethod
    def _backend_lower(cls, value: object) -> object:
        return normalise_int8_backend(value) if isinstance(value, str) else value

    @field_validator("onnx_cache_dir")
    @classmethod
    def _cache_dir_usable(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value

    @field_validator("feedback_db_path")
    @classmethod
    def _db_path_usable(cls, value: Path) -> Path:
        if value.is_dir():
            raise ValueError(f"{value} is a directory (expected the path of the SQLite file)")
        ancestor = next(p for p in value.parents if p.exists())  # the store creates what is missing
        if not ancestor.is_dir():
            raise ValueError(f"{ancestor} is not a directory, so {value} cannot be created")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def inference_paths(self) -> tuple[str, ...]:
        """The inference endpoints this server answers: /infer always, the others when enabled. Their
        routers, rate limits and input-token series all follow this one answer."""
        optional = ((self.enable_batch, ApiPath.INFER_BATCH), (self.enable_explainability, ApiPath.EXPLAIN))
        return (ApiPath.INFER, *(path for enabled, path in optional if enabled))


def environment_variables() -> list[str]:
    """The variables ServerSettings reads, in declaration order (not every name in contract.Env: the
    jobs read some of those, e.g. JOB_COMPLETION_INDEX)."""
    names: list[str] = []
    for info in ServerSettings.model_fields.values():
        if isinstance(info.validation_alias, AliasChoices):
            names += [str(choice) for choice in info.validation_alias.choices]
    return names


def _variable_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    info = ServerSettings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        name = _variable_name(tuple(e["loc"]))
        given = e.get("input")
        shown = f" (got {given!r})" if isinstance(given, str | int | float) and given != "" else ""
        lines.append(f"{name}: {e['msg']}{shown}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> ServerSettings:
    """Settings from ``environ`` (default: the process environment) plus keyword overrides."""
    try:
        if environ is None:
            return ServerSettings(**overrides)  # type: ignore[arg-type]
        # Explicit mapping (tests, the demo): match names case-insensitively like the env source.
        lowered = {k.lower(): v for k, v in environ.items()}
        known = {name.lower(): name for name in environment_variables()}
        data: dict[str, object] = {known[k]: v for k, v in lowered.items() if k in known}
        data.update(overrides)
        return ServerSettings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from err
