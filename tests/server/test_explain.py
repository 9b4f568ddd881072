"""POST /explain and runtime/saliency.py: which label is explained, which tokens are kept, their spans,
the convergence check, and how explanations share the forward workers with inference."""

from __future__ import annotations

import asyncio
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from inference_server import contract as c
from inference_server.api import explain as explain_api
from inference_server.api.schemas import ExplainRequest
from inference_server.app import create_app
from inference_server.runtime.model import LoadedModel, encode_ids, load_model
from inference_server.runtime.saliency import MAX_STEPS, convergence, explain
from inference_server.serving.lifecycle import Phase
from inference_server.settings import ServerSettings

from .conftest import serving, wait_phase

MakeSettings = Callable[..., ServerSettings]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir, version="t")


# --- runtime/saliency.py ----------------------------------------------------------------------------
def test_unknown_words_keep_their_token_and_score(tiny: LoadedModel) -> None:
    """[UNK] is a special id, but it is the user's word: only the positions the tokenizer added go."""
    e = explain(tiny, "the film was xyzzy great", method="integrated_gradients", steps=16)
    assert e.tokens == ("the", "film", "was", "[UNK]", "great")
    assert len(e.scores) == 5 and e.scores[3] != 0.0
    assert explain(tiny, "xyzzy").tokens == ("[UNK]",)


def test_special_tokens_typed_by_the_user_are_kept(tiny: LoadedModel) -> None:
    text = "[CLS] great [SEP]"
    e = explain(tiny, text)
    assert e.tokens == ("[CLS]", "great", "[SEP]")
    assert e.offsets is not None and [text[a:b] for a, b in e.offsets] == ["[CLS]", "great", "[SEP]"]
    assert len(e.added_scores) == 2  # the tokenizer's own [CLS] and [SEP], set apart


def test_offsets_point_into_the_explained_text(tiny: LoadedModel) -> None:
    text = "Café 🤮, GREAT film"
    e = explain(tiny, text)
    assert e.offsets is not None
    assert [text[a:b] for a, b in e.offsets] == ["Café", "🤮", ",", "GREAT", "film"]
    assert e.tokens == ("[UNK]", "[UNK]", ",", "great", "film")


def test_a_text_over_max_tokens_is_refused_not_truncated(tiny: LoadedModel) -> None:
    text = " ".join(["great"] * tiny.max_tokens)  # + [CLS] and [SEP]
    assert len(encode_ids(tiny, [text])[0]) > tiny.max_tokens
    with pytest.raises(ValueError, match=f"MAX_TOKENS={tiny.max_tokens}"):
        explain(tiny, text)


def test_steps_are_bounded_like_the_server_bounds_them(tiny: LoadedModel) -> None:
    assert any(getattr(m, "le", None) == MAX_STEPS for m in ExplainRequest.model_fields["steps"].metadata)
    with pytest.raises(ValueError, match="steps"):
        explain(tiny, "great", method="integrated_gradients", steps=MAX_STEPS + 1)


def test_convergence_accounts_for_every_position(tiny: LoadedModel) -> None:
    e = explain(tiny, "the film was great", method="integrated_gradients", steps=MAX_STEPS)
    check = convergence(e)
    assert check is not None
    assert check.scores_sum == pytest.approx(sum(e.scores) + sum(e.added_scores))
    assert check.logit_delta == pytest.approx(e.target_logit - e.baseline_logit)
    assert check.delta == pytest.approx(check.scores_sum - check.logit_delta)
    assert abs(check.delta) < 0.05 * abs(check.logit_delta)  # 200 steps converge on the tiny model
    assert check.added_tokens_score == pytest.approx(sum(e.added_scores))
    assert 0.0 <= check.added_tokens_share <= 1.0
    assert convergence(explain(tiny, "the film was great")) is None  # gradient × input: no baseline


# --- the endpoint -----------------------------------------------------------------------------------
def test_explain_answers_spans_into_the_normalised_text(api: TestClient) -> None:
    sent = "cafe\u0301 was\x07xyzzy great"  # decomposed é and a control character
    normalised = unicodedata.normalize("NFC", sent).replace("\x07", " ")
    r = api.post(c.Path.EXPLAIN, json={"text": sent})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert [normalised[t["start"] : t["end"]] for t in tokens] == ["café", "was", "xyzzy", "great"]
    assert [t["token"] for t in tokens] == ["[UNK]", "was", "[UNK]", "great"]
    assert r.json()["gradients_from"] == "served_model"
    assert "convergence" not in r.json()


def test_integrated_gradients_answer_their_convergence_check(api: TestClient) -> None:
    r = api.post(c.Path.EXPLAIN, json={"text": "the film was great", "method": "integrated_gradients"})
    assert r.status_code == 200, r.text
    body = r.json()
    check = body["convergence"]
    assert set(check) == {"scores_sum", "logit_delta", "delta", "added_tokens_score", "added_tokens_share"}
    kept = sum(t["score"] for t in body["tokens"])
    assert check["scores_sum"] == pytest.approx(kept + check["added_tokens_score"], abs=1e-5)
    assert check["delta"] == pytest.approx(check["scores_sum"] - check["logit_delta"], abs=1e-5)


def test_explain_names_the_label_int8_serving_answers(make_settings: MakeSettings, tmp_path: Path) -> None:
    """Under enable_quantized_model the gradients come from the fp32 copy, but the label explained is
    the one /infer answers, from the served INT8 model, even where the two models disagree."""
    app = create_app(make_settings(enable_quantized_model="true", ONNX_CACHE_DIR=str(tmp_path / "onnx")))
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
        texts = ["great film", "awful film", "and enjoyed terrible but food", "poor delightful a i time good"]

        def labels() -> list[tuple[str, str]]:
            out = []
            for text in texts:
                explained = client.post(c.Path.EXPLAIN, json={"text": text}).json()
                assert explained["gradients_from"] == "fp32_copy"
                out.append(
                    (client.post(c.Path.INFER, json={"text": text}).json()["label"], explained["label"])
                )
            return out

        assert all(served == explained for served, explained in labels())
        # Make the served model disagree with the fp32 copy on every text: a stand-in INT8 forward pass
        # with its logits swapped.
        batcher = app.state.ctx.state.engine.batcher
        forward = batcher._run_batch
        batcher._run_batch = lambda ids: forward(ids)[:, ::-1].copy()
        flipped = labels()
        assert [served for served, _ in flipped][:2] == ["negative", "positive"]
        assert all(served == explained for served, explained in flipped)


class _Recorder:
    """What ran on the forward workers, in order: inference batches and explanation passes."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def batches(self, run_batch: Callable[[list[list[int]]], Any]) -> Callable[[list[list[int]]], Any]:
        def run(ids: list[list[int]]) -> Any:
            self.order.append(f"batch of {len(ids)}")
            return run_batch(ids)

        return run

    def passes(self, advance: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(passes: Any) -> Any:
            self.order.append("pass")
            return advance(passes)

        return run


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):  # a bound, not a timing
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


async def test_explanations_in_flight_are_capped_and_queued_inference_goes_first(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two explanations may run or wait; a third is refused 429 `explain_busy` with Retry-After. An
    /infer that arrives while they wait is computed before any of their passes."""
    assert explain_api.MAX_EXPLANATIONS_IN_FLIGHT == 2
    recorder = _Recorder()
    monkeypatch.setattr(explain_api, "advance", recorder.passes(explain_api.advance))
    app = create_app(make_settings())
    async with serving(app) as client:
        state = app.state.ctx.state
        batcher = state.engine.batcher
        batcher._run_batch = recorder.batches(batcher._run_batch)
        gate = threading.Event()  # holds the forward workers, as a long pass would
        holding = asyncio.create_task(batcher.run_exclusive(gate.wait, 30))
        await _until(batcher._forward_lock.locked)

        def post(path: str, body: dict[str, Any]) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(client.post(path, json=body))

        ig = {"method": "integrated_gradients", "steps": 4}
        explaining = [post(c.Path.EXPLAIN, {"text": t, **ig}) for t in ("the film was great", "awful film")]
        await _until(lambda: state.explaining == 2)
        refused = await client.post(c.Path.EXPLAIN, json={"text": "great"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "explain_busy"
        assert refused.headers["retry-after"] == "1"
        inferring = post(c.Path.INFER, {"text": "great"})
        # /infer queued, both explanations waiting for a turn (fp32 serving: no prediction pass first)
        await _until(lambda: len(batcher._queue) == 1 and len(batcher._turns) == 2)
        gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*explaining, inferring, holding), 120)
        assert [a.status_code for a in answers[:3]] == [200, 200, 200]
        assert state.explaining == 0
        # The queued /infer first, then the explanations' passes.
        assert recorder.order[0] == "batch of 1" and set(recorder.order[1:]) == {"pass"}
        assert (await client.post(c.Path.EXPLAIN, json={"text": "great"})).status_code == 200


def test_an_explanation_slot_is_released_on_every_exit() -> None:
    from inference_server.serving.lifecycle import ServerState

    state = ServerState()
    with explain_api.explanation_slot(state, 1):
        with pytest.raises(explain_api.ApiError) as busy, explain_api.explanation_slot(state, 1):
            pass
        assert busy.value.status == 429 and busy.value.headers == {"Retry-After": "1"}
    with pytest.raises(RuntimeError), explain_api.explanation_slot(state, 1):
        raise RuntimeError("the explanation failed")
    assert state.explaining == 0
