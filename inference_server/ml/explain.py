"""`sentiment-ml explain`: per-token saliency for given texts, as a self-contained HTML report.

The saliency comes from inference_server.runtime.saliency.explain, the same function behind the
server's POST /explain, and every text goes through the server's input policy first: normalised like
the server normalises it (serving/validation.py), and refused, never truncated, when it has more tokens
than MAX_TOKENS (read like the server reads it). So for an fp32 server the report shows what the
endpoint would answer. Each text is shown as it was given (after that normalisation), its tokens'
character spans highlighted. Texts are user input: every piece of them is HTML-escaped, and the page
loads nothing from anywhere (inline CSS only, no scripts). With --png, a bar chart per text is drawn
too when matplotlib is installed; the project does not depend on it.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final

from inference_server.contract import Env
from inference_server.ml.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    MLInputError,
    add_model_arguments,
    cli_error,
    load_model_of,
    write_json_atomic,
)
from inference_server.runtime.saliency import MAX_STEPS
from inference_server.serving.validation import InputProblem, check_token_count, normalise_text

MAX_TEXTS: Final = 200
# Word-piece markers of the common tokenizer families: continuation (WordPiece) and word start
# (SentencePiece, byte-level BPE).
_CONTINUATION: Final = "##"
_WORD_START: Final = ("\u2581", "\u0120")
PNG_MISSING: Final = (
    "--png needs matplotlib, which is not installed: install it (pip install matplotlib) or leave out "
    "--png (the HTML report needs nothing)"
)


@dataclass(frozen=True)
class InputText:
    where: str  # how an error names it: "--text 2" or "reviews.txt:14"
    text: str  # normalised as the server normalises it


@dataclass(frozen=True)
class ExplainedText:
    text: str  # as explained: normalised like the server does
    label: str  # the explained label
    predicted: str
    probability: float  # of the explained label
    method: str
    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    offsets: tuple[tuple[int, int], ...] | None = None  # each token's span in `text`


@dataclass(frozen=True)
class Highlight:
    start: int
    end: int
    score: float


# --- rendering (pure) -------------------------------------------------------------------------------
def display_pieces(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """(separator, text) per token: word pieces are glued to the word they continue."""
    out: list[tuple[str, str]] = []
    for i, tok in enumerate(tokens):
        if tok.startswith(_CONTINUATION) and len(tok) > len(_CONTINUATION):
            out.append(("", tok[len(_CONTINUATION) :]))
        elif tok[:1] in _WORD_START:
            out.append((" " if i else "", tok[1:]))
        else:
            out.append((" " if i else "", tok))
    return out


def _colour(score: float, scale: float) -> str:
    # Green pushes towards the explained label, red away from it; alpha is the relative strength.
    alpha = 0.0 if scale <= 0 else min(abs(score) / scale, 1.0)
    rgb = "22,163,74" if score >= 0 else "220,38,38"
    return f"rgba({rgb},{alpha * 0.85:.3f})"


def render_tokens(tokens: Sequence[str], scores: Sequence[float]) -> str:
    scale = max((abs(s) for s in scores), default=0.0)
    parts = []
    for (sep, piece), score in zip(display_pieces(tokens), scores, strict=True):
        parts.append(
            f'{sep}<span class="tok" style="background:{_colour(score, scale)}" '
            f'title="{html.escape(piece)}: {score:+.4f}">{html.escape(piece)}</span>'
        )
    return "".join(parts)


def top_tokens(tokens: Sequence[str], scores: Sequence[float], k: int = 3) -> list[tuple[str, float]]:
    pairs = sorted(zip(tokens, scores, strict=True), key=lambda p: -abs(p[1]))
    return [(t, float(s)) for t, s in pairs[:k]]


def merge_spans(offsets: Sequence[tuple[int, int]], scores: Sequence[float]) -> list[Highlight]:
    """The tokens' character spans in text order, those that share characters (the pieces of one
    character a byte-level tokenizer splits) merged with their scores summed; an empty span (a token
    with no characters of its own) has nothing to highlight and is left out."""
    out: list[Highlight] = []
    for (start, end), score in sorted(zip(offsets, scores, strict=True), key=lambda p: p[0]):
        if end <= start:
            continue
        if out and start < out[-1].end:
            last = out[-1]
            out[-1] = Highlight(last.start, max(last.end, end), last.score + score)
        else:
            out.append(Highlight(start, end, float(score)))
    return out


def render_text(text: str, offsets: Sequence[tuple[int, int]], scores: Sequence[float]) -> str:
    """`text` as given, each token's span highlighted; what lies between (spaces, characters the
    tokenizer drops) is shown unmarked."""
    spans = merge_spans(offsets, scores)
    scale = max((abs(h.score) for h in spans), default=0.0)
    parts, at = [], 0
    for h in spans:
        piece = html.escape(text[h.start : h.end])
        parts.append(html.escape(text[at : h.start]))
        parts.append(
            f'<span class="tok" style="background:{_colour(h.score, scale)}" '
            f'title="{piece}: {h.score:+.4f}">{piece}</span>'
        )
        at = h.end
    parts.append(html.escape(text[at:]))
    return "".join(parts)


def shown_units(item: ExplainedText) -> tuple[list[str], list[float]]:
    """What the report names and scores: spans of the text when the tokenizer gives offsets, else the
    model's tokens (word pieces)."""
    if item.offsets is None:
        return list(item.tokens), list(item.scores)
    spans = merge_spans(item.offsets, item.scores)
    return [item.text[h.start : h.end] for h in spans], [h.score for h in spans]


def _render_item_text(item: ExplainedText) -> str:
    if item.offsets is None:
        return render_tokens(item.tokens, item.scores)
    return render_text(item.text, item.offsets, item.scores)


_CSS: Final = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;max-width:60rem;color:#111}
h1{font-size:1.3rem} .meta{color:#555;font-size:.9rem}
.item{border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.text{font-size:1.15rem;line-height:2;word-wrap:break-word;white-space:pre-wrap}
.tok{padding:.1rem .15rem;border-radius:3px}
.label{font-weight:600} .top{color:#444;font-size:.85rem}
.legend span{padding:.1rem .4rem;border-radius:3px;margin-right:.5rem}
"""


def render_html(items: Sequence[ExplainedText], *, model_version: str, generated_at: str) -> str:
    """The whole report: one page, inline CSS, no scripts, every user string escaped."""
    method = html.escape(", ".join(sorted({i.method for i in items})) or "-")
    blocks = []
    for n, item in enumerate(items, 1):
        top = ", ".join(f"{html.escape(t)} {s:+.3f}" for t, s in top_tokens(*shown_units(item)))
        blocks.append(
            f'<div class="item"><div class="meta">#{n} &middot; explained label '
            f'<span class="label">{html.escape(item.label)}</span> (p={item.probability:.3f}); '
            f"predicted {html.escape(item.predicted)}</div>"
            f'<div class="text">{_render_item_text(item)}</div>'
            f'<div class="top">strongest tokens: {top}</div></div>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>Saliency report: {html.escape(model_version)}</title><style>{_CSS}</style></head><body>"
        f'<h1>Saliency report</h1><p class="meta">model {html.escape(model_version)} &middot; method '
        f"{method} &middot; {len(items)} text(s) &middot; generated {html.escape(generated_at)}</p>"
        '<p class="legend"><span style="background:rgba(22,163,74,.6)">towards the label</span>'
        '<span style="background:rgba(220,38,38,.6)">away from it</span> hover a token for its score</p>'
        + "".join(blocks)
        + "</body></html>\n"
    )


# --- the shell ----------------------------------------------------------------------------------------
def read_texts(texts: Sequence[str], input_file: Path | None) -> list[InputText]:
    """The texts to explain, each normalised like the server does and named for error messages; an
    input error (MLInputError) names the text: its --text number or its file and line."""
    given = [(f"--text {n}", text) for n, text in enumerate(texts, 1)]
    if input_file is not None:
        given += _read_file(input_file)
    if not given:
        raise MLInputError("no texts: give --text (repeatable) or --input FILE")
    if len(given) > MAX_TEXTS:
        raise MLInputError(f"{len(given)} texts; at most {MAX_TEXTS} per report")
    return [InputText(where, _normalised(where, text)) for where, text in given]


def _read_file(path: Path) -> list[tuple[str, str]]:
    """(FILE:line, text) per non-blank line: a .txt line is a text, a .jsonl line an object with a
    "text" string. Lines end at "\\n" only (a trailing "\\r" dropped): str.splitlines would also cut a
    text at U+2028, a form feed or a vertical tab, which are part of it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MLInputError(f"cannot read {path}: {exc}") from exc
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{n}"
        line = _decoded(where, raw.removesuffix(b"\r"))
        if line.strip():
            out.append((where, _jsonl_text(where, line) if path.suffix == ".jsonl" else line))
    return out


def _decoded(where: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MLInputError(f"{where}: is not valid UTF-8 (byte {exc.start + 1} of the line)") from None


def _jsonl_text(where: str, line: str) -> str:
    try:
        value = json.loads(line)
    except ValueError:
        value = None
    text = value.get("text") if isinstance(value, dict) else None
    if not isinstance(text, str):  # null or 5 would otherwise be explained as "None" or "5"
        raise MLInputError(f"{where}: expected a JSON object with a 'text' string")
    return text


def _normalised(where: str, text: str) -> str:
    """The server's normalisation (NFC, control characters as spaces), its refusals as input errors.
    An argument that was not UTF-8 reaches Python as lone surrogates (surrogateescape), as does a JSON
    "\\ud800": neither can be encoded for the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MLInputError(
            f"{where}: is not valid Unicode (character {exc.start + 1} is a lone surrogate, or a byte "
            "that is not UTF-8)"
        ) from None
    try:
        return normalise_text(text)
    except InputProblem as problem:
        raise MLInputError(f"{where}: {problem.message}") from None


def max_tokens_setting(environ: Mapping[str, str]) -> int:
    """MAX_TOKENS as the server reads it: ServerSettings.max_tokens's default and bounds, the name
    matched in any case (as the server's settings match it). Loading the model then lowers it to what
    the model can take, as the server does."""
    from pydantic import TypeAdapter, ValidationError

    from inference_server.settings import ServerSettings

    field = ServerSettings.model_fields["max_tokens"]
    raw = next((v for k, v in environ.items() if k.upper() == Env.MAX_TOKENS), None)
    if raw is None:
        return int(field.default)
    try:
        return TypeAdapter(Annotated[int, *field.metadata]).validate_python(raw)
    except ValidationError as err:
        raise MLInputError(f"{Env.MAX_TOKENS}: {err.errors()[0]['msg']} (got {raw!r})") from None


def check_lengths(model: Any, items: Sequence[InputText]) -> None:
    """Refuse, as the server does (413), a text over the model's limit: truncating it would explain
    another text, without its final [SEP]."""
    from inference_server.runtime.model import encode_ids

    for item, ids in zip(items, encode_ids(model, [i.text for i in items]), strict=True):
        try:
            check_token_count(len(ids), model.max_tokens)
        except InputProblem as problem:
            raise MLInputError(f"{item.where}: {problem.message}") from None


def explain_texts(
    model: Any, texts: Sequence[str], *, method: str, target_label: str | None, steps: int
) -> list[ExplainedText]:
    from tqdm import tqdm

    from inference_server.runtime.calibration import probabilities
    from inference_server.runtime.model import predict_logits
    from inference_server.runtime.saliency import explain

    probs = probabilities(predict_logits(model, list(texts)), None)
    out = []
    for text, p in tqdm(zip(texts, probs, strict=True), total=len(texts), desc="saliency", file=sys.stderr):
        e = explain(model, text, method=method, target_label=target_label, steps=steps)  # type: ignore[arg-type]
        out.append(
            ExplainedText(
                text=text,
                label=e.label,
                predicted=model.labels[int(p.argmax())],
                probability=float(p[model.label_index(e.label)]),
                method=e.method,
                tokens=e.tokens,
                scores=e.scores,
                offsets=e.offsets,
            )
        )
    return out


def matplotlib_missing() -> bool:
    return importlib.util.find_spec("matplotlib") is None


def write_png(items: Sequence[ExplainedText], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MLInputError(PNG_MISSING) from None
    fig, axes = plt.subplots(len(items), 1, figsize=(10, 1.8 * len(items)), squeeze=False)
    for ax, item in zip(axes[:, 0], items, strict=True):
        names, scores = shown_units(item)
        colours = ["#16a34a" if s >= 0 else "#dc2626" for s in scores]
        ax.bar(range(len(scores)), scores, color=colours)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{item.label} (p={item.probability:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, calibration=False)
    parser.add_argument("--text", action="append", default=[], help="a text to explain (repeatable)")
    parser.add_argument(
        "--input", type=Path, help="texts, one per line (.txt) or a 'text' field per line (.jsonl)"
    )
    parser.add_argument("--method", choices=("grad_x_input", "integrated_gradients"), default="grad_x_input")
    parser.add_argument(
        "--steps", type=int, default=20, help=f"integrated-gradients steps (default 20, at most {MAX_STEPS})"
    )
    parser.add_argument(
        "--target-label", default=None, help="explain this label (default: the predicted one)"
    )
    parser.add_argument("--output", type=Path, required=True, help="the HTML report to write")
    parser.add_argument("--json", type=Path, help="also write tokens and scores as JSON")
    parser.add_argument("--png", type=Path, help="also draw a PNG (needs matplotlib installed)")


def run(args: argparse.Namespace) -> int:
    from inference_server.runtime.model import ArtifactError, ModelLoadError

    if args.model is None:
        return cli_error("explain", f"give --model or set {Env.MODEL_PATH}")
    # Refusals that need no model come before any work.
    if not 1 <= args.steps <= MAX_STEPS:
        return cli_error("explain", f"--steps {args.steps}: give 1 to {MAX_STEPS} (the server's limit)")
    if args.png and matplotlib_missing():
        return cli_error("explain", PNG_MISSING)
    try:
        inputs = read_texts(args.text, args.input)
        model = load_model_of(args, max_tokens=max_tokens_setting(os.environ))
        if args.target_label is not None and args.target_label not in model.labels:
            raise MLInputError(f"--target-label {args.target_label!r} is not one of {list(model.labels)}")
        check_lengths(model, inputs)
        items = explain_texts(
            model,
            [i.text for i in inputs],
            method=args.method,
            target_label=args.target_label,
            steps=args.steps,
        )
    except (MLInputError, ModelLoadError, ArtifactError, ValueError) as exc:
        return cli_error("explain", str(exc), EXIT_BAD_INPUT)
    write_reports(items, args, model.version)
    if args.png:  # after the HTML: a chart that fails costs no report
        try:
            write_png(items, args.png)
        except MLInputError as exc:
            return cli_error("explain", f"{exc} (the HTML report {args.output} was written)", EXIT_BAD_INPUT)
    print(f"explain: {len(items)} text(s) -> {args.output}", file=sys.stderr)
    return EXIT_OK


def write_reports(items: Sequence[ExplainedText], args: argparse.Namespace, model_version: str) -> None:
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        render_html(items, model_version=model_version, generated_at=now), encoding="utf-8"
    )
    if args.json:
        write_json_atomic(
            args.json,
            {"model_version": model_version, "generated_at": now, "items": [asdict(i) for i in items]},
        )
