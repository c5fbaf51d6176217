"""/metrics: the engine's state and latencies in the Prometheus text format (prometheus_client).

Latencies are observed by the engine thread as tokens are picked (`first_token`, `token_gap`) and steps end (`step`);
everything else (queue, running sequences, KV blocks, prefix hits, token counts) is read from the
engine when the endpoint is scraped, so nothing is counted twice or goes stale.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
STEP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
RATE_WINDOW_S = 10.0


class ServerMetrics:
    """The engine's observer and the /metrics registry of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ttft = Histogram("falconlm_time_to_first_token_seconds", "Time from a request's arrival to its first generated token.", buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("falconlm_inter_token_latency_seconds", "Time between consecutive generated tokens of one sequence.", buckets=ITL_BUCKETS, registry=self.registry)
        self.steps = Histogram(
            "falconlm_engine_step_seconds", "Time of one engine step (a packed forward pass and the picks), by whether it prefilled any prompt tokens.",
            ["kind"], buckets=STEP_BUCKETS, registry=self.registry,
        )
        self._recent: deque[float] = deque()  # times of the tokens picked in the last RATE_WINDOW_S
        self._lock = threading.Lock()
        self.engine: Any = None

    def attach(self, engine: Any) -> None:
        """Read this engine's state on every scrape."""
        self.engine = engine
        self.registry.register(_EngineCollector(self))

    # ----- called by the engine thread -----
    def first_token(self, seconds: float) -> None:
        """A sequence's first token, `seconds` after it arrived."""
        self.ttft.observe(seconds)
        self._count()

    def token_gap(self, seconds: float) -> None:
        """A later token, `seconds` after the previous one of the same sequence."""
        self.itl.observe(seconds)
        self._count()

    def step(self, seconds: float, prefill: bool) -> None:
        """One engine step took `seconds`; `prefill`: it computed prompt tokens, not only one token per decoding row."""
        self.steps.labels(kind="prefill" if prefill else "decode").observe(seconds)

    def _count(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent.append(now)
            while self._recent and self._recent[0] < now - RATE_WINDOW_S:
                self._recent.popleft()

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last RATE_WINDOW_S seconds."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            return len(self._recent) / RATE_WINDOW_S

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _EngineCollector:
    """Gauges and counters read from the engine at scrape time."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def collect(self) -> Any:
        engine = self.metrics.engine
        load, stats = engine.load(), dict(engine.stats)
        gauges = {
            "falconlm_requests_running": ("Sequences admitted and computing.", load["active"]),
            "falconlm_requests_waiting": ("Sequences waiting for admission.", load["waiting"]),
            "falconlm_kv_blocks_total": ("Blocks in the paged KV pool.", load["kv_blocks_total"]),
            "falconlm_kv_blocks_used": ("KV blocks held by running sequences.", load["kv_blocks_total"] - load["kv_blocks_free"]),
            "falconlm_kv_blocks_free": ("KV blocks free to allocate (cached prefix blocks included).", load["kv_blocks_free"]),
            "falconlm_kv_blocks_cached": ("Free KV blocks still holding a cached prefix.", load["kv_blocks_cached"]),
            "falconlm_prefix_cache_hit_rate": ("Share of admitted prompt tokens read from the prefix cache.", engine.prefix_hit_rate),
            "falconlm_generation_tokens_per_second": (f"Generated tokens per second over the last {RATE_WINDOW_S:g} s.", self.metrics.tokens_per_second()),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        counters = {
            "falconlm_prompt_tokens": ("Prompt tokens of admitted requests.", stats["prompt_tokens"]),
            "falconlm_prefix_cache_hit_tokens": ("Prompt tokens whose keys and values came from the prefix cache.", stats["cached_tokens"]),
            "falconlm_computed_tokens": ("Tokens run through the model (prefill chunks and decode steps).", stats["computed_tokens"]),
            "falconlm_generation_tokens": ("Tokens generated.", stats["generated_tokens"]),
            "falconlm_requests_finished": ("Sequences that finished (stop or length).", stats["finished"]),
            "falconlm_requests_cancelled": ("Sequences cancelled (client gone).", stats["cancelled"]),
            "falconlm_preemptions": ("Sequences preempted for KV blocks (recomputed later).", stats["preempted"]),
            "falconlm_engine_steps": ("Engine steps (packed forward passes).", stats["steps"]),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
