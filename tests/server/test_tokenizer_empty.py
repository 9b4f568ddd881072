"""A text that passes the text rules but holds only characters the model's tokenizer drops is refused
as ``empty_text`` (422), like an empty one: otherwise the model classifies its special tokens alone
and the answer is counted and kept for /feedback like a real prediction.

The tiny model's tokenizer strips accents (NFD, then drops the marks), so a lone combining accent —
a letter-less mark, not a control or format character — reaches the tokenizer and encodes to nothing.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from inference_server import contract as c

MARK = "\u0301"  # COMBINING ACUTE ACCENT, category Mn: no text rule refuses it


def _predictions(client: TestClient) -> float:
    families = text_string_to_metric_families(client.get(c.Path.METRICS).text)
    return sum(s.value for f in families for s in f.samples if s.name == c.METRIC_PREDICTIONS_SERIES)


def test_a_text_the_tokenizer_reads_nothing_of_is_empty(api: TestClient) -> None:
    before = _predictions(api)
    r = api.post(c.Path.INFER, json={"text": MARK * 3})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "empty_text" and r.json()["error"]["field"] == "text"

    r = api.post(c.Path.INFER_BATCH, json={"items": [{"text": "great"}, {"text": f"{MARK} {MARK}"}]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "empty_text" and r.json()["error"]["field"] == "items[1].text"

    r = api.post(c.Path.EXPLAIN, json={"text": MARK})
    assert r.status_code == 422 and r.json()["error"]["code"] == "empty_text", r.text
    assert _predictions(api) == before  # nothing was answered, so nothing was counted

    # A real word beside the mark is read: the check is on the tokens, not on the characters.
    r = api.post(c.Path.INFER, json={"text": f"great{MARK}"})
    assert r.status_code == 200 and r.json()["label"] == "positive", r.text
