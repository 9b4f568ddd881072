"""bias-audit: the curated dataset, the per-group evaluation and verdict, the command on a real model."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference_server.ml import bias_audit as B
from inference_server.ml.cli import main as cli

ATTRIBUTES = ("gender", "race_ethnicity", "religion", "age", "nationality", "disability")


# --- the curated dataset --------------------------------------------------------------------------------
def test_curated_dataset_covers_every_attribute_with_balanced_groups() -> None:
    rows, sha = B.load_dataset()
    assert len(sha) == 64 and len(rows) >= 1000
    assert tuple(dict.fromkeys(r.attribute for r in rows)) == ATTRIBUTES
    assert len({r.id for r in rows}) == len(rows)
    assert set(r.polarity for r in rows) == set(B.POLARITIES)
    for attribute in ATTRIBUTES:
        per_group = Counter(r.group for r in rows if r.attribute == attribute)
        assert len(per_group) >= 3 and len(set(per_group.values())) == 1, (attribute, per_group)
        polarity = Counter((r.group, r.polarity) for r in rows if r.attribute == attribute)
        assert len(set(polarity.values())) == 1


def test_sibling_sentences_differ_only_in_the_identity_term() -> None:
    rows, _ = B.load_dataset()
    by_template: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        assert r.term.lower() in r.text.lower() and "{person}" not in r.text
        assert r.text[0].isupper()
        by_template.setdefault((r.attribute, r.template), set()).add(
            r.text.lower().replace(r.term.lower(), "<T>", 1)
        )
    assert all(len(frames) == 1 for frames in by_template.values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["attributes"]["age"].update({"young": ["the kid"]}), "same, non-zero number"),
        (lambda s: s["templates"]["neutral"].append("no slot here"), "has no {person} slot"),
        (lambda s: s["attributes"].update({"solo": {"only": ["x"]}}), "at least two groups"),
        (lambda s: s.pop("templates"), "lacks 'templates'"),
    ],
)
def test_malformed_dataset_is_refused(change: Any, message: str) -> None:
    spec = json.loads(B.DATASET_PATH.read_text())
    change(spec)
    with pytest.raises(B.BiasAuditError, match=message):
        B.expand(spec)


# --- the evaluation ---------------------------------------------------------------------------------------
def probs_for(rows: list[B.AuditRow], bias: dict[str, float]) -> np.ndarray:
    """P(positive) from the template's polarity, shifted for groups named in `bias`."""
    base = {"positive": 0.9, "negative": 0.1, "neutral": 0.55}
    p = np.array([np.clip(base[r.polarity] + bias.get(r.group, 0.0), 0, 1) for r in rows])
    return np.stack([1 - p, p], axis=1)


def test_an_unbiased_model_passes_with_zero_gaps() -> None:
    rows, _ = B.load_dataset()
    result = B.evaluate(rows, probs_for(rows, {}), ("negative", "positive"), threshold=0.1)
    assert result["passed"] and result["attributes_failed"] == []
    assert result["largest_gap"] == pytest.approx(0.0)
    assert result["overall_positive_rate_by_polarity"] == {"neutral": 1.0, "positive": 1.0, "negative": 0.0}


def test_a_model_biased_against_one_group_fails_on_that_attribute() -> None:
    rows, _ = B.load_dataset()
    result = B.evaluate(rows, probs_for(rows, {"muslim": -0.2}), ("negative", "positive"), threshold=0.1)
    assert not result["passed"] and result["attributes_failed"] == ["religion"]
    gap = result["attributes"]["religion"]["largest_gap"]
    assert gap["lowest"] == "muslim" and gap["slice"] == "neutral" and gap["metric"] == "positive_rate"
    assert gap["gap"] == pytest.approx(1.0)  # 0.55 -> 0.35 flips every neutral sentence to negative
    stats = result["attributes"]["religion"]["stats"]["all"]["muslim"]
    assert stats["mean_positive_probability"] == pytest.approx((0.7 + 0.0 + 0.35) / 3, abs=1e-9)
    assert result["largest_gap_detail"]["attribute"] == "religion"
    # The same shift within the threshold passes.
    mild = B.evaluate(rows, probs_for(rows, {"muslim": -0.04}), ("negative", "positive"), threshold=0.1)
    assert mild["passed"]


def test_three_class_models_are_audited_on_their_positive_label() -> None:
    rows, _ = B.load_dataset()
    two = probs_for(rows, {})
    three = np.stack([two[:, 0] * 0.8, two[:, 0] * 0.2, two[:, 1]], axis=1)
    result = B.evaluate(rows, three, ("negative", "neutral", "positive"), threshold=0.1)
    assert result["passed"]
    with pytest.raises(B.BiasAuditError, match="no 'positive' label"):
        B.evaluate(rows, two, ("neg", "pos"), threshold=0.1)


def test_markdown_report_lists_every_attribute_and_group() -> None:
    rows, sha = B.load_dataset()
    result = B.evaluate(rows, probs_for(rows, {"deaf": 0.3}), ("negative", "positive"), threshold=0.1)
    md = B.render_markdown(
        {**result, "model": {"version": "v1"}, "dataset": {"path": "x.json", "sha256": sha}}
    )
    assert md.startswith("# Bias audit: FAIL")
    assert "| disability |" in md and "FAIL |" in md
    for attribute in ATTRIBUTES:
        assert f"## {attribute}" in md
    assert "| deaf |" in md and "| no_disability_mentioned |" in md


# --- the command on the tiny model ----------------------------------------------------------------------
def small_dataset(path: Path, terms_a: list[str], terms_b: list[str]) -> Path:
    spec = {
        "slot": "{person}",
        "templates": {
            "neutral": ["{person} was in the film", "the story of {person}"],
            "positive": ["{person} was great", "i love {person}"],
            "negative": ["{person} was awful", "i hate {person}"],
        },
        "attributes": {"toy": {"a": terms_a, "b": terms_b}},
    }
    path.write_text(json.dumps(spec))
    return path


def test_command_exit_code_reflects_the_verdict(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tiny model knows sentiment words, so "identity terms" made of them must open a gap...
    biased = small_dataset(
        tmp_path / "biased.json",
        ["the excellent people", "the wonderful people"],
        ["the terrible people", "the horrible people"],
    )
    out, md = tmp_path / "audit.json", tmp_path / "audit.md"
    base = ["bias-audit", "--model", str(tiny_model_dir), "--model-version", "tiny"]
    assert cli([*base, "--dataset", str(biased), "--output", str(out), "--markdown", str(md)]) == 1
    result = json.loads(out.read_text())
    assert result["passed"] is False and result["attributes_failed"] == ["toy"]
    assert result["attributes"]["toy"]["largest_gap"]["highest"] == "a"
    assert result["dataset_sha256"] and result["model"]["version"] == "tiny"
    assert md.read_text().startswith("# Bias audit: FAIL")
    assert "FAIL" in capsys.readouterr().err
    # ...and identical terms for both groups cannot (words the tiny tokenizer knows: see below).
    fair = small_dataset(tmp_path / "fair.json", ["the people", "my people"], ["the people", "my people"])
    assert cli([*base, "--dataset", str(fair), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["largest_gap"] == pytest.approx(0.0, abs=1e-6)


def test_command_runs_the_curated_dataset_and_bad_inputs_exit_2(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.json"
    rc = cli(["bias-audit", "--model", str(tiny_model_dir), "--threshold", "1.0", "--output", str(out)])
    # The tiny model's word-level vocabulary lacks most identity terms: not auditable, so it fails.
    result = json.loads(out.read_text())
    assert rc == 1 and result["rows"] == len(B.load_dataset()[0])
    assert result["attributes_not_auditable"] and not result["passed"]
    assert cli(["bias-audit", "--model", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli(["bias-audit", "--model", str(tiny_model_dir), "--threshold", "2"]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert cli(["bias-audit", "--model", str(tiny_model_dir), "--dataset", str(broken)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({}, "attributes must be a non-empty object"),
        ({"g": ["a", "b"]}, "attributes/g must be an object of group"),
        ({"g": {"a": "x", "b": "y"}}, "attributes/g/a must be a non-empty list"),
    ],
)
def test_attributes_of_the_wrong_shape_are_refused(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], attributes: Any, message: str
) -> None:
    path = tmp_path / "audit.json"
    spec = json.loads(small_dataset(path, ["x"], ["y"]).read_text())
    path.write_text(json.dumps({**spec, "attributes": attributes}))
    with pytest.raises(B.BiasAuditError) as err:
        B.load_dataset(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert cli(["bias-audit", "--model", str(tiny_model_dir), "--dataset", str(path)]) == 2
    err_text = capsys.readouterr().err
    assert message in err_text and err_text.count("\n") == 1


def markdown_problems(text: str) -> list[str]:
    """Structural damage in a markdown report: a heading run into a sentence, a table row cut off or
    left outside a table, a table without header and separator or with ragged or repeated rows."""
    problems: list[str] = []
    lines, fenced, table = text.splitlines(), False, []
    for n, line in enumerate([*lines, ""], 1):
        fenced ^= line.startswith("```")
        if fenced or line.startswith("```"):
            continue
        if re.search(r"\S.*\s#{2,6} \S", line) and not line.startswith("#"):
            problems.append(f"line {n}: a heading inside a sentence: {line[-60:]!r}")
        if line.rstrip().endswith("|") and not line.startswith("|"):
            problems.append(f"line {n}: a table row fragment: {line[:60]!r}")
        if line.startswith("|"):
            table.append((n, line))
            continue
        if table:
            problems += _table_problems(table)
            table = []
    return problems


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table_problems(table: list[tuple[int, str]]) -> list[str]:
    first = table[0][0]
    if len(table) < 3 or not re.fullmatch(r"\|( *:?-+:? *\|)+", table[1][1].strip()):
        return [f"line {first}: a table without a header and separator row"]
    width = len(_cells(table[0][1]))
    problems = [
        f"line {n}: {len(_cells(row))} cells, header has {width}"
        for n, row in table
        if len(_cells(row)) != width
    ]
    keys = [_cells(row)[0] for _, row in table[2:]]
    problems += [f"table at line {first}: row {k!r} repeated" for k in sorted(set(keys)) if keys.count(k) > 1]
    return problems


def test_the_bias_audit_report_and_its_generator_are_well_formed() -> None:
    report = Path(__file__).parents[2] / "docs" / "reports" / "bias-audit.md"
    assert markdown_problems(report.read_text()) == []
    assert markdown_problems("a sentence. Exit code 0 ## Results\n") != []  # the checker sees the damage
    assert markdown_problems("| a | b |\n| --- | --- |\n| x | 1 |\n\nrazilian 0.733 |\n| x | 2 |\n") != []
    rows, sha = B.load_dataset()
    result = B.evaluate(rows, probs_for(rows, {"deaf": 0.3}), ("negative", "positive"), threshold=0.1)
    generated = B.render_markdown(
        {**result, "model": {"version": "v1"}, "dataset": {"path": "x", "sha256": sha}}
    )
    assert markdown_problems(generated) == []


# --- models whose outputs cannot be audited ----------------------------------------------------------------
def test_nan_probabilities_are_refused() -> None:
    """argmax of a NaN row is 0 and NaN gaps lose every max(): a NaN model passed with gap 0.000."""
    rows, _ = B.load_dataset()
    probs = probs_for(rows, {})
    probs[3] = np.nan
    with pytest.raises(B.BiasAuditError, match="NaN/inf probabilities for 1 of 3552 sentences"):
        B.evaluate(rows, probs, ("negative", "positive"), threshold=0.1)


@pytest.mark.parametrize("to_file", [True, False])
def test_a_model_that_outputs_nan_exits_2_with_one_line(
    tmp_path: Path, nan_model_dir: Path, capsys: pytest.CaptureFixture[str], to_file: bool
) -> None:
    out = tmp_path / "audit.json"
    argv = ["bias-audit", "--model", str(nan_model_dir), *(["--output", str(out)] if to_file else [])]
    assert cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists() and "Traceback" not in captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("sentiment-ml bias-audit: error: the model gave NaN")


def test_a_group_whose_terms_the_tokenizer_cannot_see_is_not_auditable() -> None:
    """A term that tokenizes to [UNK] makes its sentences identical to the model's eyes: the gap is 0
    and the attribute passed. Now the group is marked and the attribute fails."""
    rows, sha = B.load_dataset()
    unknown = {"the Muslim person", "my Muslim coworker", "my Irish neighbor"}
    result = B.evaluate(
        rows, probs_for(rows, {}), ("negative", "positive"), threshold=0.1, unknown_terms=unknown
    )
    assert not result["passed"] and result["largest_gap"] == pytest.approx(0.0)
    assert result["attributes_failed"] == result["attributes_not_auditable"] == ["religion", "nationality"]
    assert result["attributes"]["religion"]["not_auditable"] == {
        "muslim": ["the Muslim person", "my Muslim coworker"]}
    assert result["attributes"]["age"]["not_auditable"] == {} and result["attributes"]["age"]["passed"]
    summary = B.not_auditable_summary(result)
    assert summary == ("not auditable, terms the tokenizer maps to its unknown token: "
                       "religion/muslim ('the Muslim person'), nationality/irish ('my Irish neighbor')")
    md = B.render_markdown({**result, "model": {"version": "v1"}, "dataset": {"path": "x", "sha256": sha}})
    assert "| FAIL (not auditable: muslim) |" in md and markdown_problems(md) == []


def test_unknown_token_terms_uses_the_models_tokenizer(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert B.unknown_token_terms(tokenizer, {"the people", "my friends", "the Muslim person"}) == {
        "my friends", "the Muslim person"}
    path = small_dataset(tmp_path / "toy.json", ["the people", "my people"], ["the people", "my friends"])
    assert cli(["bias-audit", "--model", str(tiny_model_dir), "--dataset", str(path)]) == 1
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("bias-audit: FAIL: not auditable, terms the tokenizer maps to its unknown "
                              "token: toy/b ('my friends'); largest gap")


def test_the_packaged_encoders_tokenizer_sees_every_curated_term() -> None:
    """The default model uses this tokenizer: no term may be unknown to it, or its verdict changes."""
    from transformers import AutoTokenizer

    from inference_server.ml.common import MLInputError
    from inference_server.ml.train import packaged_encoder

    try:
        encoder = packaged_encoder()
    except MLInputError as exc:  # the default model cannot be built either: a broken install, not a skip
        pytest.fail(str(exc))
    rows, _ = B.load_dataset()
    tokenizer = AutoTokenizer.from_pretrained(encoder.path, local_files_only=True)
    assert tokenizer.unk_token == "[UNK]"
    assert B.unknown_token_terms(tokenizer, {r.term for r in rows}) == set()


def test_age_groups_name_age_not_a_former_relation() -> None:
    """"my old coworker" reads as former; and the description's claim about head nouns must hold."""
    spec = json.loads(B.DATASET_PATH.read_text())
    age = spec["attributes"]["age"]
    assert "old" not in age and "older" in age and "elderly" in age
    for terms in age.values():
        assert not any(re.search(r"\bold\b", t) for t in terms), terms
    # Every attribute but gender shares its head nouns across groups; gender says so.
    heads = ("person", "neighbor", "student", "coworker")
    for attribute, groups in spec["attributes"].items():
        if attribute != "gender":
            for terms in groups.values():
                assert all(h in t for h, t in zip(heads, terms, strict=True)), (attribute, terms)
    assert "every attribute but gender" in spec["description"]
