"""The micro-batcher with a fake forward pass: planning, routing, waiting, failure, draining."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_server.serving.batching import DrainingError, MicroBatcher, plan_batches, split_batch


@given(
    st.lists(st.integers(1, 300), max_size=80),
    st.integers(1, 20),
    st.integers(1, 2000),
)
def test_plan_batches_partitions_within_bounds(lengths: list[int], max_size: int, max_tokens: int) -> None:
    plan = plan_batches(lengths, max_size=max_size, max_tokens=max_tokens)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(lengths)))  # every item exactly once
    for batch in plan:
        assert 1 <= len(batch) <= max_size
        widest = max(lengths[i] for i in batch)
        assert widest * len(batch) <= max_tokens or len(batch) == 1  # an oversized item rides alone
    # Grouped by length: batches are contiguous runs of the sorted lengths.
    runs = [sorted(lengths[i] for i in batch) for batch in plan]
    assert [x for run in runs for x in run] == sorted(lengths)


@given(st.lists(st.integers(1, 512), min_size=1, max_size=200), st.integers(1, 8), st.integers(1, 16))
def test_split_batch_cuts_contiguous_slices_no_costlier_than_equal_counts(
    unsorted: list[int], parts: int, min_slice: int
) -> None:
    lengths = sorted(unsorted)
    n = len(lengths)
    slices = split_batch(lengths, parts, min_slice=min_slice)
    assert [i for s in slices for i in s] == list(range(n))  # in order, every item once
    assert len(slices) == min(parts, max(1, n // min_slice))  # as many as allowed
    assert len(slices) == 1 or min(len(s) for s in slices) >= min_slice  # each worth a thread

    def worst(cut: list[range]) -> int:  # padded tokens of the slowest slice
        return max(len(s) * lengths[s.stop - 1] for s in cut)

    k = len(slices)
    even = [range(round(i * n / k), round((i + 1) * n / k)) for i in range(k)]
    assert worst(slices) <= worst(even)
    if k == 2:  # against every cut: the costliest slice is as cheap as it can be
        cuts = range(min_slice, n - min_slice + 1)
        assert worst(slices) == min(worst([range(0, i), range(i, n)]) for i in cuts)


def test_split_batch_gives_the_slice_of_longer_texts_fewer_of_them() -> None:
    lengths = sorted(list(range(21, 31)) * 2)  # equal counts: 10 texts padded to 25 beside 10 to 30
    left, right = split_batch(lengths, 2, min_slice=4)
    assert (len(left), len(right)) == (11, 9)  # 11 × 26 = 286 and 9 × 30 = 270 padded tokens, not 300


class FakeModel:
    """Logits row = [sum(ids), len(ids)]: lets a test see which ids produced which answer."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []
        self.fail_next = False

    def __call__(self, batch: list[list[int]]) -> np.ndarray:
        self.batches.append(batch)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return np.array([[sum(ids), len(ids)] for ids in batch], dtype=np.float32)


async def test_each_request_gets_its_own_row_and_batches_form() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=4, max_batch_tokens=10_000, wait_ms=1)
    batcher.start()
    inputs = [[i] * (1 + i % 5) for i in range(10)]
    rows = await asyncio.gather(*(batcher.submit(ids) for ids in inputs))
    for ids, row in zip(inputs, rows, strict=True):
        assert row.tolist() == [sum(ids), len(ids)]
    assert max(len(b) for b in model.batches) > 1
    assert all(len(b) <= 4 for b in model.batches)
    await batcher.stop()


async def test_waits_for_announced_companions_only() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=8, wait_ms=60_000)  # a wait nobody could sit out
    batcher.start()
    # Nobody announced: a lone request goes at once, whatever wait_ms says.
    assert (await asyncio.wait_for(batcher.submit([1, 2]), 30)).tolist() == [3, 2]
    # One request announced (its body still arriving): the first waits for it, and they share a pass.
    ticket = batcher.ticket()
    first = asyncio.create_task(batcher.submit([5]))
    await asyncio.sleep(0.05)
    assert not first.done()
    ticket.release()
    second = await asyncio.wait_for(batcher.submit([7]), 30)
    assert (await first).tolist() == [5, 1] and second.tolist() == [7, 1]
    assert model.batches[-1] == [[5], [7]]
    # A ticket released without submitting (the request failed validation) stops the wait too.
    ticket = batcher.ticket()
    lone = asyncio.create_task(batcher.submit([9]))
    await asyncio.sleep(0.05)
    ticket.release()
    ticket.release()  # idempotent
    assert (await asyncio.wait_for(lone, 30)).tolist() == [9, 1]
    await batcher.stop()


async def test_failed_forward_fails_its_requests_not_the_batcher() -> None:
    # A lone request on an idle batcher: its pass runs without the collector, and its failure must still
    # free the batcher for the next one.
    model = FakeModel()
    batcher = MicroBatcher(model, wait_ms=0)
    batcher.start()
    model.fail_next = True
    with pytest.raises(RuntimeError, match="boom"):
        await batcher.submit([1])
    assert batcher.idle
    assert (await batcher.submit([2])).tolist() == [2, 1]
    await batcher.stop()


async def test_stop_finishes_queued_work_then_refuses() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=2, wait_ms=0)
    batcher.start()
    pending = [asyncio.create_task(batcher.submit([i])) for i in range(6)]
    await asyncio.sleep(0)
    await batcher.stop()
    assert [t.result().tolist() for t in pending] == [[i, 1] for i in range(6)]
    with pytest.raises(DrainingError):
        await batcher.submit([1])
    with pytest.raises(DrainingError):
        await batcher.run_exclusive(len, [1])


async def test_submit_many_keeps_order() -> None:
    batcher = MicroBatcher(FakeModel(), max_batch_size=3, wait_ms=0)
    batcher.start()
    items = [[3, 3, 3], [1], [2, 2], [9] * 7, [4]]
    rows = await batcher.submit_many(items)
    assert [r.tolist() for r in rows] == [[sum(i), len(i)] for i in items]
    await batcher.stop()


class GatedModel(FakeModel):
    """A forward pass that blocks (on the worker thread) until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, batch: list[list[int]]) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(30), "gate never opened"
        return super().__call__(batch)


async def _until(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 30)


async def test_lone_request_skips_the_collector_and_gets_the_batched_answer() -> None:
    model = FakeModel()
    passes: list[tuple[int, int, float]] = []
    batcher = MicroBatcher(model, wait_ms=60_000, on_batch=lambda *a: passes.append(a))
    batcher.start()
    assert batcher.idle
    alone = await asyncio.wait_for(batcher.submit([4, 5, 6]), 30)
    assert model.batches == [[[4, 5, 6]]]
    # The same ids in a shared pass (one announced companion makes them queue) give the same row.
    ticket = batcher.ticket()
    shared = [asyncio.create_task(batcher.submit(ids)) for ids in ([4, 5, 6], [1])]
    await asyncio.sleep(0)
    ticket.release()
    first, other = await asyncio.wait_for(asyncio.gather(*shared), 30)
    assert first.tolist() == alone.tolist() == [15, 3] and other.tolist() == [1, 1]
    assert model.batches[-1] == [[1], [4, 5, 6]]
    # Both paths report every pass with the seconds it took on the worker thread.
    assert [(n, tokens) for n, tokens, _ in passes] == [(1, 3), (2, 6)]
    assert all(seconds > 0 for *_, seconds in passes)
    await batcher.stop()


async def test_requests_arriving_during_a_lone_pass_share_the_next_one() -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=8, wait_ms=0)
    batcher.start()
    lone = asyncio.create_task(batcher.submit([1]))
    await _until(model.entered)
    assert not batcher.idle and batcher.pending == 1
    later = [asyncio.create_task(batcher.submit([i, i])) for i in range(2, 6)]
    await asyncio.sleep(0.05)  # the collector is awake by now and must be waiting for the running pass
    assert model.batches == [] and batcher.pending == 5
    model.gate.set()
    assert (await lone).tolist() == [1, 1]
    rows = await asyncio.wait_for(asyncio.gather(*later), 30)
    assert [r.tolist() for r in rows] == [[2 * i, 2] for i in range(2, 6)]
    assert model.batches == [[[1]], [[i, i] for i in range(2, 6)]]  # one pass for the four latecomers
    await batcher.stop()


async def _lone_pass_running_and_one_queued() -> tuple[
    GatedModel, MicroBatcher, asyncio.Task[np.ndarray], asyncio.Task[np.ndarray]
]:
    """A lone request's pass held on the model's gate, and a second request queued behind it."""
    model = GatedModel()
    batcher = MicroBatcher(model, wait_ms=0)
    batcher.start()
    lone = asyncio.create_task(batcher.submit([7]))
    await _until(model.entered)
    queued = asyncio.create_task(batcher.submit([8]))
    await asyncio.sleep(0)
    return model, batcher, lone, queued


async def test_stop_during_a_lone_pass_finishes_it_and_the_queue() -> None:
    model, batcher, lone, queued = await _lone_pass_running_and_one_queued()
    stopping = asyncio.create_task(batcher.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # still draining: a pass is running and one request waits
    with pytest.raises(DrainingError):
        await batcher.submit([9])
    model.gate.set()
    await asyncio.wait_for(stopping, 30)
    assert (await lone).tolist() == [7, 1] and (await queued).tolist() == [8, 1]


class ThreadRecordingModel(FakeModel):
    """Records, per pass, the worker thread and the intra-op thread count it had set; with a barrier,
    proves that the slices of one batch run at the same time."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.local = threading.local()
        self.passes: list[tuple[str, int, int]] = []  # (thread name, threads set, texts)
        self.barrier = threading.Barrier(parties, timeout=30)
        self.use_barrier = False

    def set_threads(self, n: int) -> None:
        self.local.threads = n

    def __call__(self, batch: list[list[int]]) -> np.ndarray:
        self.passes.append((threading.current_thread().name, getattr(self.local, "threads", 0), len(batch)))
        if self.use_barrier:
            self.barrier.wait()  # raises BrokenBarrierError unless the other slice is in a pass too
        return super().__call__(batch)


async def test_a_batch_runs_as_slices_side_by_side_with_a_share_of_the_threads() -> None:
    model = ThreadRecordingModel(parties=2)
    batcher = MicroBatcher(
        model, wait_ms=60_000, workers=2, threads=4, set_threads=model.set_threads, min_slice=3
    )
    batcher.start()
    # Alone: one pass with every thread.
    assert (await asyncio.wait_for(batcher.submit([5, 5]), 30)).tolist() == [10, 2]
    assert model.passes == [(model.passes[0][0], 4, 1)]
    # Six queued texts (an announced companion holds the batch open): two slices of three, at the same
    # time (the barrier), on two worker threads with two intra-op threads each, answers in order.
    model.passes.clear()
    model.use_barrier = True
    ticket = batcher.ticket()
    inputs = [[i] * i for i in range(1, 7)]
    tasks = [asyncio.create_task(batcher.submit(ids)) for ids in inputs]
    await asyncio.sleep(0)
    ticket.release()
    rows = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert [r.tolist() for r in rows] == [[i * i, i] for i in range(1, 7)]
    assert sorted((threads, n) for _, threads, n in model.passes) == [(2, 3), (2, 3)]
    assert len({name for name, _, _ in model.passes}) == 2
    # Two texts cannot make two slices of three: one pass with every thread again.
    model.passes.clear()
    model.use_barrier = False
    ticket = batcher.ticket()
    tasks = [asyncio.create_task(batcher.submit(ids)) for ids in ([1], [2, 2])]
    await asyncio.sleep(0)
    ticket.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert [(threads, n) for _, threads, n in model.passes] == [(4, 2)]
    # Other work on the forward workers (saliency) gets every thread too.
    assert await batcher.run_exclusive(lambda: model.local.threads) == 4
    await batcher.stop()


def test_worker_and_thread_counts_are_validated() -> None:
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(FakeModel(), workers=0)


async def test_a_failing_slice_fails_its_batch_only_after_every_slice_has_finished() -> None:
    """The forward lock must cover all the work on the workers: a batch whose first slice fails at once
    is not answered (nor the next batch started) while its other slice is still running."""
    entered, gate = threading.Event(), threading.Event()

    def model(batch: list[list[int]]) -> np.ndarray:
        if batch[0][0] == 1:  # the slice of the shortest texts fails at once
            raise RuntimeError("boom")
        entered.set()
        assert gate.wait(30), "gate never opened"
        return np.array([[sum(ids), len(ids)] for ids in batch], dtype=np.float32)

    batcher = MicroBatcher(model, wait_ms=60_000, workers=2, threads=2, min_slice=2)
    batcher.start()
    ticket = batcher.ticket()
    tasks = [asyncio.create_task(batcher.submit([i] * i)) for i in range(1, 5)]  # slices [1, 2] and [3, 4]
    await asyncio.sleep(0)
    ticket.release()
    await _until(entered)
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in tasks)  # the failed slice waits for its sibling
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    # Then each text again alone: only the one that fails alone ([1], its slice's first) fails.
    assert isinstance(results[0], RuntimeError)
    assert [r.tolist() for r in results[1:]] == [[4, 2], [9, 3], [16, 4]]  # type: ignore[union-attr]
    await batcher.stop()


async def test_a_text_that_fails_its_pass_fails_alone_not_its_companions() -> None:
    """One client's text that breaks the forward pass (a token id the model's table lacks) failed every
    request batched with it: the pass is retried text by text, and only what fails alone fails."""

    def model(batch: list[list[int]]) -> np.ndarray:
        if [666] in batch:
            raise IndexError("index out of range in self")
        return np.array([[sum(ids), len(ids)] for ids in batch], dtype=np.float32)

    calls: list[int] = []
    batcher = MicroBatcher(
        model, max_batch_size=8, wait_ms=60_000, on_batch=lambda n, _t, _s: calls.append(n)
    )
    batcher.start()
    ticket = batcher.ticket()  # hold the batch open until all three have queued
    tasks = [asyncio.create_task(batcher.submit(ids)) for ids in ([1], [666], [2])]
    await asyncio.sleep(0)
    ticket.release()
    first, poison, second = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert isinstance(poison, IndexError)
    assert first.tolist() == [1, 1] and second.tolist() == [2, 1]  # type: ignore[union-attr]
    assert calls == [1, 1]  # the two good texts' passes are counted; the failed ones are not
    # The batcher goes on: the next batch is answered in one pass.
    assert [r.tolist() for r in await batcher.submit_many([[3], [4]])] == [[3, 1], [4, 1]]
    assert calls[-1] == 2
    await batcher.stop()


async def test_a_failure_of_every_text_is_not_retried_text_by_text(caplog: pytest.LogCaptureFixture) -> None:
    """A pass that fails whatever it is given (a broken runtime, memory exhausted) cost a batch of n
    n + 1 failed passes and n + 1 tracebacks, all holding the forward lock. When the first two texts
    fail alone as the batch did, the rest fail without passes: one traceback and one retry line."""
    sizes: list[int] = []

    def model(batch: list[list[int]]) -> np.ndarray:
        sizes.append(len(batch))
        raise RuntimeError("bad allocation")

    batcher = MicroBatcher(model, max_batch_size=32, wait_ms=60_000)
    batcher.start()
    ticket = batcher.ticket()  # hold the batch open until all sixteen have queued
    tasks = [asyncio.create_task(batcher.submit([1, 2, 3 + i])) for i in range(16)]
    await asyncio.sleep(0)
    with caplog.at_level(logging.INFO, logger="inference_server.serving.batching"):
        ticket.release()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
    assert sizes == [16, 1, 1]
    records = [r for r in caplog.records if r.name == "inference_server.serving.batching"]
    assert len(records) == 2, [r.getMessage() for r in records]
    assert [r.exc_info is not None for r in records] == [True, False]  # the batch's traceback only
    assert "14 others failed without a pass" in records[1].getMessage()
    await batcher.stop()


async def test_a_retry_logs_one_line_without_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """A culprit's lone failure inside a retry is told in the retry's one line, not with a traceback
    of its own besides the batch's."""

    def model(batch: list[list[int]]) -> np.ndarray:
        if [666] in batch:
            raise IndexError("index out of range in self")
        return np.array([[sum(ids), len(ids)] for ids in batch], dtype=np.float32)

    batcher = MicroBatcher(model, max_batch_size=8, wait_ms=60_000)
    batcher.start()
    ticket = batcher.ticket()
    tasks = [asyncio.create_task(batcher.submit(ids)) for ids in ([666], [1], [2], [3])]
    await asyncio.sleep(0)
    with caplog.at_level(logging.INFO, logger="inference_server.serving.batching"):
        ticket.release()
        poison, *good = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert isinstance(poison, IndexError)
    assert [g.tolist() for g in good] == [[1, 1], [2, 1], [3, 1]]  # type: ignore[union-attr]
    records = [r for r in caplog.records if r.name == "inference_server.serving.batching"]
    assert [r.exc_info is not None for r in records] == [True, False], [r.getMessage() for r in records]
    assert "1 of 4 texts failed alone" in records[1].getMessage()
    await batcher.stop()


async def test_a_batch_waiting_on_an_exclusive_pass_runs_before_the_next_one() -> None:
    """/explain advances its passes one run_exclusive call at a time (runtime/saliency.py): a request
    that arrives during one pass is answered before the next pass, not after the whole explanation."""
    order: list[str] = []
    model = FakeModel()

    def forward(batch: list[list[int]]) -> np.ndarray:
        order.append("batch")
        return model(batch)

    entered, gate = threading.Event(), threading.Event()

    def first_pass() -> None:
        entered.set()
        assert gate.wait(30), "gate never opened"
        order.append("pass 1")

    batcher = MicroBatcher(forward, wait_ms=0)
    batcher.start()

    async def explanation() -> None:
        await batcher.run_exclusive(first_pass)
        await batcher.run_exclusive(lambda: order.append("pass 2"))

    explaining = asyncio.create_task(explanation())
    await _until(entered)
    request = asyncio.create_task(batcher.submit([1, 2]))
    await asyncio.sleep(0.05)  # the request is queued behind the pass in progress
    gate.set()
    await asyncio.wait_for(asyncio.gather(explaining, request), 30)
    assert order == ["pass 1", "batch", "pass 2"]
    await batcher.stop()


async def test_queued_batches_go_before_the_next_pass_of_every_explanation() -> None:
    """Two explanations in flight, two passes each: a request that arrives during the first pass is
    answered right after it, not behind one pass of each explanation (the forward lock in arrival
    order gave "pass A1", "pass B1", "batch"); the explanations then take turns."""
    order: list[str] = []
    model = FakeModel()

    def forward(batch: list[list[int]]) -> np.ndarray:
        order.append("batch")
        return model(batch)

    entered, gate = threading.Event(), threading.Event()

    def gated(name: str) -> None:
        entered.set()
        assert gate.wait(30), "gate never opened"
        order.append(name)

    batcher = MicroBatcher(forward, wait_ms=0)
    batcher.start()

    async def explanation(name: str, *, first: bool = False) -> None:
        if first:
            await batcher.run_exclusive(gated, f"pass {name}1")
        else:
            await batcher.run_exclusive(order.append, f"pass {name}1")
        await batcher.run_exclusive(order.append, f"pass {name}2")

    a = asyncio.create_task(explanation("A", first=True))
    await _until(entered)
    b = asyncio.create_task(explanation("B"))
    await asyncio.sleep(0.05)  # B waits for its turn
    assert not batcher.idle  # so a request goes through the collector, which serves it first
    request = asyncio.create_task(batcher.submit([1, 2]))
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wait_for(asyncio.gather(a, b, request), 30)
    assert order == ["pass A1", "batch", "pass B1", "pass A2", "pass B2"]
    await batcher.stop()


async def test_an_exclusive_caller_that_goes_away_gives_up_its_turn() -> None:
    """A cancelled /explain (client gone) leaves no turn behind that would hold the forward lock."""
    model = GatedModel()
    batcher = MicroBatcher(model, wait_ms=0)
    batcher.start()
    lone = asyncio.create_task(batcher.submit([1]))
    await _until(model.entered)
    waiting = asyncio.create_task(batcher.run_exclusive(lambda: "never"))
    await asyncio.sleep(0.05)
    waiting.cancel()
    model.gate.set()
    assert (await asyncio.wait_for(lone, 30)).tolist() == [1, 1]
    assert await asyncio.wait_for(batcher.run_exclusive(lambda: "saliency"), 30) == "saliency"
    assert (await asyncio.wait_for(batcher.submit([2]), 30)).tolist() == [2, 1]
    assert not batcher._forward_lock.locked()
    await batcher.stop()


async def test_abandon_answers_every_waiting_request_draining_and_runs_nothing_more() -> None:
    """Near the shutdown deadline every request still waiting on the batcher (a lone pass running, queued
    ones, an exclusive pass waiting for its turn) gets DrainingError (503 `draining`) at once, without
    waiting for the pass in progress; nothing more is computed for them."""
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=1, wait_ms=0)
    batcher.start()
    lone = asyncio.create_task(batcher.submit([1]))
    await _until(model.entered)
    queued = [asyncio.create_task(batcher.submit([i, i])) for i in (2, 3)]
    many = asyncio.create_task(batcher.submit_many([[4], [5, 5]]))
    exclusive = asyncio.create_task(batcher.run_exclusive(lambda: "saliency"))
    await asyncio.sleep(0.05)  # all of them waiting: the pass holds the forward lock
    # The lone request, two queued, the batch's two items, and the exclusive work waiting for its turn.
    assert batcher.abandon() == 1 + 2 + 2 + 1
    for task in (lone, *queued, many, exclusive):
        with pytest.raises(DrainingError):
            await asyncio.wait_for(task, 30)  # answered while the pass still runs
    assert not model.gate.is_set()
    with pytest.raises(DrainingError):
        await batcher.submit([6])
    model.gate.set()
    await asyncio.wait_for(batcher.stop(), 30)
    assert model.batches == [[[1]]]  # only the pass that was already running


async def test_a_planned_batch_whose_requests_are_all_gone_is_skipped() -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=1, wait_ms=0)
    batcher.start()
    ticket = batcher.ticket()  # an announced request: these queue, and form one plan of three batches
    first, *later = [asyncio.create_task(batcher.submit([i] * i)) for i in (1, 2, 3)]
    await _until(model.entered)  # the plan's first batch is running
    for task in later:  # their clients go away while it runs
        task.cancel()
    model.gate.set()
    assert (await asyncio.wait_for(first, 30)).tolist() == [1, 1]
    ticket.release()
    await asyncio.wait_for(batcher.stop(), 30)
    assert model.batches == [[[1]]]  # no pass for the cancelled ones


async def test_stop_past_its_timeout_answers_the_waiting_and_leaves_the_running_pass() -> None:
    """stop's timeout is what is left of the shutdown grace: once it is spent, whoever still waits gets
    DrainingError, and stop returns without blocking the event loop on the pass in progress, which
    ``wait_for_workers`` (used by sentiment-server before it exits) reports until it ends."""
    model, batcher, lone, queued = await _lone_pass_running_and_one_queued()
    await asyncio.wait_for(batcher.stop(timeout_s=0.05), 30)
    assert not model.gate.is_set()
    for task in (lone, queued):
        with pytest.raises(DrainingError):
            await asyncio.wait_for(task, 30)
    assert not batcher.wait_for_workers(0.0)  # the pass is still running on its worker
    model.gate.set()
    assert await asyncio.to_thread(batcher.wait_for_workers, 30)
    assert model.batches == [[[7]]]


async def test_work_that_can_no_longer_start_is_draining_not_a_cancellation() -> None:
    """Once the workers are shut down, exclusive work (and a lone pass) is refused with DrainingError
    (503 `draining`): a RuntimeError or a CancelledError out of the request would be the bare 500."""
    batcher = MicroBatcher(FakeModel(), wait_ms=0)
    batcher.start()
    batcher._executor.shutdown(wait=True)  # as stop() leaves it
    with pytest.raises(DrainingError):
        await batcher.run_exclusive(lambda: "saliency")
    with pytest.raises(DrainingError):
        await batcher.submit([1])  # idle: the lone path
    assert not batcher._forward_lock.locked()  # released on the way out
    # Work queued on the workers and cancelled before it started becomes DrainingError too.
    loop = asyncio.get_running_loop()
    never_started: asyncio.Future[int] = loop.create_future()
    await batcher._forward_lock.acquire()
    waiter = batcher._relay(never_started)
    never_started.cancel()
    with pytest.raises(DrainingError):
        await waiter
    assert not batcher._forward_lock.locked()
    await batcher.stop()


async def test_an_explanation_under_sustained_load_gets_every_other_turn() -> None:
    """Requests arriving while every batch runs keep the queue from ever being empty: exclusive work
    that went only when nothing was queued waited forever (holding one of /explain's few slots). Now it
    goes after one round of batches, and batches and passes alternate."""
    order: list[str] = []
    model = FakeModel()
    loop = asyncio.get_running_loop()
    answered: list[asyncio.Task[np.ndarray]] = []
    loading = True

    def arrive() -> None:
        answered.append(asyncio.ensure_future(batcher.submit([1, 2])))

    def forward(batch: list[list[int]]) -> np.ndarray:
        order.append("batch")
        if loading:  # the next request arrives while this batch runs, every time: sustained load
            loop.call_soon_threadsafe(arrive)
        return model(batch)

    batcher = MicroBatcher(forward, wait_ms=0)
    batcher.start()
    arrive()
    while order.count("batch") < 3:
        await asyncio.sleep(0.001)
    for n in range(3):
        await asyncio.wait_for(batcher.run_exclusive(order.append, f"pass {n}"), 20)
    loading = False
    await asyncio.wait_for(asyncio.gather(*answered), 30)
    passes = [i for i, step in enumerate(order) if step.startswith("pass")]
    assert len(passes) == 3 and all(order[i + 1] == "batch" for i in passes[:-1])  # a batch between passes
    await batcher.stop()


async def test_a_caller_cancelled_just_after_its_turn_was_handed_releases_the_lock() -> None:
    """The hand-over and the cancellation can cross: the turn's future has its result, the caller's
    task is cancelled before it resumes. Whoever was handed the lock must give it back, or every later
    batch would wait on it forever. (No collector here: the test hands the turn itself.)"""
    batcher = MicroBatcher(FakeModel(), wait_ms=0)
    caller = asyncio.create_task(batcher.run_exclusive(lambda: None))
    while not batcher._turns:
        await asyncio.sleep(0)
    await batcher._forward_lock.acquire()  # as the collector holds it when it hands a turn
    assert batcher._hand_turn()
    caller.cancel()  # before the caller has resumed from its turn
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not batcher._forward_lock.locked()
