"""What load_model and the warm-up refuse: a directory that would be served wrong, silently.

Each case is a model transformers loads without an error, and that the server would otherwise mark
ready: a random head, NaN weights, a tokenizer larger than the embedding table, a decoder padded with
the wrong id, a broken id2label, a position table the name-based rule got wrong; and the calibration
files the lenient parser used to accept.
"""

from __future__ import annotations

import json
import shutil
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inference_server.runtime.calibration import CalibrationError, CalibrationParams
from inference_server.runtime.model import (
    ModelLoadError,
    encode_ids,
    forward_ids,
    labels_from_config,
    load_model,
    predict_logits,
)
from inference_server.settings import ServerSettings

MakeSettings = Callable[..., ServerSettings]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, edit: Callable[[dict[str, object]], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --- finding 1: no trained head ----------------------------------------------------------------------
def test_an_encoder_without_a_trained_head_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    """transformers fills a missing classifier with random values (each load different) and only
    prints a table; the model was served ready, at ~0.5 confidence."""
    from transformers import AutoModel

    base = tmp_path / "base-encoder"
    AutoModel.from_pretrained(tiny_model_dir).save_pretrained(base)  # the encoder, without its head
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, base / name)
    with pytest.raises(ModelLoadError, match=r"MODEL_PATH=.*no trained weights for classifier\.bias") as err:
        load_model(base, version="t")
    assert "\n" not in str(err.value) and "Point MODEL_PATH at the fine-tuned" in str(err.value)


def test_a_config_that_does_not_fit_the_saved_head_is_one_clear_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = _copy(tiny_model_dir, tmp_path / "model")

    def three_labels(c: dict[str, object]) -> None:
        c["id2label"] = {"0": "negative", "1": "neutral", "2": "positive"}
        c["label2id"] = {"negative": 0, "neutral": 1, "positive": 2}

    _edit_json(model_dir / "config.json", three_labels)
    with pytest.raises(ModelLoadError, match=r"config\.json does not fit its saved weights") as err:
        load_model(model_dir, version="t")
    assert "classifier.weight: saved [2," in str(err.value) and "\n" not in str(err.value)


# --- finding 2: NaN logits at the warm-up -------------------------------------------------------------
def _nan_model(tiny_model_dir: Path, dst: Path) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(dst)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, dst / name)
    return dst


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8-torch"])
def test_a_model_with_nan_logits_fails_its_warm_up_instead_of_turning_ready(
    tiny_model_dir: Path, tmp_path: Path, quantized: bool
) -> None:
    from fastapi.testclient import TestClient

    from inference_server import contract as c
    from inference_server.app import create_app
    from inference_server.serving.lifecycle import Phase

    from .conftest import settings_for, wait_phase

    model_dir = _nan_model(tiny_model_dir, tmp_path / "nan")
    fatal: list[str] = []
    settings = settings_for(
        model_dir, tmp_path, enable_quantized_model=str(quantized).lower(), INT8_BACKEND="torch"
    )
    app = create_app(settings, on_fatal=fatal.append)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert wait_phase(app) is Phase.FAILED
        r = client.get(c.Path.READYZ)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"
    assert len(fatal) == 1 and "non-finite logits" in fatal[0] and "MODEL_PATH=" in fatal[0]


# --- finding 5a: tokenizer larger than the embedding table -----------------------------------------------
@pytest.mark.parametrize("variant", ["added", "hole"])
def test_a_tokenizer_with_ids_the_embedding_table_lacks_is_refused(
    tiny_model_dir: Path, tmp_path: Path, variant: str
) -> None:
    """Such a token failed every request batched with it (IndexError inside the shared pass). ``added``:
    a token added without resize_token_embeddings (one token more than rows); ``hole``: as many tokens
    as rows, but one of them with an id past the table (a gap in the vocabulary)."""
    from transformers import AutoTokenizer

    model_dir = _copy(tiny_model_dir, tmp_path / "model")
    if variant == "added":
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.add_tokens(["zzzboom"])  # and no resize_token_embeddings
        tokenizer.save_pretrained(model_dir)
        token = "zzzboom"
    else:
        data = json.loads((model_dir / "tokenizer.json").read_text())
        token = next(t for t in data["model"]["vocab"] if t.isalpha() and len(t) > 3)
        data["model"]["vocab"][token] = 200
        (model_dir / "tokenizer.json").write_text(json.dumps(data))
        assert len(AutoTokenizer.from_pretrained(model_dir)) <= 77  # no more tokens than rows
    refusal = rf"MODEL_PATH=.*tokenizer gives '{token}' the id \d+ but the model's embedding table has only "
    refusal += "77 rows"
    with pytest.raises(ModelLoadError, match=refusal):
        load_model(model_dir, version="t")


# --- finding 6: decoder classifiers pad with the config's pad id -----------------------------------------
def _decoder(tiny_model_dir: Path, dst: Path, *, pad_token_id: int | None) -> Path:
    """A tiny GPT-2 classifier (score read at the last token that is not config.pad_token_id) whose
    tokenizer has no pad token: the usual recipe sets only config.pad_token_id = eos."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    dst.mkdir()
    shutil.copy(tiny_model_dir / "tokenizer.json", dst)
    _edit_json_to(tiny_model_dir / "tokenizer_config.json", dst / "tokenizer_config.json", "pad_token")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=77, n_embd=32, n_layer=1, n_head=2, n_positions=128, num_labels=2,
        pad_token_id=pad_token_id, eos_token_id=3, bos_token_id=3,
    )  # fmt: skip
    GPT2ForSequenceClassification(config).save_pretrained(dst)
    return dst


def _edit_json_to(src: Path, dst: Path, drop: str) -> None:
    data = json.loads(src.read_text())
    data.pop(drop, None)
    dst.write_text(json.dumps(data))


def test_a_decoder_whose_tokenizer_has_no_pad_token_is_padded_with_the_configs(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    m = load_model(_decoder(tiny_model_dir, tmp_path / "gpt2", pad_token_id=3), version="t")
    assert m.tokenizer.pad_token_id is None
    texts = ["great", "the movie was really awful and boring", "i love it", "bad"]
    ids = encode_ids(m, texts)
    alone = np.stack([forward_ids(m, [x])[0] for x in ids])
    # Padded with 0 (not the pad id), the shorter texts were scored at a padding position.
    np.testing.assert_allclose(forward_ids(m, ids), alone, atol=1e-5)
    np.testing.assert_allclose(predict_logits(m, texts), alone, atol=1e-5)  # the jobs' path too


def test_a_decoder_padded_with_another_id_than_the_one_it_skips_fails_its_warm_up(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The tokenizer's pad token ([PAD], id 0) is not the config's pad_token_id (3, the one the model
    skips): every batched text would be scored at a padding position. The fp32 warm-up compares each
    text alone with the batch and refuses to serve."""
    from fastapi.testclient import TestClient

    from inference_server.app import create_app
    from inference_server.serving.lifecycle import Phase

    from .conftest import settings_for, wait_phase

    model_dir = _decoder(tiny_model_dir, tmp_path / "gpt2", pad_token_id=3)
    shutil.copy(tiny_model_dir / "tokenizer_config.json", model_dir)  # keeps its own pad token
    fatal: list[str] = []
    app = create_app(settings_for(model_dir, tmp_path), on_fatal=fatal.append)
    with TestClient(app, raise_server_exceptions=False):
        assert wait_phase(app) is Phase.FAILED
    assert len(fatal) == 1 and "reads its padding" in fatal[0] and "MODEL_PATH=" in fatal[0], fatal


def test_a_model_with_no_pad_token_anywhere_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ModelLoadError, match=r"neither MODEL_PATH's tokenizer nor its config\.json defines a pad"
    ):
        load_model(_decoder(tiny_model_dir, tmp_path / "gpt2", pad_token_id=None), version="t")


# --- finding 8: position offset from the model, not its model_type --------------------------------------
@pytest.mark.parametrize(("model_type", "expected"), [("camembert", 39), ("mpnet", 38), ("roberta", 39)])
def test_positions_numbered_from_the_padding_row_are_not_overrun(
    tiny_model_dir: Path, tmp_path: Path, model_type: str, expected: int
) -> None:
    """CamemBERT and MPNet number positions from padding_idx + 1 like RoBERTa, without "roberta" in
    their model_type (MPNet's padding row is 1 whatever pad_token_id says): a max_tokens-long text
    overran the position table and start-up failed with "index out of range in self"."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_dir = tmp_path / model_type
    model_dir.mkdir()
    shutil.copy(tiny_model_dir / "tokenizer.json", model_dir)
    _edit_json_to(
        tiny_model_dir / "tokenizer_config.json", model_dir / "tokenizer_config.json", "model_max_length"
    )
    config = AutoConfig.for_model(
        model_type, vocab_size=77, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, pad_token_id=0, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(model_dir)
    m = load_model(model_dir, version="t", max_tokens=256)
    assert m.max_tokens == expected
    ids = encode_ids(m, [" ".join(["great"] * (m.max_tokens - 2))])
    assert len(ids[0]) == m.max_tokens and forward_ids(m, ids).shape == (1, 2)


# --- finding 10: id2label ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "id2label",
    [
        {0: "negative", 2: "positive"},  # a gap: "positive" was never served, "LABEL_1" was
        {0: "same", 1: "same"},  # duplicates merged their scores
        {0: "negative", 1: " "},
    ],
)
def test_an_id2label_that_does_not_name_each_output_once_is_refused(id2label: dict[int, str]) -> None:
    config = types.SimpleNamespace(id2label=id2label, num_labels=2)
    with pytest.raises(ModelLoadError, match=r"config\.json id2label must give each of the 2 outputs"):
        labels_from_config(config)


def test_a_gap_in_id2label_is_refused_at_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(tiny_model_dir, tmp_path / "model")

    def gap(c: dict[str, object]) -> None:
        c["id2label"] = {"0": "negative", "2": "positive"}
        c["label2id"] = {"negative": 0, "positive": 2}

    _edit_json(model_dir / "config.json", gap)
    with pytest.raises(ModelLoadError, match="id2label"):
        load_model(model_dir, version="t")


def test_id2label_in_any_key_order_or_absent_is_accepted() -> None:
    assert labels_from_config(types.SimpleNamespace(id2label={1: "pos", 0: "neg"}, num_labels=2)) == (
        "neg",
        "pos",
    )
    assert labels_from_config(
        types.SimpleNamespace(id2label={"0": "a", "1": "b", "2": "c"}, num_labels=3)
    ) == (
        "a",
        "b",
        "c",
    )
    assert labels_from_config(types.SimpleNamespace(id2label={}, num_labels=2)) == ("LABEL_0", "LABEL_1")


# --- finding 9: calibration files -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\xff\xfe{\x00}\x00", r"is not UTF-8 JSON"),  # UTF-16, as some editors save
        (b'{"temperature": true}', r"temperature must be a JSON number"),
        (b'{"temperature": "2"}', r"temperature must be a JSON number"),
        (b'{"temperature": 1.5, "schema_version": 99}', r"schema_version 99 is not 1"),
        (b'{"temperature": 1.5, "schema_version": 1.9}', r"schema_version 1\.9 is not 1"),
        (b'{"temperature": 1.5, "schema_version": "1"}', r"schema_version '1' is not 1"),
    ],
)
def test_a_calibration_file_that_is_not_what_calibrate_writes_is_refused(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "calibration.json"
    path.write_bytes(content)
    with pytest.raises(CalibrationError, match=match) as err:
        CalibrationParams.load(path)
    assert "\n" not in str(err.value)
    if "UTF-8" in match:
        assert str(path) in str(err.value)


def test_an_unreadable_calibration_path_is_a_calibration_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"cannot read calibration params file .*directory"):
        CalibrationParams.load(tmp_path)  # a directory: IsADirectoryError, an OSError


def test_what_calibrate_writes_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    CalibrationParams(temperature=1.7, metrics={"ece_after": 0.02}).save(path)
    assert CalibrationParams.load(path).temperature == 1.7
    path.write_text('{"temperature": 2}')  # an int is a JSON number; no schema_version means 1
    assert CalibrationParams.load(path).temperature == 2.0


def test_a_non_utf8_calibration_file_fails_start_up_as_calibration_invalid(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from inference_server import contract as c
    from inference_server.app import create_app
    from inference_server.serving.lifecycle import Phase

    from .conftest import wait_phase

    path = tmp_path / "calibration.json"
    path.write_bytes(b"\xff\xfe{\x00}\x00")
    app = create_app(make_settings(CALIBRATION_PARAMS_PATH=str(path)))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert wait_phase(app) is Phase.FAILED
        body = client.get(c.Path.READYZ).json()
    assert body["error"]["code"] == "calibration_invalid"
    assert "CALIBRATION_PARAMS_PATH" in body["error"]["message"]
