"""Dynamic micro-batching: concurrent requests share one forward pass.

Requests submit their token ids and await a future. A collector task takes whatever is queued, waits
up to ``wait_ms`` for companions only while other inference requests are known to be on their way
(their body has arrived but has not been submitted yet: see ``Ticket``), then plans batches bounded
by count and by padded tokens, grouped by length so that short texts are not padded to long ones, and
runs them one at a time. A lone request is therefore never delayed, and under load batches form by
themselves while a batch runs.

A batch runs on ``workers`` forward threads at once: split into up to that many length-ordered slices
of at least ``min_slice`` texts, each a pass of its own on ``threads // workers`` intra-op threads
(``set_threads`` is called on the worker thread: torch's OpenMP thread count is per calling thread).
On 2 cores, two single-threaded passes of 16 short texts side by side did 119-126 sentences/s against
78-98 for one two-threaded pass, and 23-28 vs 19-22 for long ones (Findings of
docs/reports/server-benchmark.md): small matrices split across threads spend their time in barriers,
and a barrier stalls whenever the event loop takes one of the threads' cores. Each slice is also
padded only to its own longest text, and the cut balances the slices' padded tokens (``split_batch``).

A request that finds the batcher idle (nothing queued, no forward pass running, no other inference
request announced) skips the collector and hands its pass straight to a worker, with all the threads:
alone, the latency of one pass is what counts (a 120-token text: 46 ms on 2 threads, 67 on 1), and the
collector's hop would cost extra trips through the event loop (~0.08 ms of the ~1.4 ms the server adds
at concurrency 1, measured) for a batch that could only ever hold this one request. Whoever runs a
forward pass holds ``_forward_lock``, so requests that arrive meanwhile still queue up and form the
next batch. The lock is held until the work on the workers has ended, even when whoever awaited it has
gone (cancelled, or answered by ``abandon``).

Other torch work (a pass of /explain's saliency, ``run_exclusive``) never queues on the lock itself: it
asks the collector for a turn, and the collector hands the lock to the oldest such request when no
inference request is queued, or when it has already waited through one round of batches. A lock shared
in arrival order would put each inference batch behind one pass of every explanation in flight; this
way an inference batch waits for at most one pass, and an explanation under sustained load still gets
every other turn.

A pass of several texts that fails is run again text by text, so that only a text that fails alone
(one with a token id the model cannot embed, say) gets the error, not the requests batched with it.

Shutting down: ``stop`` refuses new work and finishes what is queued. When the shutdown's deadline is
near, ``abandon`` fails every request still waiting (queued, in a planned batch, or awaiting a pass
already running) with ``DrainingError``, which the app answers 503 ``draining`` rather than leaving
them to be cancelled (a bare 500) when the grace runs out; a planned batch whose requests have all been
answered or cancelled is skipped, not computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)
T = TypeVar("T")
Logits = npt.NDArray[np.float32]
RunBatch = Callable[[list[list[int]]], Logits]
SetThreads = Callable[[int], None]
# Fewest texts worth a slice of their own: a slice of one or two would waste its thread on overhead.
MIN_SLICE = 4


class DrainingError(RuntimeError):
    """The batcher is shutting down and takes no new work."""


def plan_batches(lengths: Sequence[int], *, max_size: int, max_tokens: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches: sorted by length, each batch at most `max_size`
    items and at most `max_tokens` padded tokens (longest × count). A single item longer than the
    budget still gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[i]  # ascending, so the newcomer is the longest of the batch
        if current and (len(current) >= max_size or width * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def split_batch(lengths: Sequence[int], parts: int, *, min_slice: int) -> list[range]:
    """Contiguous slices of a batch sorted by length (``lengths`` ascending): as many as ``parts``
    allows with at least ``min_slice`` texts each (a slice of one or two texts would waste its thread),
    cut so that the costliest slice — padded tokens, count × longest — is as cheap as it can be.

    Slices run side by side and the batch ends with the slowest, so equal counts waste time: the
    slice of the longest texts pads to a wider width. On the benchmark's 21–30-token texts (random
    batches of 21, two slices), the threads' work in padded tokens is 83% of their time with equal
    counts and 91% with balanced cost (a count, not a timing; the rest waits for the slower slice).
    """
    n, least = len(lengths), max(1, min_slice)
    k = max(1, min(parts, n // least))
    if k == 1:
        return [range(0, n)]
    bounds = _balanced_bounds(lengths, k, least)
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def _greedy_bounds(lengths: Sequence[int], k: int, least: int, limit: int) -> list[int] | None:
    """Bounds of ``k`` slices of at least ``least`` texts each, each costing at most ``limit``, or None
    when there is no such cut. Each slice takes as many texts as fit while leaving the slices after it
    their minimum: taking more never makes a later slice costlier, since it only starts later."""
    n, bounds = len(lengths), [0]
    while bounds[-1] < n:
        start, later = bounds[-1], k - len(bounds)  # slices still to cut after this one
        end, most = start + least, n - least * later
        if later < 0 or end > most or (end - start) * lengths[end - 1] > limit:
            return None
        while end < most and (end + 1 - start) * lengths[end] <= limit:
            end += 1
        bounds.append(end)
    return bounds


def _balanced_bounds(lengths: Sequence[int], k: int, least: int) -> list[int]:
    """The cut whose costliest slice is cheapest: a binary search over the cost limit, from what the
    longest text's slice must cost at least to what equal counts cost (always met)."""
    n = len(lengths)
    best = [round(i * n / k) for i in range(k + 1)]
    low = least * lengths[-1]
    high = max((b - a) * lengths[b - 1] for a, b in itertools.pairwise(best))
    while low < high:
        middle = (low + high) // 2
        found = _greedy_bounds(lengths, k, least, middle)
        if found is None:
            low = middle + 1
        else:
            best, high = found, middle
    return best


class Ticket:
    """An inference request whose body has arrived but has not been submitted yet, and will submit work.

    Taken by the HTTP guard once the whole body is in (serving/limits.py), never while it is still
    arriving: a stalled upload must not keep the collector waiting for companions. The collector waits
    for companions only while tickets are outstanding. Release is idempotent; the HTTP layer releases in
    a ``finally`` so that a request that fails validation never holds a batch.
    """

    __slots__ = ("_batcher", "_open")

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._open = True
        batcher._announced += 1

    def release(self) -> None:
        if self._open:
            self._open = False
            self._batcher._announced -= 1
            self._batcher._wake.set()


@dataclass(slots=True)
class _Item:
    ids: list[int]
    future: asyncio.Future[Logits]


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 8192,
        wait_ms: float = 3.0,
        on_batch: Callable[[int, int, float], None] | None = None,
        workers: int = 1,
        threads: int = 1,
        set_threads: SetThreads | None = None,
        min_slice: int = MIN_SLICE,
    ) -> None:
        if workers < 1 or threads < 1 or min_slice < 1:
            raise ValueError(
                f"workers, threads and min_slice must be at least 1 (got {workers}, {threads}, {min_slice})"
            )
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.wait_s = wait_ms / 1000.0
        # (items, padded tokens, seconds the pass took on the worker thread) per forward pass, for metrics
        self._on_batch = on_batch
        self.workers = workers
        self.threads = threads  # intra-op threads of a pass alone; a slice beside others gets its share
        self.threads_per_worker = max(1, threads // workers)
        self.min_slice = min_slice
        self._set_threads = set_threads
        self._thread_state = threading.local()  # the intra-op thread count each worker last set
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forward")
        self._queue: deque[_Item] = deque()
        # Exclusive work waiting for its turn: each future is resolved when the collector hands its
        # caller ``_forward_lock`` (see ``_exclusive_turn``).
        self._turns: deque[asyncio.Future[None]] = deque()
        self._turn_owed = False  # exclusive work waited through a round of batches: it goes next
        self._wake = asyncio.Event()
        self._announced = 0
        self._forward_lock = asyncio.Lock()  # held while a forward pass runs (collector or lone request)
        self._draining = False
        self._abandoned = False
        self._task: asyncio.Task[None] | None = None
        # Requests the collector has taken from the queue and not answered yet, and what lone passes and
        # exclusive work are awaited through: `abandon` fails them all.
        self._taken: list[_Item] = []
        self._direct: set[asyncio.Future[Any]] = set()
        self._busy = 0  # passes running on the workers, whoever awaits them (kept by the workers)
        self._workers_idle = threading.Condition()

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="micro-batcher")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new work and finish what is queued or running, for at most ``timeout_s``; then whatever
        still waits is failed with DrainingError (``abandon``). Never blocks the event loop: a pass that
        is still running when time is up finishes on its worker, unanswered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        self._draining = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), max(0.0, deadline - loop.time()))
            except TimeoutError:
                if failed := self.abandon():
                    log.warning(
                        "micro-batcher did not drain within %.2fs; %d waiting request(s) answered 503 "
                        "draining",
                        timeout_s,
                        failed,
                    )
                self._task.cancel()
        # A lone pass or exclusive work may still be running (the collector does not wait for those).
        if self._forward_lock.locked():
            try:
                await asyncio.wait_for(self._forward_lock.acquire(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                self.abandon()
            else:
                self._forward_lock.release()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def abandon(self) -> int:
        """Take no more work and fail every request still waiting on the batcher with DrainingError:
        queued, taken into a planned batch, or awaiting a pass that is already running (which finishes
        on its worker, its answer dropped). The number of requests so answered."""
        self._draining = self._abandoned = True
        self._wake.set()
        waiting = [it.future for it in (*self._queue, *self._taken)] + [*self._direct, *self._turns]
        self._queue.clear()
        self._turns.clear()
        failed = 0
        for future in waiting:
            if not future.done():
                future.set_exception(DrainingError("server is shutting down"))
                failed += 1
        return failed

    def wait_for_workers(self, timeout_s: float) -> bool:
        """Block (off the event loop: after it has closed) until no pass runs on the forward workers, for
        at most ``timeout_s``; whether they are done. A pass cannot be interrupted, and the interpreter
        joins the workers when it exits: ``sentiment-server`` uses this to exit without waiting for a
        pass past the shutdown deadline."""
        with self._workers_idle:
            return self._workers_idle.wait_for(lambda: self._busy == 0, max(0.0, timeout_s))

    @contextlib.contextmanager
    def _working(self) -> Iterator[None]:
        with self._workers_idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._workers_idle:
                self._busy -= 1
                self._workers_idle.notify_all()

    @property
    def pending(self) -> int:
        return len(self._queue) + (1 if self._forward_lock.locked() else 0)

    @property
    def idle(self) -> bool:
        """Nothing queued, running or announced: a new request could not share a batch with anyone. Nor
        any exclusive work waiting for a turn: a lone pass queues on the lock in arrival order, where it
        could land behind a turn; through the collector it goes first."""
        return (
            not self._queue and not self._turns and not self._forward_lock.locked() and self._announced == 0
        )

    # --- requests ------------------------------------------------------------------------------
    def ticket(self) -> Ticket:
        return Ticket(self)

    async def submit(self, ids: list[int]) -> Logits:
        """Logits row for one encoded text, computed in some batch."""
        if self._draining:
            raise DrainingError("server is shutting down")
        if self.idle and self._task is not None:
            row: Logits = (await self._run_alone(ids))[0]
            return row
        future: asyncio.Future[Logits] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(ids, future))
        self._wake.set()
        return await future

    async def submit_many(self, batch: Sequence[list[int]]) -> list[Logits]:
        if self._draining:
            raise DrainingError("server is shutting down")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Logits]] = [loop.create_future() for _ in batch]
        self._queue.extend(_Item(ids, f) for ids, f in zip(batch, futures, strict=True))
        self._wake.set()
        return list(await asyncio.gather(*futures))

    async def run_exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """Run other torch work (saliency) on a forward worker with all the threads, between batches, so
        it never competes with them; inference batches queued meanwhile go first (``_exclusive_turn``)."""
        if self._draining:
            raise DrainingError("server is shutting down")
        await self._exclusive_turn()
        return await self._relay(self._start(self._exclusive, fn, args))

    async def _exclusive_turn(self) -> None:
        """Wait until the collector hands this caller ``_forward_lock`` (only when no inference request
        is queued), or DrainingError from ``abandon``."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        self._wake.set()
        try:
            await turn
        except asyncio.CancelledError:
            # Handed the lock just as the caller went away: nobody else would ever release it.
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._forward_lock.release()
            raise
        if self._abandoned:  # handed the lock just before `abandon`: refused, not run
            self._forward_lock.release()
            raise DrainingError("server is shutting down")

    def _hand_turn(self) -> bool:
        """Give ``_forward_lock`` (held by the collector) to the oldest exclusive caller still waiting;
        False when none is left (callers that went away are dropped)."""
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return True
        return False

    async def _take_turn(self) -> None:
        """Acquire ``_forward_lock`` for a lone pass, or DrainingError when the batcher was abandoned
        meanwhile. A caller still waiting for the lock when ``abandon`` runs is answered once the pass
        ahead of it ends (a lone pass or one pass of /explain: well inside the shutdown's tail), not by
        ``abandon`` itself."""
        await self._forward_lock.acquire()
        if self._abandoned:
            self._forward_lock.release()
            raise DrainingError("server is shutting down")

    def _start(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on a forward worker; the caller holds ``_forward_lock``, released here if the
        work cannot even be started (``_relay`` releases it otherwise)."""
        try:
            return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # the executor was shut down: the batcher has stopped
            self._forward_lock.release()
            raise DrainingError("server is shutting down") from exc
        except BaseException:
            self._forward_lock.release()
            raise

    def _relay(self, work: asyncio.Future[T]) -> asyncio.Future[T]:
        """What the caller awaits for ``work`` it started on a worker while holding ``_forward_lock``:
        the work's outcome, or DrainingError from ``abandon``. The lock is released when the work itself
        ends, not when its waiter gives up, so that it covers everything running on the workers."""
        waiter: asyncio.Future[T] = work.get_loop().create_future()
        self._direct.add(waiter)

        def settle(_: asyncio.Future[T]) -> None:
            self._forward_lock.release()
            self._direct.discard(waiter)
            if waiter.done():  # its request is gone or was answered: the outcome goes nowhere
                if not work.cancelled():
                    work.exception()  # retrieved, so that asyncio does not report it as never retrieved
            elif work.cancelled():  # never started: the executor shut down with it queued
                # DrainingError, not a cancellation: the request's task was not cancelled, and a
                # CancelledError out of it would reach the client as the server's bare 500.
                waiter.set_exception(DrainingError("server is shutting down"))
            elif (error := work.exception()) is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(work.result())

        work.add_done_callback(settle)
        return waiter

    def _exclusive(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._working():
            self._use_threads(self.threads)
            return fn(*args)

    def _use_threads(self, threads: int) -> None:
        if self._set_threads is not None and getattr(self._thread_state, "threads", 0) != threads:
            self._set_threads(threads)  # this worker thread's count only (OpenMP's is per thread)
            self._thread_state.threads = threads

    # --- collector -----------------------------------------------------------------------------
    def _queued_tokens(self) -> int:
        return sum(len(item.ids) for item in self._queue)

    async def _gather_companions(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while (
            self._announced > 0
            and len(self._queue) < self.max_batch_size
            and self._queued_tokens() < self.max_batch_tokens
        ):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    async def _collect(self) -> None:
        while True:
            if not self._queue and not self._turns:
                if self._draining:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # A lone request's pass or exclusive work may be running: wait for it, so that whatever
            # queued meanwhile goes into one batch rather than trickling in behind it one by one.
            await self._forward_lock.acquire()
            # Inference first, but exclusive work that has waited behind one round of batches goes
            # next: under sustained load the queue is never empty, and an explanation would wait forever
            # (holding one of the few explanation slots) while /infer waits for at most one pass anyway.
            if self._queue and not (self._turn_owed and self._turns):
                self._turn_owed = bool(self._turns)
                try:
                    await self._run_queued()
                finally:
                    self._forward_lock.release()
            elif self._hand_turn():  # handed over: the exclusive work releases the lock when it ends
                self._turn_owed = False
            else:  # every waiting turn was given up: nothing is owed any more
                self._turn_owed = False
                self._forward_lock.release()

    async def _run_queued(self) -> None:
        """Plan and run everything queued (the caller holds ``_forward_lock``)."""
        loop = asyncio.get_running_loop()
        if self.wait_s > 0 and not self._draining:
            await self._gather_companions()
        items = [it for it in self._queue if not it.future.done()]  # cancelled: client went away
        self._queue.clear()
        self._taken = items
        plan = plan_batches(
            [len(it.ids) for it in items],
            max_size=self.max_batch_size,
            max_tokens=self.max_batch_tokens,
        )
        try:
            for indices in plan:
                # Requests answered or cancelled while earlier batches ran (clients gone,
                # or `abandon` near the shutdown deadline) need no pass.
                batch = [items[i] for i in indices if not items[i].future.done()]
                if batch:
                    await self._run(loop, batch)
        finally:
            self._taken = []

    async def _forward(
        self, loop: asyncio.AbstractEventLoop, ids: list[list[int]], *, quiet: bool = False
    ) -> Logits:
        """One batch (the caller holds ``_forward_lock``): a single pass on all threads, or slices side
        by side on the workers (see the module docstring); logits rows in the order of ``ids``. A
        failure is logged with its traceback unless ``quiet`` (a retry, which logs it in one line)."""
        slices = split_batch([len(x) for x in ids], self.workers, min_slice=self.min_slice)
        threads = self.threads if len(slices) == 1 else self.threads_per_worker
        # Every slice finishes before this returns, even when one fails: the lock must cover all the work
        # on the workers, or the next batch would start beside a slice still running.
        outcomes = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, self._timed, ids[s.start : s.stop], threads)
                for s in slices
            ),
            return_exceptions=True,
        )
        failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failed is not None:
            if not quiet:
                log.error("forward pass failed for a batch of %d", len(ids), exc_info=failed)
            raise failed
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        for (_, seconds), part in zip(done, slices, strict=True):
            if self._on_batch is not None:
                self._on_batch(len(part), max(len(ids[i]) for i in part) * len(part), seconds)
        return done[0][0] if len(done) == 1 else np.concatenate([logits for logits, _ in done])

    def _timed(self, ids: list[list[int]], threads: int) -> tuple[Logits, float]:
        with self._working():
            self._use_threads(threads)
            # Timed on the worker thread itself: the pass as the server ran it, without the hand-offs.
            start = time.perf_counter()
            logits = self._run_batch(ids)
            return logits, time.perf_counter() - start

    async def _run_alone(self, ids: list[int]) -> Logits:
        await self._take_turn()  # free (checked by the caller): taken without yielding, nearly always
        try:
            logits, seconds = await self._relay(self._start(self._timed, [ids], self.threads))
        except Exception as exc:
            if not isinstance(exc, DrainingError):
                log.error("forward pass failed for a batch of 1", exc_info=exc)
            raise
        if self._on_batch is not None:
            self._on_batch(1, len(ids), seconds)
        return logits

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        try:
            logits = await self._forward(loop, [it.ids for it in batch])
        except Exception as exc:  # a failed forward pass fails its requests, not the collector
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            await self._retry_alone(loop, batch, exc)
            return
        for row, it in enumerate(batch):
            if not it.future.done():
                it.future.set_result(logits[row])

    async def _retry_alone(self, loop: asyncio.AbstractEventLoop, batch: list[_Item], exc: Exception) -> None:
        """After ``batch`` failed its pass with ``exc``: each text again, alone, and only what fails alone
        fails. One text can fail a whole pass (a token id the model's table lacks, a pathological input)
        and its companions must not fail with it. This costs passes only after a failure, never on the
        way to an answer. When the first two texts both fail alone as the batch did, the failure is not
        one text's (a broken runtime, memory exhausted): the rest fail with ``exc`` without a pass each,
        instead of n more failed passes holding the forward lock. (Two culprits at the head of a batch
        would fail their companions: the price of not paying n passes per batch when nothing can pass.)
        Logged in one line, without tracebacks: the batch's own failure has logged one."""
        tried = failed = skipped = 0
        first: Exception | None = None
        systemic = False
        for it in batch:
            if it.future.done():  # its client left, or `abandon` answered it, during earlier retries
                continue
            if systemic:
                it.future.set_exception(exc)
                skipped += 1
                continue
            tried += 1
            try:
                logits = await self._forward(loop, [it.ids], quiet=True)
            except Exception as lone:
                failed += 1
                if first is None:
                    first = lone
                if not it.future.done():
                    it.future.set_exception(lone)
                systemic = tried == failed == 2 and type(first) is type(lone) is type(exc)
            else:
                if not it.future.done():
                    it.future.set_result(logits[0])
        if skipped:
            log.error(
                "a batch of %d failed its pass; its first 2 texts failed alone as well (%r): %d others "
                "failed without a pass",
                len(batch),
                first,
                skipped,
            )
        elif failed:
            log.error(
                "a batch of %d failed its pass; %d of %d texts failed alone (%r)",
                len(batch),
                failed,
                tried,
                first,
            )
        else:
            log.warning(
                "a batch of %d failed its pass; each of its %d texts passed alone (%r)",
                len(batch),
                tried,
                exc,
            )
