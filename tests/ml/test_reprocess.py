"""reprocess: exactly-once output under SIGKILL and resume, idempotent re-runs, exact sharding."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from inference_server.contract import Env, JobKind, JobResult
from inference_server.ml import reprocess as RP
from inference_server.ml.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
WORDS = ("great", "awful", "love", "hate", "excellent", "terrible", "film", "story")


def write_input(path: Path, n: int, *, duplicate_every: int = 0) -> list[Any]:
    ids: list[Any] = []
    with path.open("w") as fh:
        for i in range(n):
            rid: Any = i if i % 2 else f"rec-{i}"  # ids may be numbers or strings
            ids.append(rid)
            fh.write(
                json.dumps({"id": rid, "text": f"the {WORDS[i % len(WORDS)]} {WORDS[(i * 3) % 8]}"}) + "\n"
            )
            if i % 7 == 0:
                fh.write("\n")  # blank lines are skipped, not records
            if duplicate_every and i % duplicate_every == 0:
                fh.write(json.dumps({"id": rid, "text": "again"}) + "\n")
    return ids


def fake_scorer(records: Sequence[RP.Record]) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "label": "positive" if "great" in r.text else "negative",
            "confidence": 0.9,
            "probabilities": {"negative": 0.1, "positive": 0.9},
            "model_version": "fake",
        }
        for r in records
    ]


def ids_in(output_dir: Path) -> Counter[str]:
    return Counter(
        RP.id_key(json.loads(line)["id"])
        for part in sorted(output_dir.glob("part-*.jsonl"))
        for line in part.read_text().splitlines()
    )


IDENTITY = {"input": "test", "model_version": "fake"}


# --- sharding -------------------------------------------------------------------------------------------
def test_shards_partition_the_ids_exactly() -> None:
    ids: list[Any] = [*range(1000), *(f"id-{i}" for i in range(1000))]
    for shards in (1, 2, 3, 7):
        owners = [RP.shard_of(i, shards) for i in ids]
        assert all(0 <= o < shards for o in owners)
        counts = Counter(owners)
        assert sum(counts.values()) == len(ids)
        assert min(counts.values()) > len(ids) / shards * 0.8  # and roughly balanced
    # Stable across processes: a fixed value, not Python's salted hash().
    assert (
        RP.shard_of("rec-0", 7)
        == int.from_bytes(__import__("hashlib").sha256(b"rec-0").digest()[:8], "big") % 7
    )
    assert RP.shard_of(5, 3) == RP.shard_of("5", 3)


def test_shard_from_the_indexed_job_environment() -> None:
    assert RP.resolve_shard(None, None, {}) == (0, 1)
    assert RP.resolve_shard(None, None, {Env.JOB_COMPLETION_INDEX: "2", Env.JOB_COMPLETIONS: "3"}) == (2, 3)
    with pytest.raises(RP.ReprocessError, match=r"not within 0\.\.2"):
        RP.resolve_shard(None, None, {Env.JOB_COMPLETION_INDEX: "3", Env.JOB_COMPLETIONS: "3"})
    with pytest.raises(RP.ReprocessError, match="must be integers"):
        RP.resolve_shard(None, None, {Env.JOB_COMPLETION_INDEX: "x"})


def test_sqlite_urls_and_identifiers() -> None:
    assert RP.sqlite_path("sqlite:////tmp/a.db") == Path("/tmp/a.db")
    assert RP.sqlite_path("sqlite:///rel.db") == Path("rel.db")
    assert RP.sqlite_path("data/x.db") == Path("data/x.db")
    with pytest.raises(RP.ReprocessError, match="only sqlite"):
        RP.sqlite_path("postgresql://h/db")
    with pytest.raises(RP.ReprocessError, match="identifier"):
        RP.identifier("t; DROP TABLE x", "table")


# --- the loop with an injected scorer ------------------------------------------------------------------
def test_crash_between_output_and_checkpoint_then_resume_is_exactly_once(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    ids = write_input(src, 95)
    out = tmp_path / "out"
    calls = {"n": 0}

    def dying(records: Sequence[RP.Record]) -> list[dict[str, Any]]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return fake_scorer(records)

    with pytest.raises(RuntimeError):
        RP.reprocess(
            RP.JsonlSource(src),
            RP.JsonlSink(out, 0, 1),
            dying,
            shard=0,
            shards=1,
            identity=IDENTITY,
            chunk_size=10,
        )
    # Simulate the worst case: the next chunk reached the file, its checkpoint did not.
    part = out / "part-00000-of-00001.jsonl"
    committed = json.loads((out / "part-00000-of-00001.checkpoint.json").read_text())
    assert committed["records_written"] == 30 and part.stat().st_size == committed["output_bytes"]
    with part.open("a") as fh:
        fh.write('{"id": "rec-30", "label": "x"}\n{"id": "half-writ')
    stats = RP.reprocess(
        RP.JsonlSource(src),
        RP.JsonlSink(out, 0, 1),
        fake_scorer,
        shard=0,
        shards=1,
        identity=IDENTITY,
        chunk_size=10,
    )
    assert stats.resumed_from == 30 and stats.written == 65
    assert ids_in(out) == Counter(RP.id_key(i) for i in ids)


def test_rerun_after_completion_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_input(src, 40)
    out = tmp_path / "out"

    def run() -> RP.Stats:
        return RP.reprocess(
            RP.JsonlSource(src),
            RP.JsonlSink(out, 0, 1),
            fake_scorer,
            shard=0,
            shards=1,
            identity=IDENTITY,
            chunk_size=16,
        )

    first = run()
    before = (out / "part-00000-of-00001.jsonl").read_bytes()
    second = run()
    assert first.written == 40 and second.already_done and second.written == 0
    assert (out / "part-00000-of-00001.jsonl").read_bytes() == before


def test_duplicate_ids_in_the_input_are_written_once(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    ids = write_input(src, 30, duplicate_every=4)
    out = tmp_path / "out"
    stats = RP.reprocess(
        RP.JsonlSource(src),
        RP.JsonlSink(out, 0, 1),
        fake_scorer,
        shard=0,
        shards=1,
        identity=IDENTITY,
        chunk_size=5,
    )
    assert stats.duplicates_skipped == 8
    assert ids_in(out) == Counter(RP.id_key(i) for i in ids)


def test_checkpoint_of_another_run_or_foreign_output_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_input(src, 10)
    out = tmp_path / "out"
    RP.reprocess(
        RP.JsonlSource(src),
        RP.JsonlSink(out, 0, 1),
        fake_scorer,
        shard=0,
        shards=1,
        identity=IDENTITY,
        chunk_size=4,
    )
    with pytest.raises(RP.ReprocessError, match="model_version"):
        RP.JsonlSink(out, 0, 1).open({**IDENTITY, "model_version": "other"})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "part-00000-of-00001.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(RP.ReprocessError, match="without a checkpoint"):
        RP.JsonlSink(foreign, 0, 1).open(IDENTITY)


def test_bad_input_line_names_the_file_and_byte(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "ok"}\n{"id": 2}\n')
    with pytest.raises(RP.ReprocessError, match=r"in.jsonl at byte 24"):
        list(RP.JsonlSource(src).chunks(None, 10))


def make_db(path: Path, n: int) -> list[int]:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE reviews (review_id INTEGER PRIMARY KEY, body TEXT)")
    con.executemany("INSERT INTO reviews VALUES (?, ?)", [(i, f"{WORDS[i % 8]} movie") for i in range(n)])
    con.commit()
    con.close()
    return list(range(n))


def test_sql_to_sql_upserts_and_resumes(tmp_path: Path) -> None:
    db = tmp_path / "in.db"
    ids = make_db(db, 57)
    out = tmp_path / "out.db"
    calls = {"n": 0}

    def dying(records: Sequence[RP.Record]) -> list[dict[str, Any]]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return fake_scorer(records)

    source = lambda: RP.SqliteSource(db, "reviews", "review_id", "body")  # noqa: E731
    with pytest.raises(RuntimeError):
        RP.reprocess(
            source(),
            RP.SqliteSink(out, "scores", 0, 1),
            dying,
            shard=0,
            shards=1,
            identity=IDENTITY,
            chunk_size=10,
        )
    stats = RP.reprocess(
        source(),
        RP.SqliteSink(out, "scores", 0, 1),
        fake_scorer,
        shard=0,
        shards=1,
        identity=IDENTITY,
        chunk_size=10,
    )
    assert stats.resumed_from == 20
    con = sqlite3.connect(out)
    rows = con.execute("SELECT id, COUNT(*) FROM scores GROUP BY id").fetchall()
    assert sorted(r[0] for r in rows) == ids and {r[1] for r in rows} == {1}
    assert RP.reprocess(
        source(),
        RP.SqliteSink(out, "scores", 0, 1),
        fake_scorer,
        shard=0,
        shards=1,
        identity=IDENTITY,
        chunk_size=10,
    ).already_done


# --- the real command: tiny model, SIGKILL half-way, resume ------------------------------------------
def run_cli_subprocess(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "inference_server.ml.cli", "reprocess", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sigkill_half_way_then_resume_jsonl(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = tmp_path / "in.jsonl"
    ids = write_input(src, 120)
    out = tmp_path / "out"
    args = [
        "--input",
        str(src),
        "--output-dir",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--model-version",
        "tiny",
        "--chunk-size",
        "16",
    ]
    killed = run_cli_subprocess(args, {RP.KILL_HOOK_ENV: "50"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    part = out / "part-00000-of-00001.jsonl"
    committed = json.loads((out / "part-00000-of-00001.checkpoint.json").read_text())
    # It died after writing a chunk and before committing it: output runs past the checkpoint.
    assert part.stat().st_size > committed["output_bytes"] and committed["records_written"] == 48
    resumed = run_cli_subprocess(args, {})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = JobResult.from_json(resumed.stdout)
    assert result.kind is JobKind.REPROCESS and result.metrics["resumed_from"] == 48
    assert ids_in(out) == Counter(RP.id_key(i) for i in ids)
    lines = [json.loads(line) for line in part.read_text().splitlines()]
    assert {line["model_version"] for line in lines} == {"tiny"}
    assert {line["label"] for line in lines} <= {"negative", "positive"}


def test_sigkill_half_way_then_resume_sql(tmp_path: Path, tiny_model_dir: Path) -> None:
    db = tmp_path / "in.db"
    ids = make_db(db, 90)
    out = tmp_path / "out.db"
    args = [
        "--input-sql",
        f"sqlite:///{db}",
        "--input-table",
        "reviews",
        "--id-column",
        "review_id",
        "--text-column",
        "body",
        "--output-sql",
        str(out),
        "--output-table",
        "scores",
        "--model",
        str(tiny_model_dir),
        "--chunk-size",
        "20",
    ]
    assert run_cli_subprocess(args, {RP.KILL_HOOK_ENV: "40"}).returncode == -signal.SIGKILL
    con = sqlite3.connect(out)
    # Killed inside the transaction of the chunk that reached 40 records: only the first chunk stays.
    assert con.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 20
    con.close()
    resumed = run_cli_subprocess(args, {})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    con = sqlite3.connect(out)
    assert sorted(r[0] for r in con.execute("SELECT id FROM scores")) == ids


def test_indexed_job_shards_cover_every_id_once(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    ids = write_input(src, 80)
    out = tmp_path / "out"
    shards = 3
    monkeypatch.setenv(Env.JOB_COMPLETIONS, str(shards))
    written = []
    for index in range(shards):
        monkeypatch.setenv(Env.JOB_COMPLETION_INDEX, str(index))
        assert (
            cli(
                [
                    "reprocess",
                    "--input",
                    str(src),
                    "--output-dir",
                    str(out),
                    "--model",
                    str(tiny_model_dir),
                    "--chunk-size",
                    "7",
                ]
            )
            == 0
        )
        written.append(JobResult.from_json(capsys.readouterr().out).metrics["records_written"])
        part_ids = ids_in_file(out / f"part-{index:05d}-of-{shards:05d}.jsonl")
        assert {RP.shard_of(i, shards) for i in part_ids} == {index}
    assert sum(written) == len(ids)
    assert ids_in(out) == Counter(RP.id_key(i) for i in ids)
    # A shard run again is a no-op.
    monkeypatch.setenv(Env.JOB_COMPLETION_INDEX, "1")
    assert (
        cli(["reprocess", "--input", str(src), "--output-dir", str(out), "--model", str(tiny_model_dir)]) == 0
    )
    assert JobResult.from_json(capsys.readouterr().out).detail["already_done"] is True
    assert ids_in(out) == Counter(RP.id_key(i) for i in ids)


def ids_in_file(path: Path) -> list[Any]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_cli_bad_arguments_exit_2(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    write_input(src, 3)
    model = ["--model", str(tiny_model_dir)]
    assert (
        cli(["reprocess", "--input", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path), *model])
        == 2
    )
    assert "input file not found" in capsys.readouterr().err
    assert cli(["reprocess", "--input", str(src), "--output-sql", str(tmp_path / "o.db"), *model]) == 2
    assert "--output-table" in capsys.readouterr().err
    assert (
        cli(
            [
                "reprocess",
                "--input",
                str(src),
                "--output-dir",
                str(tmp_path / "o"),
                "--shard",
                "3",
                "--shards",
                "3",
                *model,
            ]
        )
        == 2
    )
    assert "not within" in capsys.readouterr().err


# --- audit regressions ----------------------------------------------------------------------------------
def test_sql_input_with_null_ids_is_refused_not_looped_over(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "in.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE reviews (id TEXT, text TEXT)")  # no PRIMARY KEY: NULL ids are allowed
    con.executemany(
        "INSERT INTO reviews VALUES (?, ?)",
        [(None if i % 10 == 0 else f"r{i}", "great film") for i in range(101)],
    )
    con.commit()
    con.close()
    # Paging restarted from the top on a NULL last id: bound the iteration so the old code fails, not hangs.
    with pytest.raises(RP.ReprocessError, match=r"11 row.* NULL or binary id"):
        list(itertools.islice(RP.SqliteSource(db, "reviews").chunks(None, 10), 50))
    out = tmp_path / "out.db"
    argv = [
        "reprocess",
        "--input-sql",
        str(db),
        "--input-table",
        "reviews",
        "--output-sql",
        str(out),
        "--output-table",
        "scores",
        "--model",
        str(tiny_model_dir),
    ]
    assert cli(argv) == 2
    assert "NULL or binary id" in capsys.readouterr().err
    assert not out.exists()  # refused before any output was created


def test_sql_output_ids_are_not_null(tmp_path: Path) -> None:
    # SQLite lets a non-INTEGER PRIMARY KEY hold many NULLs, and a NULL never conflicts: no upsert.
    sink = RP.SqliteSink(tmp_path / "out.db", "scores", 0, 1)
    sink.open(IDENTITY)
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        sink.commit([{**fake_scorer([RP.Record("x", "great")])[0], "id": None}], RP.Checkpoint())
    sink.close()


def test_resume_with_another_calibration_or_model_content_is_refused(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    write_input(src, 12)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"temperature": 1.5}))
    argv = [
        "reprocess",
        "--input",
        str(src),
        "--output-dir",
        str(tmp_path / "out"),
        "--model",
        str(model),
        "--model-version",
        "v1",
        "--calibration",
        str(calibration),
    ]
    assert cli(argv) == 0
    capsys.readouterr()
    assert cli(argv) == 0  # the same run again: already done
    assert JobResult.from_json(capsys.readouterr().out).detail["already_done"] is True

    calibration.write_text(json.dumps({"temperature": 3.0}))  # recalibrated behind the same path
    assert cli(argv) == 2
    assert "calibration_sha256" in capsys.readouterr().err
    calibration.write_text(json.dumps({"temperature": 1.5}))
    (model / "README.md").write_text("another model, same path and version\n")
    assert cli(argv) == 2
    assert "model_sha256" in capsys.readouterr().err


def test_job_completion_index_without_job_completions_is_refused(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Kubernetes sets only the index; defaulting the count to 1 made index 0 take every id.
    for index in ("0", "2"):
        with pytest.raises(RP.ReprocessError, match=f"{Env.JOB_COMPLETIONS} is not"):
            RP.resolve_shard(None, None, {Env.JOB_COMPLETION_INDEX: index})
    assert RP.resolve_shard(None, 3, {Env.JOB_COMPLETION_INDEX: "2"}) == (2, 3)  # --shards supplies it
    assert RP.resolve_shard(1, 2, {}) == (1, 2)
    src = tmp_path / "in.jsonl"
    write_input(src, 5)
    monkeypatch.setenv(Env.JOB_COMPLETION_INDEX, "0")
    monkeypatch.delenv(Env.JOB_COMPLETIONS, raising=False)
    out = tmp_path / "out"
    assert (
        cli(["reprocess", "--input", str(src), "--output-dir", str(out), "--model", str(tiny_model_dir)]) == 2
    )
    assert f"set {Env.JOB_COMPLETIONS}" in capsys.readouterr().err
    assert not out.exists()


def _run_jsonl(
    src: Path, out: Path, *, shards: int = 1, shard: int = 0, chunk: int = 4, scorer: RP.Scorer = fake_scorer
) -> RP.Stats:
    return RP.reprocess(
        RP.JsonlSource(src),
        RP.JsonlSink(out, shard, shards),
        scorer,
        shard=shard,
        shards=shards,
        identity=IDENTITY,
        chunk_size=chunk,
    )


def test_an_input_rewritten_before_the_checkpoint_is_refused_and_one_appended_to_resumes(
    tmp_path: Path,
) -> None:
    # The checkpoint held only a byte offset: ids inserted at the front were skipped, silently.
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    lines = [json.dumps({"id": f"r{i}", "text": "great film"}) + "\n" for i in range(6)]
    src.write_text("".join(lines))
    _run_jsonl(src, out)
    appended = [json.dumps({"id": f"r{i}", "text": "awful film"}) + "\n" for i in range(6, 9)]
    src.write_text("".join(lines + appended))  # a log that grew: resumes after what was done
    checkpoint = out / "part-00000-of-00001.checkpoint.json"
    done = json.loads(checkpoint.read_text())
    checkpoint.write_text(json.dumps({**done, "done": False}))
    stats = _run_jsonl(src, out)
    assert stats.written == 3 and ids_in(out) == Counter(RP.id_key(f"r{i}") for i in range(9))
    inserted = [json.dumps({"id": f"n{i}", "text": "new"}) + "\n" for i in range(2)]
    src.write_text("".join(inserted + lines + appended))
    checkpoint.write_text(json.dumps({**json.loads(checkpoint.read_text()), "done": False}))
    with pytest.raises(RP.ReprocessError, match="changed since the checkpoint"):
        _run_jsonl(src, out)


def test_a_second_writer_of_the_same_shard_is_refused_until_the_first_is_done(tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    write_input(src, 10)
    first = RP.JsonlSink(out, 0, 1)
    first.open(IDENTITY)
    with pytest.raises(RP.ReprocessError, match="another reprocess is writing"):
        _run_jsonl(src, out)
    first.close()
    assert _run_jsonl(src, out).written == 10


def test_an_output_dir_written_with_another_shard_count_is_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    write_input(src, 20)
    for shard in range(2):
        _run_jsonl(src, out, shards=2, shard=shard)
    with pytest.raises(RP.ReprocessError, match=r"another shard count \(part-00000-of-00002.jsonl\)"):
        _run_jsonl(src, out, shards=3)
    assert sum(ids_in(out).values()) == 20


def test_ids_compare_as_sqlite_compares_them_and_booleans_are_refused(tmp_path: Path) -> None:
    assert RP.id_key("1") != RP.id_key(1) and RP.id_key(1) == RP.id_key(1.0)
    assert RP.shard_of("5", 3) == RP.shard_of(5, 3)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "1", "text": "a"}) + "\n" + json.dumps({"id": 1, "text": "b"}) + "\n")
    assert _run_jsonl(src, tmp_path / "out").written == 2  # two records, as a SQLite output keeps them
    src.write_text(json.dumps({"id": True, "text": "a"}) + "\n")
    with pytest.raises(RP.ReprocessError, match="at byte 0"):
        list(RP.JsonlSource(src).chunks(None, 10))


@pytest.mark.parametrize(
    "row", [("a", None), ("b", 42), (b"\x00\x01", "great film")], ids=["null-text", "number-text", "blob-id"]
)
def test_sql_rows_without_a_text_or_with_a_binary_id_are_refused(
    tmp_path: Path, row: tuple[Any, Any]
) -> None:
    # A NULL text was scored as the string "None"; a BLOB id crashed the JSON output with a traceback.
    db = tmp_path / "in.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE reviews (id, text)")
        con.executemany("INSERT INTO reviews VALUES (?, ?)", [("ok", "great film"), row])
        con.commit()
    with pytest.raises(RP.ReprocessError, match=r"1 row.* NULL or binary id, or a text that is not text"):
        RP.SqliteSource(db, "reviews")


def test_a_sqlite_input_path_with_uri_characters_is_opened_read_only_as_named(tmp_path: Path) -> None:
    # "file:{path}?mode=ro" cut a path at '#' or '?': another file was opened read-write, and created.
    folder = tmp_path / "odd#dir?x"
    folder.mkdir()
    db = folder / "in#1.db"
    make_db(db, 5)
    source = RP.SqliteSource(db, "reviews", "review_id", "body")
    records = [r for chunk, _ in source.chunks(None, 10) for r in chunk]
    assert len(records) == 5
    assert sorted(p.name for p in folder.iterdir()) == ["in#1.db"]


def test_a_checkpoint_from_before_the_fingerprint_resumes_and_so_does_the_next_one(tmp_path: Path) -> None:
    # A legacy checkpoint (a bare byte offset) was resumed with a hash started at the offset, so the next
    # resume of the unchanged input was refused as "changed since the checkpoint".
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    lines = [json.dumps({"id": f"r{i}", "text": "great film"}) + "\n" for i in range(9)]
    src.write_text("".join(lines))
    checkpoint = out / "part-00000-of-00001.checkpoint.json"
    calls = {"n": 0}

    def dying(records: Sequence[RP.Record]) -> list[dict[str, Any]]:
        calls["n"] += 1
        if calls["n"] in (2, 4):
            raise RuntimeError("killed")
        return fake_scorer(records)

    def run() -> None:
        _run_jsonl(src, out, chunk=3, scorer=dying)

    with pytest.raises(RuntimeError):
        run()
    legacy = json.loads(checkpoint.read_text())
    checkpoint.write_text(json.dumps({**legacy, "position": legacy["position"]["offset"]}))
    with pytest.raises(RuntimeError):
        run()  # resumes from the bare offset, then dies again
    run()  # resumes from the checkpoint the legacy resume wrote
    assert ids_in(out) == Counter(RP.id_key(f"r{i}") for i in range(9))


def test_ids_that_are_the_same_record_share_a_shard() -> None:
    # id_key calls 1 and 1.0 one record; sharding hashed "1" and "1.0", so two shards each wrote it.
    for shards in (2, 7, 13):
        assert RP.shard_of(1.0, shards) == RP.shard_of(1, shards) == RP.shard_of("1", shards)
        assert RP.shard_of(2.5, shards) == RP.shard_of("2.5", shards)
