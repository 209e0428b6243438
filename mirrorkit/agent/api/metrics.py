"""``/metrics``: Prometheus text (format 0.0.4) from ``prometheus_client``.

Two sources, one registry per agent (or per API server), never the
library's global one:

* :class:`StatusCollector` yields gauges derived from the ``/status`` dict
  at scrape time (LSNs, terms, lags, flags, roles, the loop stall's last and
  window-max);
* the agent's instruments (:mod:`mirrorkit.agent.util.stats`: histograms of
  apply latency, log fsync time and loop stall; counters of records, bytes,
  resyncs, refused records and quarantined files) are registered to the same
  registry by :class:`~mirrorkit.agent.util.stats.AgentMetrics`.

Every gauge carries ``mirror`` and ``member`` labels (``mirrorkit_up`` and
the loop-stall gauges only ``member``). ``member`` is this host for its own
values; for per-peer values (``peer_connected`` and the ``lag_*`` a primary
reports for each receiver) it is the peer's name, so
``mirrorkit_lag_seconds{member="node2"}`` means "node2's lag" whichever
member reported it. A value missing from the status (or not a number)
yields no sample rather than a made-up 0. The library writes labels sorted
by name (``{member="node2",mirror="records"}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ROLES", "StatusCollector", "metrics_text", "render_metrics"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
ROLES = ("primary", "backup", "async", "arbiter")

# name, status key, help; all gauges (LSNs and terms restart with a rebuilt
# member, so they are not Prometheus counters).
_OWN = (
    ("mirrorkit_term", "term", "Mirror term (one more per promotion) as this member knows it."),
    ("mirrorkit_lsn", "lsn", "Last log sequence number written (primary) or received (receiver)."),
    ("mirrorkit_applied_lsn", "applied_lsn", "Last log sequence number durably applied."),
)
_LAG = (
    ("mirrorkit_lag_bytes", "lag_bytes", "Bytes of mirror log the member is behind the primary."),
    ("mirrorkit_lag_records", "lag_records", "Records the member is behind the primary."),
    ("mirrorkit_lag_seconds", "lag_seconds", "Seconds the member is behind the primary."),
)
_FLAGS = (
    ("mirrorkit_fenced", "fenced", "1 when this member is fenced (writes refused)."),
    ("mirrorkit_active", "active", "1 when this member is an active (promotable) backup."),
)
_STALL = (
    ("mirrorkit_loop_stall_last_seconds", "last_ms",
     "How late the event loop probe woke up the last time."),
    ("mirrorkit_loop_stall_max_seconds", "max_ms",
     "The longest event loop stall in the recent window (loop_stall.window_seconds)."),
)
_LABELS = ("mirror", "member")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


class _Families:
    """Gauge families in first-use order; samples added as they come."""

    def __init__(self) -> None:
        self.fams: dict[str, GaugeMetricFamily] = {}

    def add(self, name: str, help_text: str, labels: dict[str, str], value: Any) -> None:
        number = _number(value)
        if number is None:
            return
        fam = self.fams.get(name)
        if fam is None:
            fam = self.fams[name] = GaugeMetricFamily(name, help_text, labels=list(labels))
        fam.add_metric(list(labels.values()), number)


def status_families(status: Mapping[str, Any]) -> list[Metric]:
    """The gauges of a ``/status`` dict (see docs/architecture.md)."""
    host = str(status.get("host", ""))
    mirrors = status.get("mirrors")
    out = _Families()
    out.add("mirrorkit_up", "1 while the agent answers.", {"member": host}, 1)
    stall = status.get("loop_stall")
    if isinstance(stall, Mapping):
        for name, key, help_text in _STALL:
            ms = _number(stall.get(key))
            out.add(name, help_text, {"member": host}, None if ms is None else ms / 1000.0)
    for mirror, m in sorted((mirrors or {}).items()) if isinstance(mirrors, Mapping) else ():
        if not isinstance(m, Mapping):
            continue
        own = {"mirror": str(mirror), "member": host}
        for name, key, help_text in _OWN + _LAG + _FLAGS:
            out.add(name, help_text, own, m.get(key))
        role = m.get("role")
        for candidate in ROLES:
            out.add("mirrorkit_role", "1 for this member's current role in the mirror, else 0.",
                    {**own, "role": candidate}, 1 if role == candidate else 0)
        peers = m.get("peers")
        if not isinstance(peers, Mapping):
            continue
        for peer, p in sorted(peers.items()):
            if not isinstance(p, Mapping) or str(peer) == host:
                continue
            labels = {"mirror": str(mirror), "member": str(peer)}
            out.add("mirrorkit_peer_connected", "1 when this member is connected to that peer.",
                    labels, p.get("connected"))
            for name, key, help_text in _LAG:
                out.add(name, help_text, labels, p.get(key))
    return list(out.fams.values())


class StatusCollector(Collector):
    """A custom collector: the status gauges, built from ``status()`` at
    every scrape (nothing is stored between scrapes)."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        yield from status_families(self.status())


class _WithoutCreated(Collector):
    """A registry's metrics without the ``*_created`` samples the library adds
    to counters and histograms (process-start timestamps, noise in the 0.0.4
    text format); done here rather than with the library's process-wide
    ``disable_created_metrics()``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            created = metric.name + "_created"
            metric.samples = [s for s in metric.samples if s.name != created]
            yield metric


def metrics_text(registry: CollectorRegistry) -> bytes:
    """The ``/metrics`` body of ``registry``."""
    return generate_latest(_WithoutCreated(registry))


def render_metrics(status: Mapping[str, Any]) -> str:
    """The ``/metrics`` body for a ``/status`` dict alone (no instruments)."""
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: status))
    return metrics_text(registry).decode()
