"""In-process measurements (torch / ONNX Runtime in this process, no HTTP): the raw forward-pass
ceiling (b), the bare single-sentence forward latency (what the server's per-request overhead is
measured against), and macro-F1 of fp32 vs INT8 on the test split. Uses the same runtime calls as
the server's hot path (``encode_ids`` → ``forward_ids``) with the same thread settings
(``configure_torch_threads``)."""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from inference_server.bench.stats import percentile
from inference_server.runtime.model import (
    LoadedModel,
    encode_ids,
    forward_ids,
    predict_logits,
    thread_setter,
)
from inference_server.serving.batching import MIN_SLICE, split_batch


@dataclass(frozen=True)
class Ceiling:
    precision: str  # "fp32" | "int8"
    length: str  # "short" | "long"
    sentences_per_s: dict[int, float]  # by batch size
    best_batch_size: int
    best_sentences_per_s: float
    batch1_p50_ms: float  # one sentence per forward pass: the bare latency
    batch1_p95_ms: float
    # The same batches cut into slices that run side by side, each on its share of the threads (the
    # server's layout under load, serving/batching.py); empty with a single thread.
    sliced_sentences_per_s: dict[int, float] = field(default_factory=dict)
    best_layout: str = "one pass"
    slices: int = 2  # how many slices the sliced layout cut each batch into (older results: 2)
    # How the bare single-sentence latency was timed: over how many inputs (in the order the c=1 cell
    # sends them) and with what idle gap between passes; None in results from before the gap.
    single_n: int | None = None
    single_gap_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Quality:
    rows: int
    macro_f1_fp32: float
    macro_f1_int8: float
    accuracy_fp32: float
    accuracy_int8: float
    agreement: float  # share of test sentences where fp32 and INT8 predict the same label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ONE_PASS = "one pass"


def sliced_layout(workers: int) -> str:
    return f"{workers} slices side by side"


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


Batch = list[list[int]]


def ceiling_batches(ids: Sequence[list[int]], batch_size: int) -> list[Batch]:
    """Consecutive batches of ``batch_size`` (full ones only, unless there are none), each sorted by
    length as the server's ``plan_batches`` sorts what it batches: slices cut from a sorted batch are
    padded only to their own longest text, as the server's are."""
    batches = [list(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    batches = [b for b in batches if len(b) == batch_size] or batches
    return [sorted(b, key=len) for b in batches]


def timed_singles(
    run: Callable[[list[list[int]]], Any],
    ids: Sequence[list[int]],
    *,
    samples: int | None,
    gap_s: float,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> list[float]:
    """Milliseconds of one single-sentence pass per input, in the order the concurrency-1 cell sends
    them (``ids`` from the first, cycled; all of them once when ``samples`` is None), idle ``gap_s``
    between passes. Why the gap: behind HTTP at concurrency 1 the forward thread idles between passes
    while the answer goes out and the next request comes in, and a pass after an idle gap (caches,
    OpenMP threads gone to sleep) is slower than one right after another; timing them back to back
    would understate the forward pass and so overstate what the server adds."""
    count = len(ids) if samples is None else samples
    if not ids or count <= 0:
        return []
    run([ids[0]])  # warm: the first pass at a new shape pays for allocation
    out = []
    for i in range(count):
        sleep(gap_s)
        t0 = clock()
        run([ids[i % len(ids)]])
        out.append((clock() - t0) * 1000.0)
    return out


def _throughput(
    run: Callable[[Batch], Any],
    ids: Sequence[list[int]],
    batch_size: int,
    min_time_s: float,
    min_batches: int = 2,
) -> float:
    """Sentences/s of consecutive length-sorted batches over ``ids`` (cycled) for at least
    ``min_time_s`` and ``min_batches`` batches."""
    batches = ceiling_batches(ids, batch_size)
    run(batches[0])  # warm: first call at a new shape pays for allocation
    done, k = 0, 0
    start = time.perf_counter()
    while True:
        batch = batches[k % len(batches)]
        run(batch)
        done += len(batch)
        k += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time_s and k >= max(2, min_batches):
            return done / elapsed


def measure_ceiling(
    m: LoadedModel,
    texts: Sequence[str],
    *,
    precision: str,
    length: str,
    batch_sizes: Sequence[int],
    min_time_s: float,
    single_samples: int | None,
    single_gap_s: float,
) -> Ceiling:
    ids = encode_ids(m, list(texts))

    def run(batch: list[list[int]]) -> Any:
        return forward_ids(m, batch)

    rates: dict[int, float] = {}
    for bs in batch_sizes:
        rates[bs] = _throughput(run, ids, bs, min_time_s)
        _log(f"ceiling {precision} {length}: batch {bs:>3} → {rates[bs]:7.1f} sentences/s")
    sliced = _sliced_rates(m, ids, batch_sizes, min_time_s, precision=precision, length=length)
    workers = slice_workers()
    singles = timed_singles(run, ids, samples=single_samples, gap_s=single_gap_s)
    best = max(rates, key=rates.__getitem__)
    best_rate, layout = rates[best], ONE_PASS
    if sliced:
        bs = max(sliced, key=sliced.__getitem__)
        if sliced[bs] > best_rate:
            best, best_rate, layout = bs, sliced[bs], sliced_layout(workers)
    return Ceiling(
        precision,
        length,
        rates,
        best,
        best_rate,
        statistics.median(singles),
        percentile(singles, 95),
        sliced,
        layout,
        workers,
        single_n=len(singles),
        single_gap_ms=single_gap_s * 1000.0,
    )


def slice_workers() -> int:
    """The server's default FORWARD_WORKERS (serving/engine.py): one single-threaded slice per thread."""
    return _threads_now()


@contextlib.contextmanager
def _sliced(m: LoadedModel) -> Iterator[Callable[[list[list[int]]], Any]]:
    """A runner that cuts each batch into slices run side by side, one per thread, each slice on its
    worker's single thread, exactly as the server runs a batch under load by default."""
    workers = slice_workers()
    with ThreadPoolExecutor(workers, initializer=thread_setter(m), initargs=(1,)) as pool:

        def run(batch: list[list[int]]) -> Any:
            slices = split_batch([len(x) for x in batch], workers, min_slice=MIN_SLICE)  # sorted by length
            futures = [pool.submit(forward_ids, m, batch[s.start : s.stop]) for s in slices]
            return [f.result() for f in futures]

        yield run


def _sliced_rates(
    m: LoadedModel,
    ids: Sequence[list[int]],
    batch_sizes: Sequence[int],
    min_time_s: float,
    *,
    precision: str,
    length: str,
) -> dict[int, float]:
    """Sentences/s by batch size with the sliced layout (batches too small to slice are skipped: the
    server runs those as one pass); empty with fewer threads than slices."""
    if slice_workers() < 2:
        return {}
    rates: dict[int, float] = {}
    with _sliced(m) as run:
        for bs in batch_sizes:
            if bs < 2 * MIN_SLICE:
                continue
            rates[bs] = _throughput(run, ids, bs, min_time_s)
            _log(f"ceiling {precision} {length}: batch {bs:>3} as slices → {rates[bs]:7.1f} sentences/s")
    return rates


def rate_at(
    m: LoadedModel,
    ids: Sequence[list[int]],
    *,
    batch_size: int,
    layout: str,
    min_time_s: float,
    min_batches: int = 2,
) -> float:
    """Sentences/s at one batch size and layout (``Ceiling.best_layout``) over token ids (``encode_ids``)."""
    if layout == ONE_PASS:
        return _throughput(lambda batch: forward_ids(m, batch), ids, batch_size, min_time_s, min_batches)
    with _sliced(m) as run:
        return _throughput(run, ids, batch_size, min_time_s, min_batches)


def best_rate(
    m: LoadedModel,
    ids: Sequence[list[int]],
    candidates: Sequence[tuple[int, str]],
    *,
    min_time_s: float,
    min_batches: int,
) -> tuple[float, int, str]:
    """A paired round's ceiling: the best (sentences/s, batch size, layout) of the candidates (at least
    one: ``paired.ceiling_candidates`` always holds the sweep's winner), each run over the token ids
    ``ids`` for at least ``min_time_s`` and ``min_batches`` batches. One short run of the sweep's winner
    was noisy enough that the server beat its ceiling in 3 rounds of 8; the best of several sizes, each
    over several batches, is a ceiling the server should not reach."""
    rates = [
        (
            rate_at(m, ids, batch_size=bs, layout=layout, min_time_s=min_time_s, min_batches=min_batches),
            bs,
            layout,
        )
        for bs, layout in candidates
    ]
    return max(rates, key=lambda x: x[0])  # the first of equal rates; ValueError without candidates


def _threads_now() -> int:
    import torch

    return int(torch.get_num_threads())


def predicted_labels(m: LoadedModel, texts: Sequence[str]) -> list[str]:
    logits = predict_logits(m, list(texts), batch_size=32)
    return [m.labels[int(i)] for i in logits.argmax(axis=1)]


def measure_quality(
    fp32: LoadedModel, int8: LoadedModel, texts: Sequence[str], gold: Sequence[str]
) -> Quality:
    from inference_server.ml.metrics import accuracy, macro_f1

    index = {label: i for i, label in enumerate(fp32.labels)}
    y = [index[g] for g in gold]
    _log(f"macro-F1: fp32 on {len(texts)} test sentences …")
    p32 = [index[p] for p in predicted_labels(fp32, texts)]
    _log(f"macro-F1: INT8 on {len(texts)} test sentences …")
    p8 = [index[p] for p in predicted_labels(int8, texts)]
    n = len(fp32.labels)
    return Quality(
        rows=len(texts),
        macro_f1_fp32=macro_f1(y, p32, n),
        macro_f1_int8=macro_f1(y, p8, n),
        accuracy_fp32=accuracy(y, p32),
        accuracy_int8=accuracy(y, p8),
        agreement=sum(a == b for a, b in zip(p32, p8, strict=True)) / len(texts) if texts else 0.0,
    )
