"""The runtime pieces the server owns: token encoding/forward, INT8, saliency."""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from inference_server.runtime.model import (
    LoadedModel,
    encode_ids,
    forward_ids,
    load_model,
    predict_logits,
    token_limit,
)
from inference_server.runtime.quantization import quantize_dynamic_int8
from inference_server.runtime.saliency import (
    _ig_passes,
    _integrated_gradients,
    advance,
    explain,
    explain_passes,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir, version="t")


def test_encode_is_untruncated_and_immune_to_the_wrappers_state(tiny: LoadedModel) -> None:
    long_text = " ".join(["great"] * 300)
    predict_logits(tiny, ["great", long_text])  # leaves truncation switched on in the shared tokenizer
    assert len(encode_ids(tiny, [long_text])[0]) == 302


def test_forward_ids_matches_the_tokenizer_path(tiny: LoadedModel) -> None:
    texts = ["great", "awful film", "i really love this excellent story"]
    expected = predict_logits(tiny, texts)
    got = forward_ids(tiny, encode_ids(tiny, texts))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_int8_copy_leaves_fp32_untouched_and_agrees(tiny: LoadedModel) -> None:
    import torch

    q = quantize_dynamic_int8(tiny.model)
    assert any(isinstance(m, torch.nn.Linear) for m in tiny.model.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    texts = ["great", "awful", "excellent film", "terrible boring plot"]
    ids = encode_ids(tiny, texts)
    fp32 = forward_ids(tiny, ids).argmax(1)
    int8 = forward_ids(dataclasses.replace(tiny, model=q, quantized=True), ids).argmax(1)
    assert (fp32 == int8).all()


def test_integrated_gradients_are_complete(tiny: LoadedModel) -> None:
    """IG scores sum to logit(input) − logit(baseline) (the completeness axiom), up to the rule's error."""
    import torch

    ids = torch.tensor([encode_ids(tiny, ["the film was great"])[0]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        emb = tiny.model.get_input_embeddings()(ids)
    passes = _integrated_gradients(tiny.model, emb, mask, target=1, steps=256, tokens_per_pass=64)
    try:
        while True:
            next(passes)
    except StopIteration as done:
        scores, at_input, at_base = done.value
    assert float(scores.sum()) == pytest.approx(at_input - at_base, rel=1e-2)


def test_ig_passes_cover_the_path_once_within_the_token_budget() -> None:
    assert _ig_passes(20, tokens=254, tokens_per_pass=1024) == [
        list(range(i, min(i + 4, 21))) for i in range(0, 21, 4)
    ]
    assert _ig_passes(3, tokens=5000, tokens_per_pass=1024) == [[0], [1], [2], [3]]  # ≥ 1 point a pass
    assert _ig_passes(20, tokens=6, tokens_per_pass=1024) == [list(range(21))]


def test_integrated_gradients_do_not_depend_on_how_the_path_is_cut(tiny: LoadedModel) -> None:
    """One pass per point, a few points a pass, or the whole path at once: the same scores."""
    text = "the film was great but far too long"
    n = len(encode_ids(tiny, [text])[0])
    runs = [
        explain(tiny, text, method="integrated_gradients", steps=12, tokens_per_pass=budget)
        for budget in (n, 5 * n, 100 * n)
    ]
    for other in runs[1:]:
        assert other.tokens == runs[0].tokens and other.label == runs[0].label
        np.testing.assert_allclose(other.scores, runs[0].scores, rtol=1e-4, atol=1e-6)
        assert other.target_logit == pytest.approx(runs[0].target_logit, abs=1e-5)
        assert other.baseline_logit == pytest.approx(runs[0].baseline_logit, abs=1e-5)


def test_explain_passes_yield_once_per_bounded_pass(tiny: LoadedModel) -> None:
    text = "the film was great"
    n = len(encode_ids(tiny, [text])[0])
    passes = explain_passes(tiny, text, method="integrated_gradients", steps=9, tokens_per_pass=2 * n)
    count = 1
    while (result := advance(passes)) is None:
        count += 1
    assert count == 1 + 5 + 1  # the prediction, 10 points two at a time, then the result
    assert result == explain(tiny, text, method="integrated_gradients", steps=9, tokens_per_pass=2 * n)


def test_explain_contract(tiny: LoadedModel) -> None:
    e = explain(tiny, "awful film", method="integrated_gradients", steps=8)
    assert e.label == "negative" and e.tokens == ("awful", "film") and len(e.scores) == 2
    forced = explain(tiny, "awful film", target_label="positive")
    assert forced.label == "positive"
    with pytest.raises(ValueError, match="method"):
        explain(tiny, "x", method="shap")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        explain(tiny, "x", target_label="neutral")
    with pytest.raises(ValueError, match="fp32"):
        explain(dataclasses.replace(tiny, quantized=True), "x")


@pytest.mark.parametrize(
    ("requested", "model_max_length", "positions", "offset", "expected"),
    [
        (256, 512, 512, 0, 256),
        (256, int(1e30), 128, 0, 128),  # tokenizer says nothing
        (1024, 512, 512, 0, 512),
        (1024, int(1e30), 514, 2, 512),  # RoBERTa: positions from padding_idx 1 + 1
        (300, int(1e30), None, 0, 300),  # neither knows a limit
    ],
)
def test_max_tokens_never_exceeds_what_the_model_can_take(
    requested: int, model_max_length: int, positions: int | None, offset: int, expected: int
) -> None:
    tokenizer = types.SimpleNamespace(model_max_length=model_max_length)
    config = types.SimpleNamespace(max_position_embeddings=positions)
    assert token_limit(requested, tokenizer, config, position_offset=offset) == expected


def test_a_model_whose_tokenizer_states_no_limit_serves_within_its_positions(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Without the cap, a MAX_TOKENS-long text overruns the position embeddings inside the forward pass."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config.pop("model_max_length", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    m = load_model(model_dir, version="t", max_tokens=4096)
    positions = m.model.config.max_position_embeddings
    assert m.max_tokens == positions
    ids = encode_ids(m, [" ".join(["great"] * (positions - 2))])
    assert len(ids[0]) == m.max_tokens and forward_ids(m, ids).shape == (1, 2)


def test_a_directory_without_config_json_is_one_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    # transformers' own message spoke of tokenizers and sentencepiece, in five lines.
    from inference_server.runtime.model import ModelLoadError

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=r"has no config\.json: it is not a Hugging Face model"):
        load_model(tmp_path, version="t")
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(copy, version="t")


def test_huggingface_download_metadata_is_not_part_of_the_artifact_hash(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`hf download --local-dir` writes .cache/huggingface/ (download times, locks) beside the weights and
    rewrites it on every download: the same weights downloaded twice must verify against one hash."""
    from huggingface_hub._local_folder import get_local_download_paths, write_download_metadata

    from inference_server.runtime.artifact import sha256_of_artifact

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    before = sha256_of_artifact(model_dir)
    for name in ("config.json", "model.safetensors"):
        get_local_download_paths(model_dir, name)  # creates .cache/huggingface/{.gitignore,download/...}
        write_download_metadata(model_dir, name, commit_hash="a" * 40, etag="e" * 40)
    assert any((model_dir / ".cache" / "huggingface").rglob("*.metadata"))
    assert sha256_of_artifact(model_dir) == before
    (model_dir / "sub" / ".cache").mkdir(parents=True)  # only the top-level .cache is tool metadata
    (model_dir / "sub" / ".cache" / "weights.bin").write_bytes(b"x")
    assert sha256_of_artifact(model_dir) != before


def test_an_artifact_registered_with_the_hash_that_included_its_download_metadata_still_loads(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Releases before the .cache rule hashed .cache/ too: a MODEL_SHA256 (or registry entry) recorded
    then must not crash-loop the upgraded server on the unchanged artifact. It loads, with one warning
    giving the new hash to re-register; a hash that matches neither rule is still refused."""
    import hashlib
    import logging

    from inference_server.runtime.artifact import sha256_of_artifact
    from inference_server.runtime.model import ArtifactError

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    meta = model_dir / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "model.safetensors.metadata").write_text("abc123\netag\n1764400000.0\n")
    new = sha256_of_artifact(model_dir)
    # The previous rule, written out: every file, .cache included, by relative path, size and bytes.
    digest = hashlib.sha256()
    for file in sorted(
        (f for f in model_dir.rglob("*") if f.is_file()), key=lambda f: f.relative_to(model_dir).as_posix()
    ):
        rel = file.relative_to(model_dir).as_posix().encode()
        digest.update(len(rel).to_bytes(4, "big") + rel + file.stat().st_size.to_bytes(8, "big"))
        digest.update(file.read_bytes())
    legacy = digest.hexdigest()
    assert legacy != new

    with caplog.at_level(logging.WARNING, logger="inference_server.runtime.artifact"):
        model = load_model(model_dir, version="t", expected_sha256="sha256:" + legacy.upper())
    assert model.sha256 == new
    legacy_records = [
        r for r in caplog.records if getattr(r, "fields", {}).get("event") == "artifact_legacy_hash"
    ]
    assert len(legacy_records) == 1
    assert new in legacy_records[0].getMessage()
    assert "sentiment-ml registry register" in legacy_records[0].getMessage()

    with pytest.raises(ArtifactError, match="refusing to serve it"):
        load_model(model_dir, version="t", expected_sha256="0" * 64)
    # Without a .cache/ there is no previous rule to fall back on.
    shutil.rmtree(model_dir / ".cache")
    with pytest.raises(ArtifactError, match="refusing to serve it"):
        load_model(model_dir, version="t", expected_sha256=legacy)
