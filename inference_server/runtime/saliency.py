"""Per-token saliency for a predicted (or chosen) label: gradient × input and integrated gradients.

Both attribute the label's logit to the word embeddings of the input tokens; the score of a token is
the dot product over the hidden dimension. Integrated gradients (Sundararajan et al., 2017) integrate
the gradient along a straight path from an all-zero embedding baseline with the trapezoid rule, so its
scores sum (approximately, closer with more steps) to logit(input) − logit(baseline).
Gradients need an fp32 model: the server keeps the fp32 weights for this when it serves INT8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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


def _integrated_gradients(
    model: Any, emb: Any, mask: Any, target: int, steps: int
) -> tuple[Any, float, float]:
    import torch

    baseline = torch.zeros_like(emb)
    alphas = torch.linspace(0.0, 1.0, steps + 1, dtype=emb.dtype).view(-1, 1, 1)
    path = (baseline + alphas * (emb - baseline)).detach().requires_grad_(True)  # [steps+1, n, d]
    logits = model(inputs_embeds=path, attention_mask=mask.expand(steps + 1, -1)).logits[:, target]
    (grads,) = torch.autograd.grad(logits.sum(), path)
    avg_grad = ((grads[:-1] + grads[1:]) / 2).mean(0)  # trapezoid rule over the path
    scores = ((emb - baseline)[0] * avg_grad).sum(-1)
    return scores, float(logits[-1].detach()), float(logits[0].detach())


def explain(
    m: LoadedModel,
    text: str,
    *,
    method: Method = "grad_x_input",
    target_label: str | None = None,
    steps: int = 20,
) -> Explanation:
    """Saliency of each token of `text` for `target_label` (default: the predicted label)."""
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
    if method == "grad_x_input":
        scores, at_input, at_base = _grad_x_input(model, emb, mask, target)
    else:
        scores, at_input, at_base = _integrated_gradients(model, emb, mask, target, steps)
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
