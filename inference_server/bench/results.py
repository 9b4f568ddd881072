"""The records of one benchmark run, shared by the harness that fills them, the targets and the report;
they round-trip through JSON so a report can be re-rendered without re-running the benchmark."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference_server.bench.inprocess import Ceiling, Quality
from inference_server.bench.machine import OthersCpu
from inference_server.bench.paired import PairedRound
from inference_server.bench.stats import RunSummary

# The optional "fp32-passive" variant (OMP_WAIT_POLICY=PASSIVE) is gone: every server under test now gets
# PASSIVE (servers.SERVER_OMP_WAIT_POLICY) and sentiment-server sets it for itself, so it was fp32 again.
VARIANTS = ("naive", "fp32", "int8", "fp32-1t")
VARIANT_TITLES = {
    "naive": "(a) naive `pipeline` app",
    "fp32": "(c) sentiment-server fp32",
    "int8": "(d) sentiment-server INT8",
    # Optional (--variants): the same server with one intra-op thread — for the question of how torch's
    # threads share 2 busy cores.
    "fp32-1t": "(c1) sentiment-server fp32, TORCH_THREADS=1",
}


def title(variant: str) -> str:
    """The variant's title; a variant of older results that no longer exists keeps its name."""
    return VARIANT_TITLES.get(variant, variant)


def precision_of(variant: str) -> str:
    return "int8" if variant.startswith("int8") else "fp32"


LENGTHS = ("short", "long")


@dataclass(frozen=True)
class ClosedRun:
    variant: str
    length: str
    concurrency: int
    summary: RunSummary
    server_p50_ms: float | None  # the server's own latency_ms (middleware to response), median
    client_cpu_share: float  # client CPU seconds / wall seconds (1.0 = one core)
    agreement: float | None  # share of answers matching the in-process prediction of the same model
    mean_batch: float | None = None  # texts per forward pass in the server during the run (its /metrics)
    server_mean_ms: float | None = None  # the server's own latency_ms, mean
    # Mean forward pass as the server ran it (its sentiment_forward_latency_seconds over the run); at
    # concurrency 1 every request had exactly one pass, so latency minus this is what the server adds.
    forward_mean_ms: float | None = None
    # Mean of the server's own request-latency histogram over the cell (sentiment_request_latency_seconds,
    # /infer, status_class="2xx"): from its metrics middleware seeing the request to the response sent,
    # so it includes the serialisation and the send that latency_ms misses.
    request_mean_ms: float | None = None
    warmup_errors: int = 0  # warm-up requests not answered 200
    first_error: str | None = None
    # Only in results from before ``answers`` was kept (never written now): their pooled gold → served
    # label → count, read to say why those results show no served macro-F1.
    confusion: dict[str, dict[str, int]] | None = None
    # The cell's first answer to each labelled input: input index → (gold, served label). What the
    # served macro-F1 is computed from, each text once (``served_quality``).
    answers: dict[int, tuple[str, str]] | None = None


@dataclass(frozen=True)
class OpenRun:
    variant: str
    length: str
    rate: float
    summary: RunSummary  # failed requests are in its percentiles at their latency (or the timeout)
    max_send_lag_ms: float
    client_cpu_share: float
    mean_batch: float | None = None
    warmup_errors: int = 0
    first_error: str | None = None


def invalid(run: ClosedRun | OpenRun) -> bool:
    """A cell with any request not answered 200 (measured or warm-up): its figures are not a
    measurement of the server, and no verdict may rest on it."""
    return run.summary.errors > 0 or run.warmup_errors > 0


def failures(run: ClosedRun | OpenRun) -> str:
    parts = [f"{run.summary.errors} failed"] if run.summary.errors else []
    parts += [f"{run.warmup_errors} failed in warm-up"] if run.warmup_errors else []
    return ", ".join(parts)


def first_answers(
    records: Iterable[Sequence[Any]], gold: Sequence[str | None]
) -> dict[int, tuple[str, str]] | None:
    """input index → (gold, served label) of the first 200 answer to each labelled input; None without
    gold labels. Records are the load generator's (input index, status, latency, label, server ms)."""
    if not any(g is not None for g in gold):
        return None
    out: dict[int, tuple[str, str]] = {}
    for index, status, _, label, *_ in records:
        truth = gold[index]
        if status == 200 and truth is not None and label is not None and index not in out:
            out[index] = (truth, label)
    return out


def confusion_over(answers: Mapping[int, tuple[str, str]], texts: Iterable[int]) -> dict[str, dict[str, int]]:
    """gold → served → count over ``texts``, one answer each."""
    out: dict[str, dict[str, int]] = {}
    for i in texts:
        truth, served = answers[i]
        row = out.setdefault(truth, {})
        row[served] = row.get(served, 0) + 1
    return out


@dataclass(frozen=True)
class ServedQuality:
    variant: str
    answers: int
    macro_f1: float
    accuracy: float


def quality_of_confusion(
    variant: str, confusion: Mapping[str, Mapping[str, int]], labels: Sequence[str]
) -> ServedQuality | None:
    """Macro-F1 and accuracy of served answers, by the same definition as the in-process figure
    (inference_server.ml.metrics: over the classes in the gold labels or the answers)."""
    from inference_server.ml.metrics import averaged_classes, per_class_scores

    names = list(labels) + sorted({x for gold, row in confusion.items() for x in (gold, *row)} - set(labels))
    index = {name: i for i, name in enumerate(names)}
    cm = np.zeros((len(names), len(names)), dtype=np.int64)
    for gold, row in confusion.items():
        for served, n in row.items():
            cm[index[gold], index[served]] += n
    total = int(cm.sum())
    if not total:
        return None
    scores = per_class_scores(cm, names)
    present = averaged_classes(cm)
    f1 = float(np.mean([scores[name]["f1"] for name, keep in zip(names, present, strict=True) if keep]))
    return ServedQuality(variant, total, f1, float(np.trace(cm)) / total)


@dataclass
class BenchResults:
    meta: dict[str, Any]
    closed: list[ClosedRun] = field(default_factory=list)
    open: list[OpenRun] = field(default_factory=list)
    ceilings: list[Ceiling] = field(default_factory=list)
    quality: Quality | None = None
    notes: list[str] = field(default_factory=list)
    paired: list[PairedRound] = field(default_factory=list)

    def run(self, variant: str, length: str, concurrency: int) -> ClosedRun | None:
        for r in self.closed:
            if (r.variant, r.length, r.concurrency) == (variant, length, concurrency):
                return r
        return None

    def ceiling(self, precision: str, length: str) -> Ceiling | None:
        for c in self.ceilings:
            if (c.precision, c.length) == (precision, length):
                return c
        return None

    def max_rps(self, variant: str, length: str) -> float:
        """Best closed-loop req/s of valid cells (of any cell when none is valid)."""
        cells = [r for r in self.closed if (r.variant, r.length) == (variant, length)]
        rates = [r.summary.rps for r in cells if not invalid(r)] or [r.summary.rps for r in cells]
        return max(rates) if rates else math.nan

    def answers_of(self, variant: str, concurrency: int) -> dict[int, tuple[str, str]]:
        """The variant's first answer to each labelled text in its valid closed-loop cell(s) at
        ``concurrency``: what it answered there, not how often it got to each text. One concurrency,
        because INT8's answers depend on their batch companions, which differ between c=1 and c=32."""
        out: dict[int, tuple[str, str]] = {}
        for r in self.closed:
            if (r.variant, r.concurrency) == (variant, concurrency) and r.answers and not invalid(r):
                for i, answer in r.answers.items():
                    out.setdefault(i, answer)
        return out

    def served_texts(self, variants: Sequence[str], concurrency: int) -> list[int]:
        """The labelled texts every one of ``variants`` answered at ``concurrency`` (empty when one
        answered none)."""
        sets = [set(self.answers_of(v, concurrency)) for v in variants]
        return sorted(set.intersection(*sets)) if sets else []

    def served_quality(self, variant: str, among: Sequence[str], concurrency: int) -> ServedQuality | None:
        """Macro-F1 of the variant's served answers at ``concurrency`` on the labelled texts every variant
        of ``among`` answered there, each text once (its first answer): like for like, whichever server
        got further. None without answers (results from before they were recorded)."""
        texts = self.served_texts(among, concurrency)
        if variant not in among or not texts:
            return None
        confusion = confusion_over(self.answers_of(variant, concurrency), texts)
        return quality_of_confusion(variant, confusion, self.meta.get("model", {}).get("labels", []))

    def other_cpu(self) -> OthersCpu | None:
        raw = self.meta.get("other_cpu")
        return OthersCpu.from_dict(raw) if raw else None

    def to_dict(self) -> dict[str, Any]:
        def run(r: ClosedRun | OpenRun) -> dict[str, Any]:
            out = {**r.__dict__, "summary": r.summary.to_dict()}
            if out.get("confusion", 0) is None:  # legacy-only: kept where an old result had it
                del out["confusion"]
            return out

        return {
            "meta": self.meta,
            "closed": [run(r) for r in self.closed],
            "open": [run(r) for r in self.open],
            "ceilings": [c.to_dict() for c in self.ceilings],
            "quality": self.quality.to_dict() if self.quality else None,
            "notes": self.notes,
            "paired": [r.to_dict() for r in self.paired],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResults:
        """Back from ``to_dict`` (the JSON next to the report), to re-render a report without re-running."""

        def closed(d: dict[str, Any]) -> ClosedRun:
            answers = d.get("answers")
            if answers is not None:  # JSON keys are strings, pairs are lists
                answers = {int(k): (str(g), str(x)) for k, (g, x) in answers.items()}
            return ClosedRun(**{**d, "summary": RunSummary.from_dict(d["summary"]), "answers": answers})

        def opened(d: dict[str, Any]) -> OpenRun:
            return OpenRun(**{**d, "summary": RunSummary.from_dict(d["summary"])})

        def ceiling(d: dict[str, Any]) -> Ceiling:
            def by_size(rates: dict[str, float]) -> dict[int, float]:
                return {int(k): float(v) for k, v in rates.items()}  # JSON keys are strings

            return Ceiling(
                **{
                    **d,
                    "sentences_per_s": by_size(d["sentences_per_s"]),
                    "sliced_sentences_per_s": by_size(d.get("sliced_sentences_per_s", {})),
                }
            )

        quality = data.get("quality")
        return cls(
            meta=data["meta"],
            closed=[closed(d) for d in data["closed"]],
            open=[opened(d) for d in data["open"]],
            ceilings=[ceiling(d) for d in data["ceilings"]],
            quality=Quality(**quality) if quality else None,
            notes=list(data.get("notes", [])),
            paired=[PairedRound(**d) for d in data.get("paired", [])],
        )
