"""What a failover member knows right now, as a :class:`~.failover.View`
(:func:`build_view`), read from its running worker and its arbiter link."""

from __future__ import annotations

from mirrorkit.agent.arbiter.link import ArbiterLink
from mirrorkit.agent.ha.failover import View
from mirrorkit.agent.stream.receiver import ReceiverMirror
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.util import clock

__all__ = ["arbiter_link", "build_view"]


def arbiter_link(worker: MirrorWorker) -> ArbiterLink | None:
    return next((c for c in worker.companions if isinstance(c, ArbiterLink)), None)


def build_view(worker: MirrorWorker, maintenance: bool) -> View:
    cfg, roles = worker.cfg, worker.roles
    t = cfg.timeouts
    partner = next((n for n in cfg.failover_names if n != worker.host), None)
    link = arbiter_link(worker)
    base = dict(member=worker.host, role=roles.role, term=roles.term, heartbeat=t.heartbeat,
                qos=t.qos, arbiter_timeout=t.arbiter, mode=cfg.mode,
                max_lag=cfg.max_lag_on_failover, maintenance=maintenance,
                arbiter=cfg.arbiter_name, partner=partner,
                arbiter_connected=link is not None and link.connected)
    if isinstance(worker, PrimaryMirror):
        lease = roles.lease
        pair = worker.backup_peer()
        return View(**base, writable=roles.writable,  # type: ignore[arg-type]
                    lease_remaining=None if lease is None else round(lease.remaining(), 3),
                    lease_ever=lease is None or lease.expires_at() is not None or lease.waived,
                    partner_connected=pair is not None and pair[1].connected,
                    draining=roles.draining)
    if isinstance(worker, ReceiverMirror):
        answer = link.answer if link is not None else None
        return View(**base,  # type: ignore[arg-type]
                    primary=roles.primary, primary_silence=worker.primary_silence(),
                    ever_connected=worker.primary_known, lag_bytes=worker.known_lag_bytes(),
                    resyncing=worker.resyncing, apply_failed=worker.failure is not None,
                    mount_unchecked=worker.mount_rejoin is not None
                    and not worker.mount_rejoin.done,
                    primary_sync_acked=worker.primary_sync_acked,
                    received_lsn=log.last_lsn
                    if (log := getattr(worker, "log", None)) is not None else 0,
                    arbiter_sees=answer[0] or None if answer else None,
                    arbiter_primary_silence=answer[1] if answer else None,
                    arbiter_answer_age=clock.now() - answer[2] if answer else None,
                    arbiter_backup_out=link.backup_out[0] if answer and link else 0,
                    arbiter_backup_out_lsn=link.backup_out[1] if answer and link else 0,
                    arbiter_knows_promotable=link is not None
                    and link.answer_knows_promotable())
    return View(**base)  # type: ignore[arg-type]
