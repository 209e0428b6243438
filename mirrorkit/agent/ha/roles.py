"""Which worker runs a mirror on this host, chosen from its runtime role, and
the steps a member takes before it becomes writable (:func:`before_writable`)."""

from __future__ import annotations

from mirrorkit.agent.apply.held_modes import restore_held
from mirrorkit.agent.arbiter.link import ArbiterLink
from mirrorkit.agent.arbiter.witness import ArbiterMirror
from mirrorkit.agent.config import AgentConfig, MirrorConfig
from mirrorkit.agent.state import RoleOwner
from mirrorkit.agent.stream.receiver import ReceiverMirror
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.agent.stream.worker import MirrorWorker

__all__ = ["before_writable", "create_worker"]


def before_writable(agent: AgentConfig, mirror: MirrorConfig) -> None:
    """What a member does, durably, before it acts as ``mirror``'s primary
    (a promotion, a switchover, a start as primary), in a worker thread:
    give its files back the setuid/setgid bits it held back as a non-primary
    member (docs/architecture.md, "Replica privilege"). Idempotent, so a
    crash in the middle repeats it at the next start as primary. Automatic
    failover promotes through here too (``create_worker``)."""
    restore_held(agent.mirror_dir(mirror.name), list(mirror.targets))


def create_worker(agent: AgentConfig, mirror: MirrorConfig, roles: RoleOwner) -> MirrorWorker:
    """The worker for ``roles``' current role (not started; its ``open()``
    reads the mirror log). A receiver reads ``applied.json`` here, so call
    this from a worker thread."""
    role = roles.role
    worker: MirrorWorker
    if role == "arbiter":
        return ArbiterMirror(agent, mirror, roles)
    if role == "primary":
        before_writable(agent, mirror)  # before its capture and /primary start
        worker = PrimaryMirror(agent, mirror, roles)
    else:
        worker = ReceiverMirror(agent, mirror, roles)
    arbiter = worker.arbiter_member()
    if arbiter is not None and role in ("primary", "backup"):
        worker.companions.append(ArbiterLink(worker, arbiter))
    return worker
