"""Fixtures for the ML command tests: a small labelled dataset built in the test session."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from inference_server.ml.datasets import Example, Source, split_examples, write_dataset
from inference_server.tiny_model import NEGATIVE_WORDS, POSITIVE_WORDS

TINY_DATASET = "tiny_reviews"
_TEMPLATES = ("the film was {w}", "{w} acting", "i thought it was {w} and {w2}", "a {w} story",
              "really {w}", "the plot is so {w}")


def tiny_examples(n: int = 300, seed: int = 0) -> list[Example]:
    """Templated review sentences over the tiny model's vocabulary, both labels, unique texts."""
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    while len(seen) < n:
        label = rng.choice(("negative", "positive"))
        pool = POSITIVE_WORDS if label == "positive" else NEGATIVE_WORDS
        text = rng.choice(_TEMPLATES).format(w=rng.choice(pool), w2=rng.choice(pool)) + f" #{len(seen)}"
        seen[text] = label
    return [Example(f"tiny-{i:04d}", t, lab) for i, (t, lab) in enumerate(seen.items())]


@pytest.fixture
def tiny_data_root(tmp_path: Path) -> Path:
    """A data root holding TINY_DATASET (train/validation/test, 300 rows, seeded split)."""
    root = tmp_path / "datasets"
    splits = split_examples(tiny_examples(), seed=0, fractions=(0.5, 0.25, 0.25))
    write_dataset(root, TINY_DATASET, splits, Source("tests", "0", "conftest.py"), seed=0,
                  fractions=(0.5, 0.25, 0.25))
    return root


@pytest.fixture
def tiny_dataset() -> str:
    """The name of the dataset that ``tiny_data_root`` holds."""
    return TINY_DATASET


@pytest.fixture
def make_examples() -> object:
    return tiny_examples


@pytest.fixture(scope="session")
def nan_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its classifier bias set to NaN: every logit is NaN, as after a diverged
    fine-tune. Loads like any model directory."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("nan-model") / "tinynan"
    shutil.copytree(tiny_model_dir, out)
    weights = load_file(out / "model.safetensors")
    weights["classifier.bias"].fill_(float("nan"))
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out
