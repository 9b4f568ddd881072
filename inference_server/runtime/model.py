"""Loading a Hugging Face sequence-classification directory and running it.

This is the one place that knows how a model directory becomes logits; the server's hot path, the
evaluation, calibration, drift and reprocess jobs all call it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from inference_server.runtime.artifact import ArtifactError, verify_artifact
from inference_server.runtime.onnx_int8 import OrtClassifier

if TYPE_CHECKING:
    from inference_server.runtime.quantization import Int8Backend

log = logging.getLogger(__name__)

__all__ = [
    "ArtifactError",
    "LoadedModel",
    "ModelLoadError",
    "count_tokens",
    "encode_ids",
    "forward_ids",
    "labels_from_config",
    "load_model",
    "pad_batch",
    "padding_id",
    "position_offset",
    "predict_logits",
    "thread_setter",
    "token_limit",
    "untrained_weights",
]


class ModelLoadError(Exception):
    """MODEL_PATH does not hold a usable sequence-classification model."""


@dataclass
class LoadedModel:
    # transformers.PreTrainedModel, its torch dynamic-INT8 copy, or an OrtClassifier (ONNX Runtime INT8)
    model: Any
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    labels: tuple[str, ...]
    version: str
    quantized: bool
    max_tokens: int
    path: Path
    sha256: str | None = None
    pad_id: int = 0  # what the server pads a batch with (``padding_id``); read once, at load

    def label_index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise KeyError(f"unknown label {label!r}; this model has {list(self.labels)}") from None


def token_limit(requested: int, tokenizer: Any, config: Any, *, position_offset: int = 0) -> int:
    """MAX_TOKENS, lowered to what the model can take: the tokenizer's ``model_max_length`` (which
    transformers sets to ~1e30 when unknown) and the position embeddings, less the ``position_offset``
    rows no token uses (``position_offset``: RoBERTa-style models number positions from
    ``padding_idx + 1``, so two of their 514 positions are never a token's)."""
    limit = requested
    from_tokenizer = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < from_tokenizer < 1_000_000:
        limit = min(limit, from_tokenizer)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limit = min(limit, positions - position_offset)
    return limit


def position_offset(model: Any) -> int:
    """Rows at the start of the position table that no token uses: ``padding_idx + 1`` when the
    model's position embedding has a padding row (RoBERTa, XLM-R, CamemBERT, MPNet, Longformer, ...
    count positions from there), else 0. Read from the loaded model, not guessed from its model_type:
    MPNet's padding row is 1 whatever its config's pad_token_id says."""
    import torch

    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "position_embeddings" and isinstance(module, torch.nn.Embedding):
            return 0 if module.padding_idx is None else int(module.padding_idx) + 1
    return 0


def labels_from_config(config: Any) -> tuple[str, ...]:
    """Labels in logit order, from the config's id2label (any number of classes).

    id2label must name each index 0..n-1 once, with distinct non-empty names: a gap would serve a
    made-up "LABEL_1" instead of the label trained, and two equal names would merge their scores.
    """
    id2label = dict(getattr(config, "id2label", None) or {})
    n = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    if n < 2:
        raise ModelLoadError(
            f"a classifier needs at least 2 labels, MODEL_PATH's config.json has {n}: point MODEL_PATH at a "
            "sequence-classification model"
        )
    if not id2label:
        return tuple(f"LABEL_{i}" for i in range(n))
    by_index: dict[int, str] = {}
    for key, name in id2label.items():
        try:
            by_index[int(key)] = str(name)
        except (TypeError, ValueError):
            break
    labels = tuple(by_index.get(i, "") for i in range(n))
    if (
        len(id2label) != n
        or set(by_index) != set(range(n))
        or any(not label.strip() for label in labels)
        or len(set(labels)) != n
    ):
        raise ModelLoadError(
            f"MODEL_PATH's config.json id2label must give each of the {n} outputs (keys 0..{n - 1}) its own "
            f"non-empty label, got {id2label}: fix id2label and label2id there"
        )
    return labels


def untrained_weights(info: Mapping[str, Any]) -> str | None:
    """What transformers' loading info says was *not* loaded from the checkpoint (and so was initialised
    at random), and what to do about it; None when every weight of the model came from the directory."""
    mismatched = sorted(info.get("mismatched_keys") or (), key=str)
    if mismatched:
        shown = "; ".join(
            f"{key[0]}: saved {list(key[1])}, config.json wants {list(key[2])}"
            if isinstance(key, tuple) and len(key) == 3
            else str(key)
            for key in mismatched[:4]
        )
        return (
            f"its config.json does not fit its saved weights ({shown}): were num_labels or id2label "
            "edited? Restore config.json, or point MODEL_PATH at the directory these weights came from"
        )
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        return (
            f"it has no trained weights for {', '.join(missing[:4])}{more}, so they would be random: it is "
            "a base encoder or another task's checkpoint, not a fine-tuned sequence classifier. Point "
            "MODEL_PATH at the fine-tuned directory that save_pretrained wrote"
        )
    return None


def padding_id(tokenizer_pad: int | None, config_pad: int | None) -> int:
    """The token id a batch is padded with: the tokenizer's pad token, else the config's pad_token_id.
    Decoder classifiers (GPT-2, Llama) read their score at the last token that is not
    ``config.pad_token_id``: padding with any other id scores every shorter text of a batch at a
    padding position, silently. Neither defined: ModelLoadError."""
    for candidate in (tokenizer_pad, config_pad):
        if isinstance(candidate, int) and not isinstance(candidate, bool) and candidate >= 0:
            return candidate
    raise ModelLoadError(
        "neither MODEL_PATH's tokenizer nor its config.json defines a pad token, and batching needs one: "
        "set pad_token in tokenizer_config.json (often the eos token) and pad_token_id in config.json"
    )


def load_model(
    path: Path | str,
    *,
    version: str = "unknown",
    quantized: bool = False,
    expected_sha256: str | None = None,
    max_tokens: int = 256,
    int8_backend: Int8Backend | None = None,
    onnx_cache_dir: Path | None = None,
) -> LoadedModel:
    """Load MODEL_PATH offline; verify its sha256 first when one is expected.

    ``quantized``: serve dynamic INT8 through ``int8_backend`` (default: the INT8_BACKEND environment
    variable, else ONNX Runtime; see runtime/quantization.py).
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"model directory not found: {root}")
    if not (root / "config.json").is_file():
        # transformers would say this in five lines about tokenizers and sentencepiece, seconds later.
        raise ModelLoadError(
            f"{root} has no config.json: it is not a Hugging Face model directory (what save_pretrained "
            "writes); point MODEL_PATH at one"
        )
    sha = verify_artifact(root, expected_sha256) if expected_sha256 else None

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
        # ignore_mismatched_sizes: a head whose shape is not the config's is reported in the loading info
        # (and refused below) instead of a RuntimeError pointing at a table printed in the log.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            root, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a sequence-classification model from {root}: {exc}") from exc
    if problem := untrained_weights(info):
        # transformers fills such weights with random values: every replica would answer differently.
        raise ModelLoadError(f"MODEL_PATH={root}: {problem}")
    model.eval()
    labels = labels_from_config(model.config)
    rows = int(model.get_input_embeddings().num_embeddings)
    # A token id past the table fails the whole forward pass of every text batched with it. The largest
    # id, not the count of tokens: a vocabulary with a gap has few tokens and an id past the table.
    top_token, top_id = max(tokenizer.get_vocab().items(), key=lambda kv: kv[1], default=("", -1))
    if top_id >= rows:
        raise ModelLoadError(
            f"MODEL_PATH={root}: the tokenizer gives {top_token!r} the id {top_id} but the model's embedding "
            f"table has only {rows} rows (ids 0-{rows - 1}; tokens added without resize_token_embeddings?): "
            "resize the embeddings and save the model again, or use the tokenizer it was trained with"
        )
    pad_id = padding_id(tokenizer.pad_token_id, getattr(model.config, "pad_token_id", None))
    max_tokens = token_limit(max_tokens, tokenizer, model.config, position_offset=position_offset(model))
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        labels=labels,
        version=version,
        quantized=False,
        max_tokens=max_tokens,
        path=root,
        sha256=sha,
        pad_id=pad_id,
    )
    if not quantized:
        return loaded
    from inference_server.runtime.quantization import int8_variant

    return int8_variant(loaded, backend=int8_backend, cache_dir=onnx_cache_dir)


def thread_setter(m: LoadedModel) -> Callable[[int], None]:
    """How a forward worker sizes the intra-op pool of its next passes, for the calling thread only:
    torch's OpenMP count is per thread; ONNX Runtime picks a session opened with that many threads."""
    if isinstance(m.model, OrtClassifier):
        return m.model.set_threads
    import torch

    return torch.set_num_threads


def count_tokens(m: LoadedModel, texts: Sequence[str]) -> list[int]:
    """Tokens per text including special tokens, without truncation (what MAX_TOKENS limits)."""
    enc = m.tokenizer(list(texts), add_special_tokens=True, truncation=False)
    return [len(ids) for ids in enc["input_ids"]]


def _forward(m: LoadedModel, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    enc = m.tokenizer(list(texts), truncation=True, max_length=m.max_tokens)
    # Padded as the server pads (``forward_ids``): the tokenizer may have no pad token of its own.
    return _logits(m, *pad_batch(enc["input_ids"], m.pad_id))


def _logits(
    m: LoadedModel, input_ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """One forward pass of the served model (torch, or an ONNX Runtime session) without gradients."""
    if isinstance(m.model, OrtClassifier):
        return m.model.logits(input_ids, mask)
    import torch

    with torch.inference_mode():
        logits = m.model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask)).logits
    out: npt.NDArray[np.float32] = logits.float().cpu().numpy()
    return out


def predict_logits(m: LoadedModel, texts: Sequence[str], *, batch_size: int = 32) -> npt.NDArray[np.float32]:
    """Logits [n, num_labels] for `texts`, in input order.

    Texts are sorted by length before batching so that each batch pads little; the result is put back
    in input order.
    """
    if not texts:
        return np.zeros((0, len(m.labels)), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), len(m.labels)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = _forward(m, [texts[i] for i in idx])
    return out


def _private_encoder(m: LoadedModel) -> Any:
    """A private copy of the Rust tokenizer with truncation and padding off.

    The transformers wrapper switches truncation/padding on the shared backend tokenizer on every call
    (and leaves it switched), so encoding through the shared object could silently truncate; a copy
    built once per model is immune and skips the wrapper's per-call overhead on the hot path.
    """
    cached = m.__dict__.get("_encoder")
    if cached is not None:
        return cached
    backend = getattr(m.tokenizer, "backend_tokenizer", None)
    if backend is None:
        m.__dict__["_encoder"] = False
        return False
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(backend.to_str())
    encoder.no_truncation()
    encoder.no_padding()
    m.__dict__["_encoder"] = encoder
    return encoder


def encode_ids(m: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text with special tokens, untruncated (what MAX_TOKENS limits and the server feeds
    to ``forward_ids``)."""
    encoder = _private_encoder(m)
    if encoder:
        if len(texts) == 1:
            return [encoder.encode(texts[0]).ids]
        return [e.ids for e in encoder.encode_batch(list(texts))]
    enc = m.tokenizer(list(texts), add_special_tokens=True, truncation=False)
    return [list(ids) for ids in enc["input_ids"]]


def pad_batch(
    batch: Sequence[Sequence[int]], pad_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-padded input_ids and attention_mask for already-encoded texts."""
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


def forward_ids(m: LoadedModel, batch: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
    """Logits [n, num_labels] for already-encoded texts: one padded forward pass (no grad)."""
    if not batch:
        return np.zeros((0, len(m.labels)), dtype=np.float32)
    return _logits(m, *pad_batch(batch, m.pad_id))
