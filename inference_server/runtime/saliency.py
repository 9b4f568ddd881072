"""Per-token saliency for a predicted (or chosen) label: gradient × input and integrated gradients.

Both attribute the label's logit to the word embeddings of the input tokens; the score of a token is
the dot product over the hidden dimension. Integrated gradients (Sundararajan et al., 2017) integrate
the gradient along a straight path from an all-zero embedding baseline with the trapezoid rule, so its
scores sum (approximately, closer with more steps) to logit(input) − logit(baseline).
Gradients need an fp32 model: the server keeps the fp32 weights for this when it serves INT8.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal, cast

from inference_server.runtime.model import LoadedModel, encode_ids

Method = Literal["grad_x_input", "integrated_gradients"]
METHODS: tuple[Method, ...] = ("grad_x_input", "integrated_gradients")


@dataclass(frozen=True)
class Explanation:
    tokens: tuple[str, ...]  # the model's tokens, special tokens ([CLS], [SEP], …) left out
    scores: tuple[float, ...]  # one per token; positive pushes towards `label`
    label: str
    method: Method
    target_logit: float = 0.0  # the explained logit at the input
    baseline_logit: float = 0.0  # and at the all-zero baseline (integrated gradients only)


def _target_index(m: LoadedModel, logits: Any, target_label: str | None) -> int:
    if target_label is None:
        return int(logits.argmax())
    return m.label_index(target_label)


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
# while it runs: 1024 tokens per pass bounds both (a few hundred MB, well under a second on 2 cores)
# whatever `steps` a request asks for, and lets inference batches run between passes.
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
    passes may run on different threads.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; use one of {list(METHODS)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if m.quantized:
        raise ValueError("saliency needs gradients: pass the fp32 model, not the INT8 one")
    model = m.model
    ids = encode_ids(m, [text])[0][: m.max_tokens]
    input_ids = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        emb = model.get_input_embeddings()(input_ids)
        logits = model(inputs_embeds=emb, attention_mask=mask).logits[0]
    target = _target_index(m, logits, target_label)
    yield
    if method == "grad_x_input":
        scores, at_input, at_base = _grad_x_input(model, emb, mask, target)
    else:
        scores, at_input, at_base = yield from _integrated_gradients(
            model, emb, mask, target, steps, tokens_per_pass
        )
    special = set(getattr(m.tokenizer, "all_special_ids", []) or [])
    tokens = m.tokenizer.convert_ids_to_tokens(ids)
    keep = [i for i, tok_id in enumerate(ids) if tok_id not in special]
    values = scores.detach().float().tolist()
    return Explanation(
        tokens=tuple(str(tokens[i]) for i in keep),
        scores=tuple(float(values[i]) for i in keep),
        label=m.labels[target],
        method=method,
        target_logit=at_input,
        baseline_logit=at_base,
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
