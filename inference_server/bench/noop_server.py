"""A no-op HTTP/1.1 responder on loopback: every request is answered ``200 {}`` at once.

    python -m inference_server.bench.noop_server PORT

The harness drives it with its own load generator at concurrency 1 to measure the client's floor — what
a request costs with no server work at all — so the c=1 overhead target can charge the server with
everything else a caller waits for (server_bench.measure_loadgen_floor). Raw asyncio streams, not
uvicorn: uvicorn's read, parse and dispatch are the server's cost, and must not be subtracted with the
client's.
"""

from __future__ import annotations

import asyncio
import sys

HOST = "127.0.0.1"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def content_length(head: bytes) -> int:
    """The Content-Length of a request head (0 when it has none)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive: one answer per request on the connection until the client closes it."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(content_length(head))
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(_answer, HOST, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m inference_server.bench.noop_server PORT", file=sys.stderr)
        return 2
    asyncio.run(serve(int(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
