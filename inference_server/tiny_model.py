"""A tiny but real sentiment model, built in seconds, for tests and for a demo without the default model.

It is a genuine BertForSequenceClassification with a fast word-level tokenizer, saved with
`save_pretrained`, so it goes through exactly the MODEL_PATH loading code that a trained model does.
A few dozen optimisation steps on templated sentences make clearly positive and clearly negative
texts come out right, which is enough for tests to assert on behaviour.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

POSITIVE_WORDS = (
    "great",
    "love",
    "excellent",
    "wonderful",
    "good",
    "best",
    "amazing",
    "happy",
    "fantastic",
    "enjoyed",
    "brilliant",
    "superb",
    "delightful",
    "perfect",
    "beautiful",
)
NEGATIVE_WORDS = (
    "awful",
    "terrible",
    "hate",
    "bad",
    "worst",
    "boring",
    "horrible",
    "sad",
    "poor",
    "dull",
    "disappointing",
    "ugly",
    "waste",
    "annoying",
    "mediocre",
)
NEUTRAL_WORDS = (
    "the",
    "a",
    "an",
    "this",
    "that",
    "it",
    "is",
    "was",
    "movie",
    "film",
    "story",
    "plot",
    "acting",
    "service",
    "food",
    "i",
    "we",
    "they",
    "really",
    "very",
    "so",
    "and",
    "but",
    "not",
    "of",
    "to",
    "with",
    "for",
    "on",
    "in",
    "my",
    "our",
    "product",
    "show",
    "book",
    "day",
    "time",
    "people",
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TEMPLATES = (
    "{w}",
    "this movie was {w}",
    "the film is {w}",
    "i {w} it",
    "really {w} acting",
    "the story was very {w}",
    "{w} and {w2}",
    "so {w} , the plot was {w2}",
)


def _vocab() -> list[str]:
    words = sorted(set(POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS + (",", ".", "!", "?")))
    return list(SPECIAL_TOKENS) + words


def _make_tokenizer(directory: Path) -> object:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(directory)
    return fast


def _examples(labels: Sequence[str], rng: random.Random, n: int) -> list[tuple[str, int]]:
    """Templated sentences; the first label is negative, the last positive, any middle ones neutral."""
    out = []
    for _ in range(n):
        cls = rng.randrange(len(labels))
        pool: tuple[str, ...]
        if cls == 0:
            pool = NEGATIVE_WORDS
        elif cls == len(labels) - 1:
            pool = POSITIVE_WORDS
        else:
            pool = NEUTRAL_WORDS[8:]
        text = rng.choice(_TEMPLATES).format(w=rng.choice(pool), w2=rng.choice(pool))
        out.append((text, cls))
    return out


def build_tiny_model(
    path: Path | str,
    *,
    labels: Sequence[str] = ("negative", "positive"),
    seed: int = 0,
    train_steps: int = 60,
) -> Path:
    """Build, briefly train and save a tiny classifier at `path`; returns the directory."""
    import torch

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    # A model this small gains nothing from intra-op threads, and on a busy machine they cost 10x
    # (22 s instead of 1.7 s measured with the other core loaded).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_and_save(directory, labels, seed, train_steps)
    finally:
        torch.set_num_threads(threads)
    return directory


def _train_and_save(directory: Path, labels: Sequence[str], seed: int, train_steps: int) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = _make_tokenizer(directory)
    config = BertConfig(
        vocab_size=len(_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
    )
    model = BertForSequenceClassification(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(train_steps):
        batch = _examples(labels, rng, 32)
        enc = tokenizer([t for t, _ in batch], padding=True, return_tensors="pt")  # type: ignore[operator]
        loss = model(**enc, labels=torch.tensor([y for _, y in batch])).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    model.save_pretrained(directory)


if __name__ == "__main__":  # pragma: no cover - manual use: python -m inference_server.tiny_model DIR
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-model"))
