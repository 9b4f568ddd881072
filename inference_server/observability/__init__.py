"""Metrics, spans and logs of the data plane (names from inference_server.contract)."""
