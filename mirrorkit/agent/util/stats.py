"""The agent's own instruments: histograms and counters (``prometheus_client``).

One :class:`AgentMetrics` per agent holds every instrument, registered to
that agent's own ``CollectorRegistry`` (never the library's global one, so
two agents in one process, or two tests, never share a series). The API's
``/metrics`` renders that registry together with the gauges it derives from
``/status`` at scrape time (:mod:`mirrorkit.agent.api.metrics`).

Each mirror worker gets a :class:`MirrorMetrics` (``AgentMetrics.mirror``):
the calls the log, the stream, apply and resync make where the values are
produced. Every call is thread-safe (prometheus_client's instruments lock
per value) and cheap (the label children of the worker's own series are
looked up once), so the log's writer thread and apply's thread call it
directly.

Labels follow the status gauges: ``mirror``, and ``member`` = whose value it
is (this host for its own, the peer's name for per-peer values, e.g. the
records a primary sent to ``node2``).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["AgentMetrics", "MirrorMetrics"]

# Seconds. Apply: one batch into the replica up to its durability point.
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0)
# One fdatasync of the mirror log (SSD: well under 1 ms; a saturated disk: seconds).
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5)
# How late the event loop's probe woke up (goal: p99 <= 20 ms, max <= 100 ms).
STALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_OWN = ("mirror", "member")


class AgentMetrics:
    """Every instrument of one agent, in its own registry."""

    def __init__(self, host: str, registry: CollectorRegistry | None = None) -> None:
        self.host = host
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.apply_seconds = Histogram(
            "mirrorkit_apply_seconds", "Receiver: seconds to apply one batch of records into "
            "the replica and make it durable (durability point and applied.json included).",
            _OWN, buckets=APPLY_BUCKETS, registry=r)
        self.log_fsync_seconds = Histogram(
            "mirrorkit_log_fsync_seconds", "Seconds of one fdatasync of the mirror log "
            "(one per appended batch, primary and receivers).",
            _OWN, buckets=FSYNC_BUCKETS, registry=r)
        self.loop_stall_seconds = Histogram(
            "mirrorkit_loop_stall_seconds", "How late the agent's event loop probe woke up "
            "(scheduled versus actual, every 50 ms): time the loop could not serve anything.",
            ("member",), buckets=STALL_BUCKETS, registry=r)
        self.log_records = Counter(
            "mirrorkit_log_records", "Records appended to this member's mirror log.",
            _OWN, registry=r)
        self.log_bytes = Counter(
            "mirrorkit_log_bytes", "Encoded bytes appended to this member's mirror log.",
            _OWN, registry=r)
        self.sent_records = Counter(
            "mirrorkit_sent_records", "Primary: log records streamed to that member.",
            _OWN, registry=r)
        self.sent_bytes = Counter(
            "mirrorkit_sent_bytes", "Primary: log bytes streamed to that member.",
            _OWN, registry=r)
        self.applied_records = Counter(
            "mirrorkit_applied_records", "Receiver: records applied into the replica "
            "(resync records included).", _OWN, registry=r)
        self.resyncs = Counter(
            "mirrorkit_resyncs", "Resyncs of that member that ended, by result (done|failed).",
            (*_OWN, "result"), registry=r)
        self.refused_records = Counter(
            "mirrorkit_refused_records", "Receiver: records refused by apply (unsafe path).",
            _OWN, registry=r)
        self.quarantined_files = Counter(
            "mirrorkit_quarantined_files", "Files moved into quarantine, by reason (orphan, "
            "replaced: by a resync; torn_tail: the log's torn tail on open; diverged: "
            "a divergent tail's files).",
            (*_OWN, "reason"), registry=r)
        self._mirrors: dict[str, MirrorMetrics] = {}

    def mirror(self, name: str) -> MirrorMetrics:
        """The instruments of mirror ``name`` (the same object every time, so a
        worker that replaces another keeps counting the same series)."""
        if name not in self._mirrors:
            self._mirrors[name] = MirrorMetrics(self, name)
        return self._mirrors[name]

    def loop_stall(self) -> Any:
        """The loop-stall histogram's child for this host (``.observe(seconds)``)."""
        return self.loop_stall_seconds.labels(self.host)


class MirrorMetrics:
    """One mirror's instruments on this host; also the log's ``LogStats``."""

    def __init__(self, agent: AgentMetrics, mirror: str) -> None:
        self.agent = agent
        self.mirror = mirror
        own = (mirror, agent.host)
        self._apply = agent.apply_seconds.labels(*own)
        self._fsync = agent.log_fsync_seconds.labels(*own)
        self._log_records = agent.log_records.labels(*own)
        self._log_bytes = agent.log_bytes.labels(*own)
        self._applied = agent.applied_records.labels(*own)
        self._refused = agent.refused_records.labels(*own)

    # -- the mirror log (log.segments.LogStats) --------------------------------
    def log_fsync(self, seconds: float) -> None:
        self._fsync.observe(seconds)

    def log_appended(self, records: int, nbytes: int) -> None:
        self._log_records.inc(records)
        self._log_bytes.inc(nbytes)

    def quarantined(self, reason: str, files: int = 1) -> None:
        if files:
            self.agent.quarantined_files.labels(self.mirror, self.agent.host, reason).inc(files)

    # -- receivers -------------------------------------------------------------
    def applied(self, records: int, seconds: float | None = None) -> None:
        """``records`` applied; ``seconds``: the batch's apply latency, if timed."""
        self._applied.inc(records)
        if seconds is not None:
            self._apply.observe(seconds)

    def refused(self, records: int) -> None:
        if records:
            self._refused.inc(records)

    # -- primary ---------------------------------------------------------------
    def sent(self, member: str, records: int, nbytes: int) -> None:
        self.agent.sent_records.labels(self.mirror, member).inc(records)
        self.agent.sent_bytes.labels(self.mirror, member).inc(nbytes)

    def resync(self, member: str, result: str) -> None:
        """A resync of ``member`` ended: ``done`` or ``failed``."""
        self.agent.resyncs.labels(self.mirror, member, result).inc()
