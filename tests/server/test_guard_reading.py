"""The guard refuses a chunked body (no Content-Length) the moment it passes the limit, without reading
the rest: starlette's TestClient hands the app a streamed body as one message, so the HTTP-level test
cannot tell "refused while counting" from "read whole, then refused". Driven here over raw ASGI."""

from __future__ import annotations

import json

from starlette.types import Message, Receive, Scope, Send

from inference_server import contract as c
from inference_server.serving.limits import PathPolicy, RequestGuard
from inference_server.serving.ratelimit import RateLimiter


async def test_a_chunked_body_over_the_limit_is_refused_after_a_few_reads() -> None:
    limit, chunk, offered = 4096, 1024, 1000  # a 1000 KiB body against a 4 KiB limit
    reads = 0

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"a" * chunk, "more_body": reads < offered}

    reached: list[Scope] = []

    async def endpoint(scope: Scope, _receive: Receive, _send: Send) -> None:
        reached.append(scope)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    guard = RequestGuard(endpoint, policies={c.Path.INFER: PathPolicy(RateLimiter(0), limit)})
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": c.Path.INFER,
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
    }
    await guard(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["error"]["code"] == "payload_too_large" and body["error"]["field"] == "body"
    assert reached == []
    # The limit is passed on the 5th chunk: refusing then reads 5, never the 995 still offered.
    assert reads <= limit // chunk + 1, f"read {reads} of {offered} chunks before refusing"
