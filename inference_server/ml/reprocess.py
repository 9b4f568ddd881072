"""`sentiment-ml reprocess`: re-score historic records by ID with a model, resumable and shardable.

Input: a JSONL file (`id` and `text` per line) or a SQLite table. Output: JSONL (one file per shard)
or a SQLite table keyed by id. The work is cut into chunks; after each chunk the output and a
checkpoint of the input position are committed together:
- JSONL: the chunk is appended and fsynced, then the checkpoint (input byte offset, committed output
  bytes) is replaced atomically. A run killed in between leaves output beyond the checkpoint; the next
  run truncates the file back to the committed size before it continues, so nothing is written twice.
- SQLite: the upserts and the checkpoint row go in one transaction.
Re-running a finished shard reads its checkpoint and writes nothing. A JSONL checkpoint also holds the
sha256 of the input bytes it consumed, so a resumed run refuses an input rewritten in place (one that
only grew at its end resumes), and one process at a time writes a JSONL shard (a lock file beside it).

Sharding for a Kubernetes Indexed Job: shard JOB_COMPLETION_INDEX of JOB_COMPLETIONS takes the ids
whose stable hash (sha256 of the id's text) modulo the shard count equals its index, so the shards
partition the ids exactly and every shard can be restarted on its own. Kubernetes sets only
JOB_COMPLETION_INDEX; the pod template must set JOB_COMPLETIONS to the Job's `completions` (or the
command pass --shards). An index without a count is refused: guessing one shard would make index 0
process every id while the other indexes fail.

Resuming checks that the checkpoint belongs to the same run: input, shard, shard count, model version,
path and content hash, and the calibration file's hash, so a changed model or calibration behind an
unchanged path never mixes two scorings in one output.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from inference_server.contract import Env, JobKind, JobOutcome, JobResult
from inference_server.ml.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    MLInputError,
    add_model_arguments,
    cli_error,
    load_model_of,
)
from inference_server.runtime.atomic import write_bytes_atomic

CHECKPOINT_VERSION: Final = 1
DEFAULT_CHUNK: Final = 256
CHECKPOINT_TABLE: Final = "_reprocess_checkpoint"
# Test hook: SIGKILL this process once this many records are written but before their checkpoint is
# committed — the worst moment to die. Tests set it; nothing else should.
KILL_HOOK_ENV: Final = "SENTIMENT_REPROCESS_TEST_KILL_AFTER"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ReprocessError(MLInputError):
    """Bad input, output or checkpoint; the message says what to do."""


@dataclass(frozen=True)
class Record:
    id: Any  # as it appears in the input: a string or a number (never a boolean)
    text: str


Scored = dict[str, Any]
Scorer = Callable[[Sequence[Record]], list[Scored]]


# --- pure decisions ---------------------------------------------------------------------------------
def id_key(record_id: Any) -> str:
    """When two ids are the same record: as a SQLite key compares them, so that both outputs agree —
    the string "1" and the number 1 differ, the numbers 1 and 1.0 do not."""
    if isinstance(record_id, str):
        return f"s:{record_id}"
    if isinstance(record_id, float) and record_id.is_integer():
        return f"n:{int(record_id)}"
    return f"n:{record_id}"


def shard_of(record_id: Any, shards: int) -> int:
    """Stable across processes, machines and Python versions (unlike hash()). Hashes the id's text, so
    "5" and 5 share a shard as they always have; ids that ``id_key`` calls the same record (1 and 1.0)
    must share one too, or two shards would each write it."""
    text = str(int(record_id)) if isinstance(record_id, float) and record_id.is_integer() else str(record_id)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ReprocessError(f"{name}={raw!r}: shard index and count must be integers") from None


def resolve_shard(shard: int | None, shards: int | None, env: Mapping[str, str]) -> tuple[int, int]:
    """(index, count): --shard/--shards first, then the Indexed Job's environment, else one shard."""
    env_index = _env_int(env, Env.JOB_COMPLETION_INDEX)
    env_count = _env_int(env, Env.JOB_COMPLETIONS)
    if shards is None and env_count is None and env_index is not None:
        # Kubernetes sets the index but not the count. Defaulting the count to 1 made index 0 process
        # every id as "shard 0 of 1" while every other index failed: refuse instead.
        raise ReprocessError(
            f"{Env.JOB_COMPLETION_INDEX}={env_index} is set but {Env.JOB_COMPLETIONS} is not: set "
            f"{Env.JOB_COMPLETIONS} to the Job's completions in the pod template, or pass --shards"
        )
    index = shard if shard is not None else (env_index if env_index is not None else 0)
    count = shards if shards is not None else (env_count if env_count is not None else 1)
    return check_shard(index, count)


def check_shard(index: int, count: int) -> tuple[int, int]:
    if count < 1 or not 0 <= index < count:
        raise ReprocessError(f"shard index {index} is not within 0..{count - 1} ({count} shards)")
    return index, count


def identifier(name: str, what: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ReprocessError(f"{what} {name!r} is not a plain SQL identifier (letters, digits, _)")
    return f'"{name}"'


def sqlite_path(url_or_path: str) -> Path:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` (SQLAlchemy style) or a plain path."""
    if url_or_path.startswith("sqlite:///"):
        rest = url_or_path[len("sqlite:///") :]
        if not rest:
            raise ReprocessError(f"{url_or_path!r} names no database file")
        return Path(rest)
    if "://" in url_or_path:
        raise ReprocessError(f"{url_or_path!r}: only sqlite:/// URLs (or a file path) are supported")
    return Path(url_or_path)


# --- sources --------------------------------------------------------------------------------------
class Source(Protocol):
    description: str

    def total(self) -> int | None: ...

    def chunks(self, position: Any, size: int) -> Iterator[tuple[list[Record], Any]]:
        """Records after `position`, `size` at a time, each with the position after it."""
        ...


@dataclass
class JsonlSource:
    path: Path
    description: str = ""

    def __post_init__(self) -> None:
        if not self.path.is_file():
            raise ReprocessError(f"input file not found: {self.path}")
        self.description = f"jsonl:{self.path.resolve()}"

    def total(self) -> int | None:
        with self.path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())

    def chunks(self, position: Any, size: int) -> Iterator[tuple[list[Record], Any]]:
        """Positions are ``{"offset": bytes consumed, "sha256": of those bytes}``: a resumed run checks
        that the input still begins with what the checkpoint consumed. An input rewritten in place
        (ids inserted before the offset, or the offset landing mid-line) would otherwise lose records
        silently; one that only grew at its end (a log appended to) resumes."""
        offset, digest = self._resume(position)
        with self.path.open("rb") as fh:
            fh.seek(offset)
            chunk: list[Record] = []
            yielded = offset
            while line := fh.readline():
                where = offset
                offset += len(line)
                digest.update(line)
                if line.strip():
                    chunk.append(_parse_line(line, self.path, where))
                if len(chunk) >= size:
                    yield chunk, {"offset": offset, "sha256": digest.hexdigest()}
                    chunk, yielded = [], offset
            if offset != yielded:  # the tail, or blank lines only: the position still moves on
                yield chunk, {"offset": offset, "sha256": digest.hexdigest()}

    def _resume(self, position: Any) -> tuple[int, Any]:
        digest = hashlib.sha256()
        if position is None:
            return 0, digest
        legacy = isinstance(position, int)  # a checkpoint from before the fingerprint: trusted as it is
        offset = position if legacy else int(position["offset"])
        with self.path.open("rb") as fh:
            remaining = offset
            while remaining > 0 and (block := fh.read(min(remaining, 1 << 20))):
                digest.update(block)  # a legacy offset too: checkpoints from here on hash from byte 0
                remaining -= len(block)
        if legacy:
            return offset, digest
        if remaining > 0 or digest.hexdigest() != str(position["sha256"]):
            raise ReprocessError(
                f"{self.path} changed since the checkpoint: its first {offset} bytes are not the ones "
                "already processed (only appending to the input is safe); restore the input, or "
                "delete this shard's output and checkpoint to redo it"
            )
        return offset, digest


def _parse_line(line: bytes, path: Path, offset: int) -> Record:
    try:
        obj = json.loads(line)
        if not isinstance(obj["text"], str) or not _usable_id(obj["id"]):
            raise TypeError("id must be a string or number, text a string")
        return Record(obj["id"], obj["text"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ReprocessError(
            f"{path} at byte {offset}: each line must be a JSON object with 'id' and 'text' ({exc})"
        ) from None


def _usable_id(value: Any) -> bool:
    """A string or a number. Not null (nothing to resume or upsert by), not a boolean (JSON's true would
    be the id 1 in SQLite but "True" as text), not a container."""
    return isinstance(value, str | int | float) and not isinstance(value, bool)


@dataclass
class SqliteSource:
    db: Path
    table: str
    id_column: str = "id"
    text_column: str = "text"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.db.is_file():
            raise ReprocessError(f"input database not found: {self.db}")
        columns = f"{identifier(self.id_column, 'id column')}, {identifier(self.text_column, 'text column')}"
        self._sql = f"SELECT {columns} FROM {identifier(self.table, 'input table')}"
        self.description = f"sqlite:{self.db.resolve()}#{self.table}"
        self._refuse_unusable_rows()  # before any output exists

    def _connect(self) -> sqlite3.Connection:
        # as_uri() percent-encodes the path: a '#' or '?' in it would otherwise end the file name, drop
        # mode=ro, and open (and create) another file read-write.
        return sqlite3.connect(f"{self.db.resolve().as_uri()}?mode=ro", uri=True, timeout=60)

    def total(self) -> int | None:
        with contextlib.closing(self._connect()) as con:
            try:
                return int(con.execute(f"SELECT COUNT(*) FROM ({self._sql})").fetchone()[0])
            except sqlite3.Error as exc:
                raise ReprocessError(f"cannot read {self.description}: {exc}") from None

    def chunks(self, position: Any, size: int) -> Iterator[tuple[list[Record], Any]]:
        # Keyset pagination on the id: stable under restarts, no OFFSET scans. NULL ids, which would
        # restart it from the top forever, were refused when the source was opened.
        idc = identifier(self.id_column, "id column")
        with contextlib.closing(self._connect()) as con:
            last = position
            while True:
                where = "" if last is None else f" WHERE {idc} > ?"
                params: tuple[Any, ...] = () if last is None else (last,)
                rows = con.execute(f"{self._sql}{where} ORDER BY {idc} LIMIT ?", (*params, size)).fetchall()
                if not rows:
                    return
                bad = [r for r in rows if not _usable_id(r[0]) or not isinstance(r[1], str)]
                if bad:  # inserted since the check: refuse rather than loop or score "None"
                    raise ReprocessError(self._unusable_message(len(bad)))
                last = rows[-1][0]
                yield [Record(r[0], r[1]) for r in rows], last

    def _refuse_unusable_rows(self) -> None:
        """Rows this command cannot process, refused before any output is written, as in JSONL: a NULL
        id breaks keyset paging (NULL sorts first and `id > NULL` matches nothing, so paging restarted
        from the top forever) and cannot be upserted by; a BLOB id cannot be written as JSON; a text
        that is NULL or not text would be scored as the string "None" or a number's digits."""
        idc = identifier(self.id_column, "id column")
        txc = identifier(self.text_column, "text column")
        query = (
            f"SELECT COUNT(*) FROM ({self._sql}) WHERE {idc} IS NULL OR typeof({idc}) = 'blob' "
            f"OR typeof({txc}) != 'text'"
        )
        with contextlib.closing(self._connect()) as con:
            try:
                bad = int(con.execute(query).fetchone()[0])
            except sqlite3.Error as exc:
                raise ReprocessError(f"cannot read {self.description}: {exc}") from None
        if bad:
            raise ReprocessError(self._unusable_message(bad))

    def _unusable_message(self, count: int) -> str:
        return (
            f"{self.description}: {count} row(s) have a NULL or binary {self.id_column}, or a "
            f"{self.text_column} that is not text; every record needs an id (text or number) to be "
            f"written and resumed by, and a text to score — fix them, or select a view without them "
            f"(e.g. WHERE {self.id_column} IS NOT NULL AND typeof({self.text_column}) = 'text')"
        )


# --- sinks ----------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    position: Any = None
    output_bytes: int = 0
    records_written: int = 0
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Sink(Protocol):
    description: str

    def open(self, identity: dict[str, Any]) -> Checkpoint: ...

    def seen(self, key: str) -> bool: ...

    def commit(self, scored: Sequence[Scored], checkpoint: Checkpoint) -> None: ...

    def close(self) -> None: ...


def _write_json_durably(path: Path, data: dict[str, Any]) -> None:
    write_bytes_atomic(path, json.dumps(data, sort_keys=True).encode("utf-8"), durable=True)


def _kill_hook() -> Callable[[int], None]:
    raw = os.environ.get(KILL_HOOK_ENV)
    if not raw:
        return lambda _written: None
    limit = int(raw)

    def hook(written: int) -> None:
        if written >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


_PART = re.compile(r"^part-(\d+)-of-(\d+)\.jsonl$")


def _other_shard_counts(directory: Path, shards: int) -> list[str]:
    """Part files in ``directory`` written with another shard count."""
    return sorted(
        p.name for p in directory.iterdir() if (m := _PART.match(p.name)) and int(m.group(2)) != shards
    )


class JsonlSink:
    """DIR/part-<index>-of-<count>.jsonl plus its .checkpoint.json, written by one process at a time
    (an exclusive lock on its .lock file)."""

    def __init__(self, directory: Path, shard: int, shards: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"part-{shard:05d}-of-{shards:05d}"
        self.shards = shards
        self.output = directory / f"{stem}.jsonl"
        self.checkpoint_path = directory / f"{stem}.checkpoint.json"
        self.lock_path = directory / f"{stem}.lock"
        self.description = str(self.output)
        self._keys: set[str] = set()
        self._identity: dict[str, Any] = {}
        self._fh: Any = None
        self._lock_fd: int | None = None
        self._hook = _kill_hook()

    def _take_lock(self) -> None:
        """A second writer of the same shard (a replacement pod started while the old one is still
        stopping, a shard re-run by hand) would append every record again: refuse it. The kernel drops
        the lock when its holder dies, so a killed run never leaves the shard locked."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ReprocessError(
                f"another reprocess is writing {self.output} (it holds {self.lock_path}); wait for it to "
                "finish or stop it, then run again to resume"
            ) from None
        self._lock_fd = fd

    def open(self, identity: dict[str, Any]) -> Checkpoint:
        self._identity = identity
        if others := _other_shard_counts(self.output.parent, self.shards):
            raise ReprocessError(
                f"{self.output.parent} holds output written with another shard count ({others[0]}): "
                "each count splits the ids differently, so mixing them writes records twice; rerun with "
                "the shard count it was written with, or choose another --output-dir"
            )
        self._take_lock()
        try:
            return self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> Checkpoint:
        """The committed checkpoint, with the output cut back to what it covers."""
        for stale in self.checkpoint_path.parent.glob(f".{self.checkpoint_path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # a checkpoint write that a kill interrupted
        if self.checkpoint_path.exists():
            try:
                data = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
                cp = Checkpoint(
                    data["position"],
                    int(data["output_bytes"]),
                    int(data["records_written"]),
                    bool(data["done"]),
                )
                stored = data["identity"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ReprocessError(
                    f"checkpoint {self.checkpoint_path} is unreadable ({exc}); delete it and "
                    f"{self.output} to start this shard over"
                ) from None
            _check_identity(stored, self._identity, self.checkpoint_path)
        elif self.output.exists() and self.output.stat().st_size > 0:
            raise ReprocessError(
                f"{self.output} exists without a checkpoint: it was not written by this command; "
                "move it away or choose another --output-dir"
            )
        else:
            cp = Checkpoint()
        # Anything past the committed size is a chunk whose checkpoint never landed: drop it.
        with self.output.open("ab") as fh:
            if fh.tell() > cp.output_bytes:
                fh.truncate(cp.output_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            elif fh.tell() < cp.output_bytes:
                raise ReprocessError(
                    f"{self.output} is shorter than its checkpoint says ({fh.tell()} < "
                    f"{cp.output_bytes} bytes): it was cut by hand; delete it and its checkpoint "
                    "to redo this shard"
                )
        with self.output.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    self._keys.add(id_key(json.loads(line)["id"]))
                except (ValueError, KeyError, TypeError):
                    raise ReprocessError(
                        f"{self.output}:{n} is not a record this command wrote; delete the file and "
                        "its checkpoint to redo this shard"
                    ) from None
        self._fh = self.output.open("ab")
        return cp

    def seen(self, key: str) -> bool:
        return key in self._keys

    def commit(self, scored: Sequence[Scored], checkpoint: Checkpoint) -> None:
        data = b"".join(json.dumps(s, sort_keys=True).encode("utf-8") + b"\n" for s in scored)
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        checkpoint.output_bytes = self._fh.tell()
        self._keys.update(id_key(s["id"]) for s in scored)
        self._hook(checkpoint.records_written)
        _write_json_durably(
            self.checkpoint_path,
            {
                "version": CHECKPOINT_VERSION,
                "identity": self._identity,
                "position": checkpoint.position,
                "output_bytes": checkpoint.output_bytes,
                "records_written": checkpoint.records_written,
                "done": checkpoint.done,
                "updated_at": _now(),
            },
        )

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


class SqliteSink:
    """Upserts by id into a table; the checkpoint row commits in the same transaction."""

    def __init__(self, db: Path, table: str, shard: int, shards: int) -> None:
        self.db, self.table, self.shard, self.shards = db, table, shard, shards
        self._t = identifier(table, "output table")
        self.description = f"sqlite:{db}#{table}"
        self._identity: dict[str, Any] = {}
        self._hook = _kill_hook()
        db.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(db, timeout=60, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")

    def open(self, identity: dict[str, Any]) -> Checkpoint:
        self._identity = identity
        self._con.execute("BEGIN IMMEDIATE")
        self._con.execute(
            # NOT NULL: SQLite lets a non-INTEGER PRIMARY KEY hold any number of NULLs, and a NULL id
            # never conflicts, so the upsert would append instead of replace.
            f"CREATE TABLE IF NOT EXISTS {self._t} (id NOT NULL PRIMARY KEY, label TEXT NOT NULL, "
            "confidence REAL NOT NULL, probabilities TEXT NOT NULL, model_version TEXT NOT NULL)"
        )
        self._con.execute(
            f"CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (output_table TEXT, shard INTEGER, "
            "shards INTEGER, identity TEXT NOT NULL, position TEXT, records_written INTEGER NOT NULL, "
            "done INTEGER NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (output_table, shard, shards))"
        )
        row = self._con.execute(
            f"SELECT identity, position, records_written, done FROM {CHECKPOINT_TABLE} "
            "WHERE output_table = ? AND shard = ? AND shards = ?",
            (self.table, self.shard, self.shards),
        ).fetchone()
        self._con.execute("COMMIT")
        if row is None:
            return Checkpoint()
        _check_identity(json.loads(row[0]), identity, Path(f"{self.db}#{CHECKPOINT_TABLE}"))
        return Checkpoint(json.loads(row[1]), 0, int(row[2]), bool(row[3]))

    def seen(self, key: str) -> bool:
        return False  # upsert by id: writing a record again replaces it, never duplicates it

    def commit(self, scored: Sequence[Scored], checkpoint: Checkpoint) -> None:
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(
                f"INSERT INTO {self._t} (id, label, confidence, probabilities, model_version) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET label = excluded.label, "
                "confidence = excluded.confidence, probabilities = excluded.probabilities, "
                "model_version = excluded.model_version",
                [
                    (
                        s["id"],
                        s["label"],
                        s["confidence"],
                        json.dumps(s["probabilities"], sort_keys=True),
                        s["model_version"],
                    )
                    for s in scored
                ],
            )
            self._hook(checkpoint.records_written)
            con.execute(
                f"INSERT INTO {CHECKPOINT_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(output_table, shard, shards) DO UPDATE SET identity = excluded.identity, "
                "position = excluded.position, records_written = excluded.records_written, "
                "done = excluded.done, updated_at = excluded.updated_at",
                (
                    self.table,
                    self.shard,
                    self.shards,
                    json.dumps(self._identity, sort_keys=True),
                    json.dumps(checkpoint.position),
                    checkpoint.records_written,
                    int(checkpoint.done),
                    _now(),
                ),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._con.close()


def _check_identity(stored: dict[str, Any], identity: dict[str, Any], where: Path) -> None:
    diffs = [k for k in sorted(set(stored) | set(identity)) if stored.get(k) != identity.get(k)]
    if diffs:
        details = ", ".join(f"{k}: {stored.get(k)!r} -> {identity.get(k)!r}" for k in diffs)
        raise ReprocessError(
            f"checkpoint {where} belongs to another run ({details}); resume with the same input, "
            "model, calibration and shards, or write to a new output"
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the loop -------------------------------------------------------------------------------------
@dataclass
class Stats:
    read: int = 0
    in_shard: int = 0
    written: int = 0
    duplicates_skipped: int = 0
    resumed_from: int = 0
    already_done: bool = False


def reprocess(
    source: Source,
    sink: Sink,
    scorer: Scorer,
    *,
    shard: int,
    shards: int,
    identity: dict[str, Any],
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] = lambda _n: None,
) -> Stats:
    stats = Stats()
    cp = sink.open(identity)
    try:
        stats.resumed_from = cp.records_written
        if cp.done:
            stats.already_done = True
            return stats
        for chunk, position in source.chunks(cp.position, chunk_size):
            stats.read += len(chunk)
            mine: dict[str, Record] = {}
            for r in chunk:
                if shard_of(r.id, shards) != shard:
                    continue
                stats.in_shard += 1
                key = id_key(r.id)
                if key in mine or sink.seen(key):
                    stats.duplicates_skipped += 1
                    continue
                mine[key] = r
            scored = scorer(list(mine.values())) if mine else []
            cp.position = position
            cp.records_written += len(scored)
            sink.commit(scored, cp)
            stats.written += len(scored)
            progress(len(chunk))
        cp.done = True
        sink.commit([], cp)
    finally:
        sink.close()
    return stats


def model_scorer(model: Any, calibration: Any, batch_size: int = 32) -> Scorer:
    from inference_server.runtime.calibration import probabilities
    from inference_server.runtime.model import predict_logits

    def score(records: Sequence[Record]) -> list[Scored]:
        probs = probabilities(
            predict_logits(model, [r.text for r in records], batch_size=batch_size), calibration
        )
        out = []
        for r, p in zip(records, probs, strict=True):
            best = int(p.argmax())
            out.append(
                {
                    "id": r.id,
                    "label": model.labels[best],
                    "confidence": round(float(p[best]), 6),
                    "probabilities": {
                        lab: round(float(x), 6) for lab, x in zip(model.labels, p, strict=True)
                    },
                    "model_version": model.version,
                }
            )
        return out

    return score


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help="JSONL with 'id' and 'text' per line")
    src.add_argument("--input-sql", metavar="URL", help="sqlite:///path.db (or a path); needs --input-table")
    parser.add_argument("--input-table")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--text-column", default="text")
    dst = parser.add_mutually_exclusive_group(required=True)
    dst.add_argument("--output-dir", type=Path, help="JSONL output: one part file + checkpoint per shard")
    dst.add_argument(
        "--output-sql", metavar="URL", help="sqlite:///path.db (or a path); needs --output-table"
    )
    parser.add_argument("--output-table")
    add_model_arguments(parser)
    parser.add_argument(
        "--shard",
        type=int,
        default=None,
        help=f"this shard's index (default: ${Env.JOB_COMPLETION_INDEX} or 0)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        help=f"number of shards (default: ${Env.JOB_COMPLETIONS}, which an Indexed Job's pod template must "
        f"set since Kubernetes sets only ${Env.JOB_COMPLETION_INDEX}; 1 when neither is set)",
    )
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="records per committed chunk")
    parser.add_argument("--result", type=Path, help="write the JobResult JSON here (default: stdout)")


def run_identity(
    source: Source, shard: int, shards: int, model: Any, model_path: Path, calibration_path: Path | None
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed. The content hashes catch what the names miss: a
    different model copied to the same path and version, or a recalibrated calibration.json; either
    would otherwise mix two scorings in one output. The model hash is the artifact hash the server
    verifies (runtime.artifact), reused when the load already computed it; otherwise it costs one read
    of the model files per run, small next to scoring."""
    from inference_server.runtime.artifact import sha256_of_artifact

    return {
        "input": source.description,
        "shard": shard,
        "shards": shards,
        "model_version": model.version,
        "model_path": str(model_path.resolve()),
        "model_sha256": model.sha256 or sha256_of_artifact(model_path),
        "calibration_sha256": sha256_of_artifact(calibration_path) if calibration_path else None,
    }


def _source(args: argparse.Namespace) -> Source:
    if args.input is not None:
        return JsonlSource(args.input)
    if not args.input_table:
        raise ReprocessError("--input-sql needs --input-table")
    return SqliteSource(sqlite_path(args.input_sql), args.input_table, args.id_column, args.text_column)


def _sink(args: argparse.Namespace, shard: int, shards: int) -> Sink:
    if args.output_dir is not None:
        return JsonlSink(args.output_dir, shard, shards)
    if not args.output_table:
        raise ReprocessError("--output-sql needs --output-table")
    return SqliteSink(sqlite_path(args.output_sql), args.output_table, shard, shards)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from inference_server.runtime.calibration import CalibrationError, CalibrationParams
    from inference_server.runtime.model import ArtifactError, ModelLoadError

    try:
        shard, shards = resolve_shard(args.shard, args.shards, os.environ)
        if args.chunk_size < 1:
            raise ReprocessError(f"--chunk-size must be at least 1, got {args.chunk_size}")
        if args.model is None:
            raise ReprocessError(f"give --model or set {Env.MODEL_PATH}")
        source = _source(args)
        model = load_model_of(args)
        calibration = CalibrationParams.load(args.calibration) if args.calibration else None
        sink = _sink(args, shard, shards)
        identity = run_identity(source, shard, shards, model, Path(args.model), args.calibration)
        with tqdm(
            total=source.total(), desc=f"reprocess shard {shard}/{shards}", unit="rec", file=sys.stderr
        ) as bar:
            stats = reprocess(
                source,
                sink,
                model_scorer(model, calibration),
                shard=shard,
                shards=shards,
                identity=identity,
                chunk_size=args.chunk_size,
                progress=bar.update,
            )
    except (MLInputError, ModelLoadError, ArtifactError, CalibrationError, sqlite3.Error) as exc:
        return cli_error("reprocess", str(exc), EXIT_BAD_INPUT)
    result = JobResult(
        kind=JobKind.REPROCESS,
        outcome=JobOutcome.SUCCEEDED,
        model_version=model.version,
        finished_at=_now(),
        metrics={
            "records_read": stats.read,
            "records_in_shard": stats.in_shard,
            "records_written": stats.written,
            "duplicates_skipped": stats.duplicates_skipped,
            "resumed_from": stats.resumed_from,
        },
        detail={
            "shard": shard,
            "shards": shards,
            "input": source.description,
            "output": sink.description,
            "already_done": stats.already_done,
        },
        message=(
            "shard already complete: nothing written"
            if stats.already_done
            else f"wrote {stats.written} records (resumed after {stats.resumed_from})"
        ),
    )
    text = json.dumps(json.loads(result.to_json()), indent=2, sort_keys=True)
    if args.result:
        args.result.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return EXIT_OK
