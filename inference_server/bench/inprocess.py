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


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _throughput(
    run: Callable[[list[list[int]]], Any], ids: Sequence[list[int]], batch_size: int, min_time_s: float
) -> float:
    """Sentences/s of consecutive batches over ``ids`` (cycled) for at least ``min_time_s``."""
    batches = [list(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    batches = [b for b in batches if len(b) == batch_size] or batches
    run(batches[0])  # warm: first call at a new shape pays for allocation
    done, k = 0, 0
    start = time.perf_counter()
    while True:
        batch = batches[k % len(batches)]
        run(batch)
        done += len(batch)
        k += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time_s and k >= 2:
            return done / elapsed


def measure_ceiling(
    m: LoadedModel,
    texts: Sequence[str],
    *,
    precision: str,
    length: str,
    batch_sizes: Sequence[int],
    min_time_s: float,
    single_samples: int,
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
    singles = []
    for i in range(single_samples):
        t0 = time.perf_counter()
        forward_ids(m, [ids[i % len(ids)]])
        singles.append((time.perf_counter() - t0) * 1000.0)
    best = max(rates, key=rates.__getitem__)
    best_rate, layout = rates[best], "one pass"
    if sliced:
        bs = max(sliced, key=sliced.__getitem__)
        if sliced[bs] > best_rate:
            best, best_rate, layout = bs, sliced[bs], f"{workers} slices side by side"
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
            slices = split_batch(len(batch), workers, min_slice=MIN_SLICE)
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
    m: LoadedModel, texts: Sequence[str], *, batch_size: int, layout: str, min_time_s: float
) -> float:
    """Sentences/s at one batch size and layout (``Ceiling.best_layout``): a paired round's ceiling."""
    ids = encode_ids(m, list(texts))
    if layout == "one pass":
        return _throughput(lambda batch: forward_ids(m, batch), ids, batch_size, min_time_s)
    with _sliced(m) as run:
        return _throughput(run, ids, batch_size, min_time_s)


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
