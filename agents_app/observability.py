"""Prometheus metrics, health endpoints and the request id that follows an ask through every process.

Each Daphne process exports its own series at ``/metrics`` (Prometheus scrapes
every process, see ``deploy/prometheus.yml``). What lives elsewhere is read at
scrape time: the inference workers put their numbers (queue depth, tokens per
second, requests served) into their heartbeat, which every web process reads;
training runs and frozen NPCs are counted in the database. So a worker or a
Celery process needs no HTTP port of its own.

The request id: the gateway names every ask (``request_id``, sent to the worker
in the request), and both processes log it on every line about that ask; an HTTP
request gets one from ``X-Request-ID`` or a fresh one, echoed in the response.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from agents_app.models import Persona

log = logging.getLogger("voyager.observability")

# --- the request id -------------------------------------------------------------------------------

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("voyager_request_id", default="-")


@contextlib.contextmanager
def request_context(request_id: str | None):
    token = request_id_var.set(request_id or "-")
    try:
        yield
    finally:
        request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` on every record: the one the code logged with (``extra=``) or the current one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, request id, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


JsonFormatter.converter = time.gmtime


class RequestIdMiddleware:
    """Give every HTTP request an id (the proxy's ``X-Request-ID`` if it sent a sane one)."""

    header = "HTTP_X_REQUEST_ID"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = request.META.get(self.header, "")
        rid = given if 0 < len(given) <= 64 and given.replace("-", "").isalnum() else uuid.uuid4().hex
        request.request_id = rid
        with request_context(rid):
            response = self.get_response(request)
        response["X-Request-ID"] = rid
        return response


# --- the series -------------------------------------------------------------------------------------

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

ASKS = Counter("voyager_asks", "Asks answered by the gateway, by outcome (reply or the error code).", ["outcome"])
TTFT = Histogram(
    "voyager_time_to_first_token_seconds",
    "Seconds from an ask to its first streamed text, per persona (private ones under one label).",
    ["persona"],
    buckets=_LATENCY_BUCKETS,
)
REPLY_TIME = Histogram(
    "voyager_reply_seconds",
    "Seconds from an ask to its stored reply, per persona (private ones under one label).",
    ["persona"],
    buckets=_LATENCY_BUCKETS,
)
TOKENS_PER_SECOND = Histogram(
    "voyager_reply_tokens_per_second",
    "Completion tokens per second of each reply, per persona (private ones under one label).",
    ["persona"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
COMPLETION_TOKENS = Counter(
    "voyager_completion_tokens",
    "Completion tokens streamed to players, per persona (private ones under one label).",
    ["persona"],
)
CONNECTIONS = Gauge("voyager_game_server_connections", "Game servers connected to this process's gateway.")
POLICY_HITS = Counter("voyager_policy_hits", "Policy rule hits on replies, by rule and severity.", ["rule", "severity"])


# The persona label of every private persona: /metrics names none of them, and no slug starts with '_'.
PRIVATE_PERSONA_LABEL = "_private"


def persona_label(persona: Persona) -> str:
    """A public persona's slug, or the one label all private personas share (bounded, and secret)."""
    return persona.slug if persona.is_public else PRIVATE_PERSONA_LABEL


def observe_reply(*, persona: Persona, ttft_s: float | None, total_s: float, completion_tokens: int) -> None:
    persona = persona_label(persona)
    ASKS.labels(outcome="reply").inc()
    if ttft_s is not None:
        TTFT.labels(persona=persona).observe(ttft_s)
    REPLY_TIME.labels(persona=persona).observe(total_s)
    if completion_tokens:
        COMPLETION_TOKENS.labels(persona=persona).inc(completion_tokens)
        if total_s > 0:
            TOKENS_PER_SECOND.labels(persona=persona).observe(completion_tokens / total_s)


class PlatformCollector:
    """Series read at scrape time from the heartbeats (workers) and the database (training, NPCs)."""

    def describe(self):
        return []  # no fixed description: collected fresh at every scrape

    def collect(self):
        from inference.heartbeat import heartbeats

        try:
            workers = heartbeats().snapshot()
        except Exception:  # Redis down: say so with the series, not with a failed scrape
            log.exception("could not read the worker heartbeats")
            workers = None
        alive = GaugeMetricFamily("voyager_inference_workers_alive", "Inference workers with a fresh heartbeat.")
        alive.add_metric([], float(len(workers)) if workers is not None else float("nan"))
        yield alive
        depth = GaugeMetricFamily(
            "voyager_inference_queue_depth", "Requests waiting in each worker's queue.", labels=["worker"]
        )
        running = GaugeMetricFamily(
            "voyager_inference_running", "Requests each worker is answering.", labels=["worker"]
        )
        tps = GaugeMetricFamily(
            "voyager_worker_tokens_per_second", "Tokens each worker generated per second, lately.", labels=["worker"]
        )
        served = GaugeMetricFamily(
            "voyager_worker_requests_served", "Requests each worker has answered since it started.", labels=["worker"]
        )
        cache_hits = CounterMetricFamily(
            "voyager_prompt_cache_hits",
            "Prompts whose leading tokens each worker's prompt cache already held.",
            labels=["worker"],
        )
        cache_saved = CounterMetricFamily(
            "voyager_prompt_cache_tokens_saved",
            "Prompt tokens each worker did not prefill again, thanks to its prompt cache.",
            labels=["worker"],
        )
        cache_bytes = GaugeMetricFamily(
            "voyager_prompt_cache_bytes", "Memory each worker's prompt cache holds.", labels=["worker"]
        )
        for worker, stats in sorted((workers or {}).items()):
            depth.add_metric([worker], float(stats.get("queue_depth", 0)))
            running.add_metric([worker], float(stats.get("running", 0)))
            tps.add_metric([worker], float(stats.get("tokens_per_second", 0.0)))
            served.add_metric([worker], float(stats.get("served", 0)))
            cache_hits.add_metric([worker], float(stats.get("prompt_cache_hits", 0)))
            cache_saved.add_metric([worker], float(stats.get("prompt_cache_tokens_saved", 0)))
            cache_bytes.add_metric([worker], float(stats.get("prompt_cache_bytes", 0)))
        total_depth = GaugeMetricFamily(
            "voyager_inference_queue_depth_total", "Requests waiting in every worker's queue together."
        )
        total_depth.add_metric([], float(sum(s.get("queue_depth", 0) for s in (workers or {}).values())))
        yield from (depth, running, tps, served, cache_hits, cache_saved, cache_bytes, total_depth)
        yield from self._database()

    def _database(self):
        from django.db import DatabaseError
        from django.db.models import Count
        from django.utils import timezone

        from agents_app.models import Npc, PolicyFlag, TrainingRun

        try:
            runs = dict(TrainingRun.objects.values_list("status").annotate(n=Count("id")).order_by())
            frozen = Npc.objects.filter(frozen_until__gt=timezone.now()).count()
            open_flags = PolicyFlag.objects.filter(status=PolicyFlag.Status.OPEN).count()
        except DatabaseError:
            log.exception("could not count training runs")
            return
        family = GaugeMetricFamily("voyager_training_runs", "Training runs by outcome.", labels=["outcome"])
        for status in TrainingRun.Status.values:
            family.add_metric([status], float(runs.get(status, 0)))
        yield family
        yield GaugeMetricFamily("voyager_npcs_frozen", "NPCs frozen now (by the policy or a moderator).", value=frozen)
        yield GaugeMetricFamily("voyager_policy_flags_open", "Policy flags waiting for a moderator.", value=open_flags)


_collector_registered = False


def register_collector() -> None:
    global _collector_registered
    if not _collector_registered:
        REGISTRY.register(PlatformCollector())
        _collector_registered = True
