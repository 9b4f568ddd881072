"""Per-token saliency for a predicted (or chosen) label: gradient × input and integrated gradients.

Both attribute the label's logit to the word embeddings of the input tokens; the score of a token is
the dot product over the hidden dimension. Integrated gradients (Sundararajan et al., 2017) integrate
the gradient along a straight path from an all-zero embedding baseline with the trapezoid rule, so its
scores sum (approximately; `convergence` says how closely) to logit(input) − logit(baseline).
Gradients need an fp32 model: the server keeps the fp32 weights for this when it serves INT8 (and
explains the label its served model predicts: api/explain.py).

Only the positions the tokenizer added around the text ([CLS], [SEP], …) are left out of the answer:
an unknown word or emoji ([UNK]) and a special token the user typed ("[CLS]") are part of the input and
keep their scores. Each token comes with its character span in the text that was explained (fast
tokenizers), so a client can map the scores back onto what it sent.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal, cast

# The private encoder: the shared tokenizer wrapper toggles truncation on every call (runtime/model.py).
from inference_server.runtime.model import LoadedModel, _private_encoder

Method = Literal["grad_x_input", "integrated_gradients"]
METHODS: tuple[Method, ...] = ("grad_x_input", "integrated_gradients")
# The most integration steps a request may ask for (the server's ExplainRequest and the CLI's --steps).
MAX_STEPS = 200
CharSpan = tuple[int, int]  # (start, end) of a token in the text, in characters


@dataclass(frozen=True)
class Explanation:
    tokens: tuple[str, ...]  # the model's tokens, the ones the tokenizer added ([CLS], [SEP], …) left out
    scores: tuple[float, ...]  # one per token; positive pushes towards `label`
    label: str
    method: Method
    target_logit: float = 0.0  # the explained logit at the input
    baseline_logit: float = 0.0  # and at the all-zero baseline (integrated gradients only)
    # (start, end) of each token in the explained text; None without a fast tokenizer
    offsets: tuple[CharSpan, ...] | None = None
    added_scores: tuple[float, ...] = ()  # the scores of the left-out positions the tokenizer added


@dataclass(frozen=True)
class Convergence:
    """How well integrated gradients converged: their scores over every position should sum to the
    difference of the target logit between input and baseline (the completeness axiom)."""

    scores_sum: float  # every position's score, the tokenizer's [CLS]/[SEP] included
    logit_delta: float  # target logit at the input − at the baseline
    delta: float  # scores_sum − logit_delta: near 0 once the steps suffice (Captum's convergence delta)
    added_tokens_score: float  # the part of scores_sum on the positions left out of the answer
    added_tokens_share: float  # their share of the attribution, Σ|left out| / Σ|all| (0 when all are 0)


def convergence(e: Explanation) -> Convergence | None:
    """The completeness check of an integrated-gradients explanation; None for gradient × input, which
    has no baseline to compare with."""
    if e.method != "integrated_gradients":
        return None
    total = sum(e.scores) + sum(e.added_scores)
    magnitude = sum(abs(s) for s in (*e.scores, *e.added_scores))
    delta = e.target_logit - e.baseline_logit
    return Convergence(
        scores_sum=total,
        logit_delta=delta,
        delta=total - delta,
        added_tokens_score=sum(e.added_scores),
        added_tokens_share=sum(abs(s) for s in e.added_scores) / magnitude if magnitude > 0 else 0.0,
    )


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    added: list[bool]  # per position: put there by the tokenizer's template, not from the text
    offsets: list[CharSpan] | None  # per position, into the text (None without a fast tokenizer)


def encode_for_saliency(m: LoadedModel, text: str) -> Encoded:
    """Token ids of `text` (special tokens added, untruncated), which positions the tokenizer added, and
    each token's character span. The added positions come from the encoding's special-tokens mask,
    not from the ids: [UNK] is a special id too, and so is a "[CLS]" that the text itself contains."""
    encoder = _private_encoder(m)
    if encoder:
        enc = encoder.encode(text)
        return Encoded(
            list(enc.ids), [bool(x) for x in enc.special_tokens_mask], [(a, b) for a, b in enc.offsets]
        )
    enc = m.tokenizer(text, add_special_tokens=True, truncation=False, return_special_tokens_mask=True)
    return Encoded(list(enc["input_ids"]), [bool(x) for x in enc["special_tokens_mask"]], None)


def _grad_x_input(model: Any, emb: Any, mask: Any, target: int) -> tuple[Any, float, float]:
    import torch

    e = emb.detach().clone().requires_grad_(True)
    out = model(inputs_embeds=e, attention_mask=mask).logits[0, target]
    (grad,) = torch.autograd.grad(out, e)
    return (grad * e).sum(-1)[0], float(out.detach()), 0.0


def _ig_passes(total_steps: int, tokens: int, tokens_per_pass: int) -> list[list[int]]:
    """The path's points 0..steps, cut into passes of at most ``tokens_per_pass`` tokens (≥ 1 point)."""
    per_pass = max(1, tokens_per_pass // max(1, tokens))
    points = list(range(total_steps + 1))
    return [points[i : i + per_pass] for i in range(0, len(points), per_pass)]


def _trapezoid_weights(points: list[int], steps: int) -> list[float]:
    """Each point's weight in the trapezoid mean of the gradient: 1/steps inside, half at both ends."""
    return [(0.5 if k in (0, steps) else 1.0) / steps for k in points]


def _integrated_gradients(
    model: Any, emb: Any, mask: Any, target: int, steps: int, tokens_per_pass: int
) -> Generator[None, None, tuple[Any, float, float]]:
    """Integrated gradients, a bounded pass at a time; yields between passes (see `explain_passes`)."""
    import torch

    baseline = torch.zeros_like(emb)
    avg_grad = torch.zeros_like(emb[0])
    at_input = at_base = 0.0
    for points in _ig_passes(steps, emb.shape[1], tokens_per_pass):
        alphas = torch.tensor([k / steps for k in points], dtype=emb.dtype).view(-1, 1, 1)
        path = (baseline + alphas * (emb - baseline)).detach().requires_grad_(True)  # [len(points), n, d]
        logits = model(inputs_embeds=path, attention_mask=mask.expand(len(points), -1)).logits[:, target]
        (grads,) = torch.autograd.grad(logits.sum(), path)
        weights = torch.tensor(_trapezoid_weights(points, steps), dtype=emb.dtype).view(-1, 1, 1)
        avg_grad += (grads * weights).sum(0)
        if points[0] == 0:
            at_base = float(logits[0].detach())
        if points[-1] == steps:
            at_input = float(logits[-1].detach())
        del path, logits, grads  # free this pass's activations before the next one
        yield
    scores = ((emb - baseline)[0] * avg_grad).sum(-1)
    return scores, at_input, at_base


# A pass of integrated gradients keeps the activations of every point of the path in it for the
# backward pass (~45 MB per point of a 254-token text on MiniLM) and holds the server's forward lock
# while it runs: 1024 tokens per pass bounds both (a few hundred MB, and about 1.1 s on 2 cores for a
# 251-token text on MiniLM, measured) whatever `steps` a request asks for, and lets inference batches
# run between passes (a whole explanation of that text at 200 steps is 52 passes, ~57 s).
TOKENS_PER_PASS = 1024


def explain_passes(
    m: LoadedModel,
    text: str,
    *,
    method: Method = "grad_x_input",
    target_label: str | None = None,
    steps: int = 20,
    tokens_per_pass: int = TOKENS_PER_PASS,
) -> Generator[None, None, Explanation]:
    """`explain`, one bounded forward/backward pass per ``next()``; returns the explanation.

    The server advances it a pass at a time on its forward worker, so that other requests' batches run
    in between. No torch grad-mode context spans a ``yield``: those are per-thread, and consecutive
    passes may run on different threads. A text over the model's MAX_TOKENS is refused (ValueError),
    never truncated: cutting it would also cut the final [SEP] and explain another input.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; use one of {list(METHODS)}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if m.quantized:
        raise ValueError("saliency needs gradients: pass the fp32 model, not the INT8 one")
    model = m.model
    encoded = encode_for_saliency(m, text)
    if len(encoded.ids) > m.max_tokens:
        raise ValueError(f"the text has {len(encoded.ids)} tokens, more than MAX_TOKENS={m.max_tokens}")
    input_ids = torch.tensor([encoded.ids], dtype=torch.long)
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        emb = model.get_input_embeddings()(input_ids)
        if target_label is None:
            target = int(model(inputs_embeds=emb, attention_mask=mask).logits[0].argmax())
        else:
            target = m.label_index(target_label)
    yield
    if method == "grad_x_input":
        scores, at_input, at_base = _grad_x_input(model, emb, mask, target)
    else:
        scores, at_input, at_base = yield from _integrated_gradients(
            model, emb, mask, target, steps, tokens_per_pass
        )
    return _explanation(m, encoded, scores.detach().float().tolist(), target, method, at_input, at_base)


def _explanation(
    m: LoadedModel,
    encoded: Encoded,
    values: list[float],
    target: int,
    method: Method,
    at_input: float,
    at_base: float,
) -> Explanation:
    """The answer: every position of the text with its score and span; the added ones set apart."""
    tokens = m.tokenizer.convert_ids_to_tokens(encoded.ids)
    keep = [i for i, added in enumerate(encoded.added) if not added]
    spans = encoded.offsets
    return Explanation(
        tokens=tuple(str(tokens[i]) for i in keep),
        scores=tuple(float(values[i]) for i in keep),
        label=m.labels[target],
        method=method,
        target_logit=at_input,
        baseline_logit=at_base,
        offsets=None if spans is None else tuple(spans[i] for i in keep),
        added_scores=tuple(float(v) for v, added in zip(values, encoded.added, strict=True) if added),
    )


def advance(passes: Generator[None, None, Explanation]) -> Explanation | None:
    """Run the next pass; the explanation once the last one is done, else None."""
    try:
        next(passes)
    except StopIteration as done:
        return cast(Explanation, done.value)
    return None


def explain(
    m: LoadedModel,
    text: str,
    *,
    method: Method = "grad_x_input",
    target_label: str | None = None,
    steps: int = 20,
    tokens_per_pass: int = TOKENS_PER_PASS,
) -> Explanation:
    """Saliency of each token of `text` for `target_label` (default: the predicted label)."""
    passes = explain_passes(
        m, text, method=method, target_label=target_label, steps=steps, tokens_per_pass=tokens_per_pass
    )
    while (result := advance(passes)) is None:
        pass
    return result
