"""explain: the HTML report (escaped, self-contained) built from the server's saliency code."""

from __future__ import annotations

import html
import importlib.util
import json
import re
from pathlib import Path

import pytest

from inference_server.ml import explain as X
from inference_server.ml.cli import main as cli

HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'


def item(tokens: tuple[str, ...], scores: tuple[float, ...], text: str = "t") -> X.ExplainedText:
    return X.ExplainedText(
        text=text,
        label="positive",
        predicted="positive",
        probability=0.9,
        method="grad_x_input",
        tokens=tokens,
        scores=scores,
    )


def test_word_pieces_are_glued_to_their_word() -> None:
    assert X.display_pieces(["un", "##believ", "##able", "film"]) == [
        ("", "un"),
        ("", "believ"),
        ("", "able"),
        (" ", "film"),
    ]
    assert X.display_pieces(["\u2581great", "\u2581fil", "m"]) == [("", "great"), (" ", "fil"), (" ", "m")]


def test_colour_strength_follows_the_score_and_sign() -> None:
    html = X.render_tokens(["good", "bad", "the"], [2.0, -1.0, 0.0])
    alphas = [float(a) for a in re.findall(r"rgba\([\d,]+,([\d.]+)\)", html)]
    assert alphas == [pytest.approx(0.85), pytest.approx(0.425), 0.0]
    colours = re.findall(r"rgba\(([\d,]+),[\d.]+\)", html)
    assert colours == ["22,163,74", "220,38,38", "22,163,74"]  # green towards the label, red away


def test_report_escapes_everything_and_loads_nothing() -> None:
    tokens = ("<script>", 'alert("x")', "</script>", "&", "<img")
    page = X.render_html([item(tokens, (0.1, -0.2, 0.3, 0.0, 0.5))], model_version='v"1<', generated_at="now")
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page and "&lt;img" in page and "alert(&quot;x&quot;)" in page
    assert "v&quot;1&lt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing fetched
    assert "Content-Security-Policy" in page


def test_read_texts_sources_and_limits(tmp_path: Path) -> None:
    txt = tmp_path / "t.txt"
    txt.write_text("one\n\ntwo\n")
    jl = tmp_path / "t.jsonl"
    jl.write_text(json.dumps({"text": "three"}) + "\n")
    assert X.read_texts(["zero"], txt) == [
        X.InputText("--text 1", "zero"),
        X.InputText(f"{txt}:1", "one"),
        X.InputText(f"{txt}:3", "two"),
    ]
    assert [t.text for t in X.read_texts([], jl)] == ["three"]
    with pytest.raises(X.MLInputError, match="no texts"):
        X.read_texts([], None)
    with pytest.raises(X.MLInputError, match="at most"):
        X.read_texts(["x"] * (X.MAX_TEXTS + 1), None)
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(X.MLInputError, match=r"bad\.jsonl:1"):
        X.read_texts([], tmp_path / "bad.jsonl")


def test_command_uses_the_server_saliency_and_writes_html_and_json(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from inference_server.runtime.model import load_model
    from inference_server.runtime.saliency import explain

    out, js = tmp_path / "r.html", tmp_path / "r.json"
    texts = ["a great movie , i love it", f"awful film {HOSTILE}"]
    rc = cli(
        [
            "explain",
            "--model",
            str(tiny_model_dir),
            "--model-version",
            "tiny",
            "--output",
            str(out),
            "--json",
            str(js),
            *[a for t in texts for a in ("--text", t)],
        ]
    )
    assert rc == 0
    page = out.read_text()
    assert "<script" not in page and "<img" not in page and page.count('class="item"') == 2
    items = json.loads(js.read_text())["items"]
    assert [i["label"] for i in items] == ["positive", "negative"]
    # Exactly what the server's /explain computes for the same text.
    m = load_model(tiny_model_dir)
    direct = explain(m, texts[0])
    assert tuple(items[0]["tokens"]) == direct.tokens
    assert items[0]["scores"] == pytest.approx(list(direct.scores), rel=1e-5, abs=1e-7)


def test_command_integrated_gradients_and_target_label(tmp_path: Path, tiny_model_dir: Path) -> None:
    js = tmp_path / "r.json"
    rc = cli(
        [
            "explain",
            "--model",
            str(tiny_model_dir),
            "--method",
            "integrated_gradients",
            "--steps",
            "8",
            "--target-label",
            "negative",
            "--text",
            "great film",
            "--output",
            str(tmp_path / "r.html"),
            "--json",
            str(js),
        ]
    )
    assert rc == 0
    (only,) = json.loads(js.read_text())["items"]
    assert only["method"] == "integrated_gradients" and only["label"] == "negative"
    assert only["predicted"] == "positive" and only["probability"] < 0.5


def test_command_errors_exit_2(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--output", str(tmp_path / "r.html")]
    assert cli(["explain", "--model", str(tiny_model_dir), *out]) == 2
    assert "no texts" in capsys.readouterr().err
    assert cli(["explain", "--model", str(tiny_model_dir), "--text", "x", "--target-label", "meh", *out]) == 2
    assert "meh" in capsys.readouterr().err
    assert cli(["explain", "--model", str(tmp_path / "nope"), "--text", "x", *out]) == 2
    png = tmp_path / "r.png"
    rc = cli(["explain", "--model", str(tiny_model_dir), "--text", "great", "--png", str(png), *out])
    if importlib.util.find_spec("matplotlib") is None:
        assert rc == 2 and "install" in capsys.readouterr().err and not png.exists()
    else:
        assert rc == 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_model_version_defaults_to_the_environment_then_the_directory_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from inference_server.ml.common import add_model_arguments, model_version_of

    def parse(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_model_arguments(parser)
        return parser.parse_args(list(argv))

    model_dir = tmp_path / "minilm-rt-abc"
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    assert model_version_of(parse("--model", str(model_dir))) == "minilm-rt-abc"
    assert model_version_of(parse("--model", str(model_dir), "--model-version", "v7")) == "v7"
    assert model_version_of(parse()) == "unknown"
    monkeypatch.setenv("MODEL_VERSION", "from-env")
    assert model_version_of(parse("--model", str(model_dir))) == "from-env"


# --- the report shows the text as given, the tokens' spans highlighted --------------------------------
def test_spans_highlight_the_text_as_given_and_stay_escaped() -> None:
    text = "I didn't <b>love</b> it 😍"
    words = ["I", "didn", "'", "t", "<", "b", ">", "love", "😍"]
    offsets = []
    for w in words:  # the spans a tokenizer would give, in order
        start = text.index(w, offsets[-1][1] if offsets else 0)
        offsets.append((start, start + len(w)))
    page = X.render_text(text, offsets, (0.0, 0.1, 0.1, 0.2, 0.0, 0.0, 0.0, 0.9, -0.3))
    assert "<b>" not in page and "</b>" not in page and "&lt;" in page
    assert re.sub(r"<[^>]+>", "", page) == html.escape(text)  # every character shown, in order, once
    assert 'title="love: +0.9000">love</span>' in page
    # Tokens that share characters (the byte-level pieces of one emoji) are one highlight, scores summed.
    assert X.merge_spans([(0, 1), (0, 1), (2, 3), (3, 3)], [0.5, 0.25, 1.0, 9.0]) == [
        X.Highlight(0, 1, 0.75),
        X.Highlight(2, 3, 1.0),
    ]


def test_report_shows_the_original_text_not_word_pieces(tmp_path: Path, tiny_model_dir: Path) -> None:
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    text = "I didn't love it 😍 at the Café, it's so dull!"
    assert (
        cli(
            [
                "explain",
                "--model",
                str(tiny_model_dir),
                "--text",
                text,
                "--output",
                str(out),
                "--json",
                str(js),
            ]
        )
        == 0
    )
    page = out.read_text()
    shown = re.search(r'<div class="text">(.*?)</div>', page)
    assert shown is not None and html.unescape(re.sub(r"<[^>]+>", "", shown.group(1))) == text
    assert "[UNK]" not in page and "Café" in page and "😍" in page  # the user's words, not the model's
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    (item,) = json.loads(js.read_text())["items"]
    assert [text[a:b] for a, b in item["offsets"]][:3] == ["I", "didn", "'"]


# --- the server's input policy --------------------------------------------------------------------------
def error_line(err: str) -> str:
    """The command's one error line (transformers may print a loading bar to stderr before it)."""
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("sentiment-ml explain: error:")]
    return line


def explain_json(tmp_path: Path, model: Path, *argv: str) -> tuple[int, list[dict[str, object]]]:
    js = tmp_path / "r.json"
    rc = cli(
        ["explain", "--model", str(model), "--output", str(tmp_path / "r.html"), "--json", str(js), *argv]
    )
    return rc, (json.loads(js.read_text())["items"] if rc == 0 else [])


def test_texts_are_normalised_like_the_server_does(tmp_path: Path, tiny_model_dir: Path) -> None:
    rc, items = explain_json(
        tmp_path, tiny_model_dir, "--text", "awful\x07film was great", "--text", "cafe\u0301"
    )
    assert rc == 0
    assert [i["text"] for i in items] == ["awful film was great", "café"]
    assert items[0]["tokens"] == ["awful", "film", "was", "great"]  # what the server's /explain answers


def test_text_over_max_tokens_is_refused_naming_it_and_the_limit(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    long_text = " ".join(["the film was good"] * 40) + " the ending was awful awful awful"
    rc, _ = explain_json(tmp_path, tiny_model_dir, "--text", "great", "--text", long_text)
    err = error_line(capsys.readouterr().err)
    assert rc == 2 and "--text 2" in err and "MAX_TOKENS=128" in err  # the tiny model's limit
    monkeypatch.setenv("MAX_TOKENS", "8")  # the server's variable, read the same way
    rc, _ = explain_json(
        tmp_path, tiny_model_dir, "--text", "great", "--text", "i really love this excellent film , truly"
    )
    assert rc == 2 and "--text 2" in (err := capsys.readouterr().err) and "MAX_TOKENS=8" in err
    monkeypatch.setenv("MAX_TOKENS", "4")
    assert explain_json(tmp_path, tiny_model_dir, "--text", "great")[0] == 2
    assert "MAX_TOKENS" in capsys.readouterr().err


def test_steps_are_bounded_like_the_server(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for steps in ("0", "201"):
        rc, _ = explain_json(
            tmp_path, tiny_model_dir, "--text", "great", "--method", "integrated_gradients", "--steps", steps
        )
        assert rc == 2 and "200" in capsys.readouterr().err
    assert (
        explain_json(
            tmp_path, tiny_model_dir, "--text", "great", "--method", "integrated_gradients", "--steps", "200"
        )[0]
        == 0
    )


@pytest.mark.parametrize(
    ("argv_text", "named"),
    [("\udcff great", "--text 1"), ("\ud800", "--text 1"), ("\x07\x1b", "--text 1"), ("", "--text 1")],
)
def test_bad_texts_are_one_line_input_errors(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], argv_text: str, named: str
) -> None:
    """A byte that is not UTF-8 in an argument (a lone surrogate to Python), a lone surrogate, a text
    that normalises to nothing: exit 2 and one line naming the text, no traceback."""
    rc, _ = explain_json(tmp_path, tiny_model_dir, "--text", argv_text)
    assert rc == 2 and named in error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.txt", b"great\n\xff great\n", r"bad\.txt:2: is not valid UTF-8"),
        ("s.jsonl", b'{"text": "great"}\n{"text": "\\ud800 great"}\n', r"s\.jsonl:2: is not valid Unicode"),
        ("null.jsonl", b'{"text": null}\n', r"null\.jsonl:1: expected a JSON object with a 'text' string"),
        ("five.jsonl", b'{"text": "ok"}\n\n{"text": 5}\n', r"five\.jsonl:3: expected"),
        ("list.jsonl", b'["text"]\n', r"list\.jsonl:1: expected"),
        ("ctrl.txt", b"great\n\x07\n", r"ctrl\.txt:2: is empty"),
    ],
)
def test_bad_input_files_name_the_file_and_line(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(X.MLInputError, match=message):
        X.read_texts([], path)


def test_txt_lines_end_at_newlines_only(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("great\u2028film awful\r\nthe plot\x0cwas dull\n", encoding="utf-8")
    assert [t.text for t in X.read_texts([], path)] == ["great\u2028film awful", "the plot was dull"]


# --- PNG ----------------------------------------------------------------------------------------------------
def test_png_without_matplotlib_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(X, "matplotlib_missing", lambda: True)
    out = tmp_path / "r.html"
    # No model is loaded and no text read: the model directory does not even exist.
    rc = cli(
        [
            "explain",
            "--model",
            str(tmp_path / "nope"),
            "--text",
            "great",
            "--png",
            str(tmp_path / "r.png"),
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "install" in err and "matplotlib" in err and "nope" not in err and not out.exists()


def test_a_failed_png_keeps_the_html_report(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(items: object, path: Path) -> None:
        raise X.MLInputError("cannot draw")

    monkeypatch.setattr(X, "matplotlib_missing", lambda: False)
    monkeypatch.setattr(X, "write_png", fail)
    out = tmp_path / "r.html"
    rc = cli(
        [
            "explain",
            "--model",
            str(tiny_model_dir),
            "--text",
            "great",
            "--png",
            str(tmp_path / "r.png"),
            "--output",
            str(out),
        ]
    )
    assert rc == 2 and "cannot draw" in capsys.readouterr().err
    assert out.read_text().count('class="item"') == 1
