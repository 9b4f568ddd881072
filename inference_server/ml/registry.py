"""`sentiment-ml registry`: the model registry metadata file (register, promote, list, show).

One JSON file holds every registered version with its evidence (artifact URI and sha256, the
metrics.json content, dataset hashes, calibration, quantization, bias-audit result) and its stage
(candidate, canary, production, archived) with the history of stage transitions.

The file is validated against schemas/registry.schema.json on every read and every write, plus the
invariants a schema cannot express (at most one production version, keys match versions, the last
history entry is the current stage). Writers take a file lock, re-read under it, and replace the file
atomically (temp file + fsync + os.replace + fsync of the directory), so concurrent writers never
lose each other's updates and a crash never leaves a half-written registry.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Final

from inference_server.ml.common import (
    EXIT_BAD_INPUT,
    EXIT_GATE_FAILED,
    EXIT_OK,
    MLInputError,
    cache_root,
    cli_error,
    read_json,
    unit_fraction_arg,
)
from inference_server.runtime.atomic import write_bytes_atomic

SCHEMA_PATH: Final = Path(__file__).with_name("schemas") / "registry.schema.json"
REGISTRY_ENV: Final = "SENTIMENT_REGISTRY"
SCHEMA_VERSION: Final = 1
STAGES: Final = ("candidate", "canary", "production", "archived")
# Stages that serve traffic: entering them passes the quality gate.
GATED_STAGES: Final = frozenset({"canary", "production"})
DEFAULT_F1_DROP: Final = 0.02
LOCK_TIMEOUT_S: Final = 60.0

Registry = dict[str, Any]


class RegistryError(MLInputError):
    """The registry file is unreadable or invalid, or an operation on it is not allowed."""


class GateFailed(RegistryError):
    """A promotion was refused because the candidate fails the gate; `reasons` says why."""

    def __init__(self, version: str, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__(f"refusing to promote {version}: " + "; ".join(reasons))


def default_registry_path() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or cache_root() / "registry.json")


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- validation (pure) ----------------------------------------------------------------------------
@cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validation_errors(registry: Any) -> list[str]:
    """Everything wrong with a registry document (empty when it is valid)."""
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(_validator().iter_errors(registry), key=lambda e: list(e.absolute_path))
    ]
    if errors:
        return errors
    versions = registry["versions"]
    for key, entry in versions.items():
        if entry["version"] != key:
            errors.append(f"versions/{key}: holds version {entry['version']!r}")
        if entry["history"][-1]["stage"] != entry["stage"]:
            errors.append(
                f"versions/{key}: stage {entry['stage']} but its history ends in "
                f"{entry['history'][-1]['stage']}"
            )
        errors += _timestamp_errors(key, entry)
    production = [k for k, e in versions.items() if e["stage"] == "production"]
    if len(production) > 1:
        errors.append(f"more than one production version: {', '.join(sorted(production))}")
    errors += [
        f"{where}: {value!r} is not a finite number (JSON has no NaN or Infinity)"
        for where, value in _non_finite_numbers(registry, "")
    ]
    return errors


def _is_date_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _timestamp_errors(key: str, entry: Mapping[str, Any]) -> list[str]:
    # The schema says `format: date-time`, but jsonschema only checks formats whose optional checker
    # package is installed (rfc3339-validator, not a dependency): without it 2026-13-45T00:00:00Z
    # passes the pattern. Checked here, so validity does not depend on what else is installed.
    stamps = [(f"versions/{key}/{field}", entry[field]) for field in ("registered_at", "updated_at")]
    stamps += [(f"versions/{key}/history/{i}/at", h["at"]) for i, h in enumerate(entry["history"])]
    return [
        f"{where}: {value!r} is not a valid date-time" for where, value in stamps if not _is_date_time(value)
    ]


def _non_finite_numbers(value: Any, where: str) -> Iterator[tuple[str, float]]:
    # json.loads accepts the bare NaN/Infinity an older version wrote, but strict JSON readers (jq,
    # other languages) reject the file, and a NaN macro_f1 passes every threshold comparison.
    if isinstance(value, float) and not math.isfinite(value):
        yield where or "<root>", value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _non_finite_numbers(v, f"{where}/{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite_numbers(v, f"{where}/{i}" if where else str(i))


def check(registry: Any, where: str) -> Registry:
    errors = validation_errors(registry)
    if errors:
        shown = "; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")
        raise RegistryError(f"{where} is not a valid registry ({shown})")
    result: Registry = registry
    return result


def empty_registry() -> Registry:
    return {"schema_version": SCHEMA_VERSION, "versions": {}}


# --- operations (pure: registry in, new registry out) ---------------------------------------------
@dataclass(frozen=True)
class NewVersion:
    version: str
    artifact_uri: str
    artifact_sha256: str
    metrics: dict[str, Any] | None = None
    datasets: dict[str, str] | None = None
    calibration: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    bias_audit: dict[str, Any] | None = None


# The fields of an entry that register() sets from its evidence (the rest is stage bookkeeping).
EVIDENCE_FIELDS: Final = ("artifact", "metrics", "datasets", "calibration", "quantization", "bias_audit")


def register(registry: Registry, new: NewVersion, *, now: str) -> Registry:
    """Add a candidate. Registering a version again with identical evidence changes nothing; with
    different evidence it is refused, never silently dropped: a version names one set of evidence."""
    out = copy.deepcopy(registry)
    entry = {
        "version": new.version,
        "artifact": {"uri": new.artifact_uri, "sha256": new.artifact_sha256.lower()},
        "metrics": new.metrics,
        "datasets": dict(new.datasets or {}),
        "calibration": new.calibration,
        "quantization": new.quantization,
        "bias_audit": new.bias_audit,
        "stage": "candidate",
        "registered_at": now,
        "updated_at": now,
        "history": [{"stage": "candidate", "from": None, "at": now, "reason": "registered"}],
    }
    existing = out["versions"].get(new.version)
    if existing is None:
        out["versions"][new.version] = entry
        return out
    if existing["artifact"] != entry["artifact"]:
        raise RegistryError(
            f"version {new.version} is already registered with artifact sha256 "
            f"{existing['artifact']['sha256'][:12]}…; register the new artifact under a new version"
        )
    differ = [f for f in EVIDENCE_FIELDS if existing.get(f) != entry[f]]
    if differ:
        raise RegistryError(
            f"version {new.version} is already registered with different {', '.join(differ)}; "
            "a registered version's evidence is not replaced — register it under a new version"
        )
    return out


def production_version(registry: Registry) -> str | None:
    for key, entry in registry["versions"].items():
        if entry["stage"] == "production":
            return str(key)
    return None


def baseline_version(registry: Registry) -> str | None:
    """What a candidate is gated against: the production version, or, while there is none, the one that
    left production last. Without the second, archiving production (or moving it back to candidate)
    left nothing to regress against, and the next promotion passed any metrics."""
    current = production_version(registry)
    if current is not None:
        return current
    left = [
        (step["at"], str(key))
        for key, entry in registry["versions"].items()
        for step in entry["history"]
        if step.get("from") == "production"
    ]
    return max(left)[1] if left else None


# A gate takes (candidate metrics, production metrics) and returns the reasons it fails (none: pass).
Gate = Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]]


def gate_reasons(
    registry: Registry, version: str, gate: Gate, *, accept_bias_audit_failure: bool = False
) -> list[str]:
    """Why `version` may not serve traffic (empty when it may)."""
    entry = registry["versions"][version]
    reasons: list[str] = []
    audit = entry.get("bias_audit")
    if audit is not None and not audit.get("passed", False) and not accept_bias_audit_failure:
        reasons.append(
            "its bias audit failed (largest gap "
            f"{audit.get('largest_gap', '?')} > {audit.get('threshold', '?')}); a person may accept the "
            "risk with --accept-bias-audit-failure and a --reason"
        )
    if not entry.get("metrics"):
        # Promotion needs evidence: a version without metrics could otherwise become the baseline that
        # every later candidate passes against.
        return [*reasons, "it has no metrics (evaluate's metrics.json); register them first"]
    current = baseline_version(registry)
    if current is None or current == version:
        return reasons
    baseline = registry["versions"][current].get("metrics")
    if not baseline:
        return reasons  # a production version from before metrics were required: nothing to compare
    role = "production" if registry["versions"][current]["stage"] == "production" else "last production"
    return reasons + [f"vs {role} {current}: {r}" for r in gate(entry["metrics"], baseline)]


def _transition(entry: dict[str, Any], stage: str, *, now: str, reason: str) -> None:
    entry["history"].append({"stage": stage, "from": entry["stage"], "at": now, "reason": reason})
    entry["stage"] = stage
    entry["updated_at"] = now


def promote(
    registry: Registry,
    version: str,
    stage: str,
    *,
    now: str,
    gate: Gate,
    reason: str = "",
    accept_bias_audit_failure: bool = False,
) -> Registry:
    """Move `version` to `stage`; entering canary or production passes the gate first, and a new
    production version archives the previous one."""
    if stage not in STAGES:
        raise RegistryError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if version not in registry["versions"]:
        known = ", ".join(sorted(registry["versions"])) or "none"
        raise RegistryError(f"version {version} is not registered (registered: {known})")
    out = copy.deepcopy(registry)
    entry = out["versions"][version]
    if entry["stage"] == stage:
        raise RegistryError(f"version {version} is already {stage}")
    if entry["stage"] == "production" and not reason:  # (already production was refused above)
        raise RegistryError(
            f"taking {version} out of production leaves none; give a --reason (it goes into the history), "
            "or promote its successor to production instead, which archives it"
        )
    if stage in GATED_STAGES:
        if accept_bias_audit_failure and not reason:
            raise RegistryError("accepting a failed bias audit needs a --reason (it goes into the history)")
        reasons = gate_reasons(out, version, gate, accept_bias_audit_failure=accept_bias_audit_failure)
        if reasons:
            raise GateFailed(version, reasons)
    if stage == "production":
        previous = production_version(out)
        if previous is not None:
            _transition(out["versions"][previous], "archived", now=now, reason=f"superseded by {version}")
    _transition(entry, stage, now=now, reason=reason or f"promoted to {stage}")
    return out


# --- the quality gate: the pre-deploy comparison of `sentiment-ml compare` ------------------------
def compare_gate(f1_drop: float) -> Gate:
    def gate(candidate: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
        from inference_server.ml import compare

        try:
            return compare.gate(dict(candidate), dict(baseline), max_f1_drop=f1_drop).reasons
        except (MLInputError, ValueError) as exc:
            # Unusable metrics fail the gate: promotion needs evidence, not its absence.
            return [f"metrics cannot be compared ({exc}): are both evaluate's metrics.json?"]

    return gate


# --- the file (I/O shell) -------------------------------------------------------------------------
def read_registry(path: Path) -> Registry:
    """The validated registry; a missing file is an empty registry, a corrupt one an error."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty_registry()
    except UnicodeDecodeError as exc:
        raise RegistryError(
            f"registry {path} is corrupt (not UTF-8 text: {exc}); restore it from a backup or the previous "
            "copy in version control — the registry never rewrites a file it cannot read"
        ) from None
    except OSError as exc:
        raise RegistryError(f"cannot read registry {path}: {exc}") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RegistryError(
            f"registry {path} is corrupt (not JSON: {exc}); restore it from a backup or the "
            "previous copy in version control — the registry never rewrites a file it cannot read"
        ) from exc
    return check(data, f"registry {path}")


def _write_atomic(path: Path, registry: Registry) -> None:
    check(registry, "the registry about to be written")  # never persist an invalid document
    # allow_nan=False: check() already refuses NaN/Infinity; this keeps json.dumps from ever writing one.
    data = (json.dumps(registry, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    write_bytes_atomic(path, data, durable=True)  # the registry is the only copy: survive a power loss


def _ensure_lock_file(path: Path) -> Path:
    """Create the lock file up front. filelock treats a lock file it cannot create (read-only or
    pseudo file system, missing permission) like one held by another writer and retries until its
    timeout, so the real cause would surface only as a misleading "locked" error a minute later."""
    lock_path = Path(str(path) + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a"):
            pass
    except OSError as exc:
        raise RegistryError(
            f"cannot write the registry {path}: its directory {path.parent} does not accept new "
            f"files ({exc.strerror or exc}); choose a writable --registry or ${REGISTRY_ENV}"
        ) from None
    return lock_path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(_ensure_lock_file(path)), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            yield
    except Timeout as exc:
        raise RegistryError(
            f"registry {path} is locked by another writer for more than {LOCK_TIMEOUT_S:.0f}s "
            f"(lock file {lock.lock_file}); retry, or remove the lock if its writer is gone"
        ) from exc


def update_registry(path: Path, change: Callable[[Registry], Registry]) -> Registry:
    """Read, change and write the registry under its lock; returns the written registry."""
    with _locked(path):
        updated = change(read_registry(path))
        _write_atomic(path, updated)
        return updated


# --- CLI ------------------------------------------------------------------------------------------
def _json_file(path: Path | None, what: str) -> dict[str, Any] | None:
    if path is None:
        return None
    data = read_json(path, f"{what} file")  # one-line errors: missing, a directory, not UTF-8, not JSON
    if not isinstance(data, dict):
        raise RegistryError(f"{what} file {path} must hold a JSON object")
    return data


def _datasets(pairs: list[str], metrics: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    # metrics.json names the dataset it was computed on; record it without being asked.
    ds = (metrics or {}).get("dataset")
    if isinstance(ds, Mapping) and ds.get("name"):
        if ds.get("dataset_sha256"):
            out[str(ds["name"])] = str(ds["dataset_sha256"])
        if ds.get("split") and ds.get("sha256"):
            out[f"{ds['name']}/{ds['split']}"] = str(ds["sha256"])
    for pair in pairs:
        name, sep, sha = pair.partition("=")
        if not sep or not name or not sha:
            raise RegistryError(f"--dataset {pair!r}: expected NAME=SHA256")
        out[name] = sha.lower()
    return out


def _bias_audit_summary(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data.get("passed"), bool):
        raise RegistryError(
            "the bias-audit result has no boolean 'passed' (give the JSON of `sentiment-ml bias-audit`)"
        )
    keep = ("passed", "threshold", "largest_gap", "dataset_sha256", "attributes_failed")
    return {k: data[k] for k in keep if k in data}


def _new_version(args: argparse.Namespace) -> NewVersion:
    from inference_server.ml.compare import metrics_problems
    from inference_server.runtime.artifact import ArtifactError, sha256_of_artifact

    sha = args.sha256
    if args.artifact_path is not None:
        try:
            computed = sha256_of_artifact(args.artifact_path)
        except ArtifactError as exc:
            raise RegistryError(str(exc)) from exc
        if sha and sha.lower() != computed:
            raise RegistryError(f"--sha256 {sha} does not match {args.artifact_path} ({computed})")
        sha = computed
    if not sha:
        raise RegistryError("give --sha256 or --artifact-path (to compute it)")
    metrics = _json_file(args.metrics, "metrics")
    problems = metrics_problems(metrics) if metrics is not None else []
    if problems:
        raise RegistryError(
            f"{args.metrics}: {'; '.join(problems)}: give the metrics.json of `sentiment-ml evaluate`"
        )
    calibration = _json_file(args.calibration, "calibration params")
    quantization = _json_file(args.quantization, "quantization report")
    if quantization is not None:
        quantization.setdefault("quantized", True)
    elif args.quantized:
        quantization = {"quantized": True, "method": "dynamic_int8"}
    return NewVersion(
        version=args.version,
        artifact_uri=args.artifact_uri,
        artifact_sha256=sha,
        metrics=metrics,
        datasets=_datasets(args.dataset, metrics),
        calibration=calibration,
        quantization=quantization,
        bias_audit=_bias_audit_summary(_json_file(args.bias_audit, "bias-audit result")),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        type=Path,
        default=None,
        help=f"registry file (default: ${REGISTRY_ENV} or $SENTIMENT_CACHE/registry.json)",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    reg = sub.add_parser("register", help="add a version as a candidate")
    reg.add_argument("--version", required=True)
    reg.add_argument("--artifact-uri", required=True, help="pvc://claim/path, s3://…, https://… or file://…")
    reg.add_argument("--artifact-path", type=Path, help="local copy of the artifact: its sha256 is computed")
    reg.add_argument("--sha256", help="the artifact's sha256 (checked against --artifact-path if both)")
    reg.add_argument("--metrics", type=Path, help="metrics.json from `sentiment-ml evaluate`")
    reg.add_argument("--dataset", action="append", default=[], metavar="NAME=SHA256")
    reg.add_argument("--calibration", type=Path, help="calibration params JSON")
    reg.add_argument("--quantization", type=Path, help="quantization report JSON")
    reg.add_argument("--quantized", action="store_true", help="the artifact is served dynamically quantized")
    reg.add_argument("--bias-audit", type=Path, help="result JSON of `sentiment-ml bias-audit`")

    pro = sub.add_parser("promote", help="move a version to another stage (gated for canary/production)")
    pro.add_argument("version")
    pro.add_argument("--to", dest="stage", choices=STAGES, default="production")
    pro.add_argument("--reason", default="", help="recorded in the version's stage history")
    pro.add_argument(
        "--accept-bias-audit-failure",
        action="store_true",
        help="promote even though the recorded bias audit failed (needs --reason)",
    )
    pro.add_argument(
        "--max-f1-drop",
        type=unit_fraction_arg,
        default=DEFAULT_F1_DROP,
        help="largest allowed macro-F1 drop vs production, absolute (default 0.02)",
    )

    lst = sub.add_parser("list", help="versions, newest first")
    lst.add_argument("--stage", choices=STAGES)
    lst.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="one version as JSON")
    show.add_argument("version")


def _list_lines(registry: Registry, stage: str | None) -> list[str]:
    entries = sorted(registry["versions"].values(), key=lambda e: e["registered_at"], reverse=True)
    lines = [f"{'VERSION':<24} {'STAGE':<11} {'MACRO-F1':>8}  {'UPDATED':<20} ARTIFACT"]
    for e in entries:
        if stage and e["stage"] != stage:
            continue
        f1 = (e.get("metrics") or {}).get("macro_f1")
        f1_text = f"{f1:.4f}" if isinstance(f1, int | float) else "-"
        lines.append(
            f"{e['version']:<24} {e['stage']:<11} {f1_text:>8}  {e['updated_at']:<20} {e['artifact']['uri']}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    path: Path = args.registry or default_registry_path()
    try:
        if args.action == "register":
            new = _new_version(args)
            known: list[bool] = []

            def add(r: Registry) -> Registry:
                known.append(new.version in r["versions"])  # under the lock: what register() saw
                return register(r, new, now=now_utc())

            update_registry(path, add)
            if known[-1]:
                print(f"{new.version} is already registered in {path} with this evidence: unchanged")
            else:
                print(f"registered {new.version} as candidate in {path}")
        elif args.action == "promote":
            gate = compare_gate(args.max_f1_drop)
            previous: list[str | None] = []

            def change(r: Registry) -> Registry:
                previous.append(production_version(r))  # under the lock: the one actually replaced
                return promote(
                    r,
                    args.version,
                    args.stage,
                    now=now_utc(),
                    gate=gate,
                    reason=args.reason,
                    accept_bias_audit_failure=args.accept_bias_audit_failure,
                )

            update_registry(path, change)
            replaced = previous[-1] if args.stage == "production" else None
            print(
                f"promoted {args.version} to {args.stage}"
                + (f"; {replaced} archived" if replaced and replaced != args.version else "")
            )
        elif args.action == "list":
            registry = read_registry(path)
            if args.json:
                versions = [
                    e for e in registry["versions"].values() if not args.stage or e["stage"] == args.stage
                ]
                print(json.dumps(versions, indent=2, sort_keys=True))
            else:
                print("\n".join(_list_lines(registry, args.stage)))
        else:
            registry = read_registry(path)
            if args.version not in registry["versions"]:
                raise RegistryError(f"version {args.version} is not registered in {path}")
            print(json.dumps(registry["versions"][args.version], indent=2, sort_keys=True))
    except GateFailed as exc:
        cli_error("registry", f"refusing to promote {args.version} to {args.stage}:", EXIT_GATE_FAILED)
        for reason in exc.reasons:
            print(f"  - {reason}", file=sys.stderr)
        return EXIT_GATE_FAILED
    except MLInputError as exc:
        return cli_error("registry", str(exc), EXIT_BAD_INPUT)
    except OSError as exc:  # the write itself failed (disk full, permissions): nothing was changed
        return cli_error("registry", f"cannot write the registry {path}: {exc}", EXIT_BAD_INPUT)
    return EXIT_OK
