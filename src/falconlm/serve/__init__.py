"""Serving: an OpenAI-compatible HTTP server with continuous batching (`falconlm serve`)."""
