"""`sentiment-ml explain`: per-token saliency for given texts, as a self-contained HTML report.

The saliency comes from inference_server.runtime.saliency.explain, the same function behind the
server's POST /explain, so the report shows exactly what the endpoint would answer. Texts are user
input: every piece of them is HTML-escaped, and the page loads nothing from anywhere (inline CSS only,
no scripts). With --png, a bar chart per text is drawn too when matplotlib is installed; the project
does not depend on it.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from inference_server.contract import Env
from inference_server.ml.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    MLInputError,
    add_model_arguments,
    cli_error,
    model_version_of,
    write_json_atomic,
)

MAX_TEXTS: Final = 200
# Word-piece markers of the common tokenizer families: continuation (WordPiece) and word start
# (SentencePiece, byte-level BPE).
_CONTINUATION: Final = "##"
_WORD_START: Final = ("\u2581", "\u0120")


@dataclass(frozen=True)
class ExplainedText:
    text: str
    label: str  # the explained label
    predicted: str
    probability: float  # of the explained label
    method: str
    tokens: tuple[str, ...]
    scores: tuple[float, ...]


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


_CSS: Final = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;max-width:60rem;color:#111}
h1{font-size:1.3rem} .meta{color:#555;font-size:.9rem}
.item{border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.text{font-size:1.15rem;line-height:2;word-wrap:break-word}
.tok{padding:.1rem .15rem;border-radius:3px}
.label{font-weight:600} .top{color:#444;font-size:.85rem}
.legend span{padding:.1rem .4rem;border-radius:3px;margin-right:.5rem}
"""


def render_html(items: Sequence[ExplainedText], *, model_version: str, generated_at: str) -> str:
    """The whole report: one page, inline CSS, no scripts, every user string escaped."""
    method = html.escape(", ".join(sorted({i.method for i in items})) or "-")
    blocks = []
    for n, item in enumerate(items, 1):
        top = ", ".join(f"{html.escape(t)} {s:+.3f}" for t, s in top_tokens(item.tokens, item.scores))
        blocks.append(
            f'<div class="item"><div class="meta">#{n} &middot; explained label '
            f'<span class="label">{html.escape(item.label)}</span> (p={item.probability:.3f}); '
            f"predicted {html.escape(item.predicted)}</div>"
            f'<div class="text">{render_tokens(item.tokens, item.scores)}</div>'
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
def read_texts(texts: Sequence[str], input_file: Path | None) -> list[str]:
    out = list(texts)
    if input_file is not None:
        try:
            lines = input_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise MLInputError(f"cannot read {input_file}: {exc}") from exc
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if input_file.suffix == ".jsonl":
                try:
                    out.append(str(json.loads(line)["text"]))
                except (ValueError, KeyError, TypeError):
                    raise MLInputError(f"{input_file}:{n}: expected a JSON object with 'text'") from None
            else:
                out.append(line)
    if not out:
        raise MLInputError("no texts: give --text (repeatable) or --input FILE")
    if len(out) > MAX_TEXTS:
        raise MLInputError(f"{len(out)} texts; at most {MAX_TEXTS} per report")
    if any(not t.strip() for t in out):
        raise MLInputError("empty text given; every text needs at least one word")
    return out


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
            )
        )
    return out


def write_png(items: Sequence[ExplainedText], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MLInputError("--png needs matplotlib, which is not installed; use the HTML report") from None
    fig, axes = plt.subplots(len(items), 1, figsize=(10, 1.8 * len(items)), squeeze=False)
    for ax, item in zip(axes[:, 0], items, strict=True):
        colours = ["#16a34a" if s >= 0 else "#dc2626" for s in item.scores]
        ax.bar(range(len(item.scores)), item.scores, color=colours)
        ax.set_xticks(range(len(item.tokens)), item.tokens, rotation=45, ha="right", fontsize=8)
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
    parser.add_argument("--steps", type=int, default=20, help="integrated-gradients steps (default 20)")
    parser.add_argument(
        "--target-label", default=None, help="explain this label (default: the predicted one)"
    )
    parser.add_argument("--output", type=Path, required=True, help="the HTML report to write")
    parser.add_argument("--json", type=Path, help="also write tokens and scores as JSON")
    parser.add_argument("--png", type=Path, help="also draw a PNG (needs matplotlib installed)")


def run(args: argparse.Namespace) -> int:
    from inference_server.runtime.model import ArtifactError, ModelLoadError, load_model

    if args.model is None:
        return cli_error("explain", f"give --model or set {Env.MODEL_PATH}")
    try:
        texts = read_texts(args.text, args.input)
        model = load_model(args.model, version=model_version_of(args))
        if args.target_label is not None and args.target_label not in model.labels:
            raise MLInputError(f"--target-label {args.target_label!r} is not one of {list(model.labels)}")
        items = explain_texts(
            model, texts, method=args.method, target_label=args.target_label, steps=args.steps
        )
        if args.png:
            write_png(items, args.png)
    except (MLInputError, ModelLoadError, ArtifactError, ValueError) as exc:
        return cli_error("explain", str(exc), EXIT_BAD_INPUT)
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        render_html(items, model_version=model.version, generated_at=now), encoding="utf-8"
    )
    if args.json:
        write_json_atomic(
            args.json,
            {"model_version": model.version, "generated_at": now, "items": [asdict(i) for i in items]},
        )
    print(f"explain: {len(items)} text(s) -> {args.output}", file=sys.stderr)
    return EXIT_OK
