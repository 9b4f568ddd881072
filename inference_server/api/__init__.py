"""HTTP API: routers by concern (health, inference, explain, feedback, metrics), schemas, errors."""
