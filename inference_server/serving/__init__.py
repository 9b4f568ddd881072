"""Serving mechanics: input checks, micro-batching, rate limits, request memory, draining."""
