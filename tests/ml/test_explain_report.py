"""explain: the HTML report (escaped, self-contained) built from the server's saliency code."""

from __future__ import annotations

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
    assert X.read_texts(["zero"], txt) == ["zero", "one", "two"]
    assert X.read_texts([], jl) == ["three"]
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
        assert rc == 2 and "matplotlib" in capsys.readouterr().err and not png.exists()
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
