"""Which worker runs a mirror on this host, chosen from its runtime role."""

from __future__ import annotations

from mirrorkit.agent.arbiter.link import ArbiterLink
from mirrorkit.agent.arbiter.witness import ArbiterMirror
from mirrorkit.agent.config import AgentConfig, MirrorConfig
from mirrorkit.agent.state import RoleOwner
from mirrorkit.agent.stream.receiver import ReceiverMirror
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.agent.stream.worker import MirrorWorker

__all__ = ["create_worker"]


def create_worker(agent: AgentConfig, mirror: MirrorConfig, roles: RoleOwner) -> MirrorWorker:
    """The worker for ``roles``' current role (not started; its ``open()``
    reads the mirror log). A receiver reads ``applied.json`` here, so call
    this from a worker thread."""
    role = roles.role
    worker: MirrorWorker
    if role == "arbiter":
        return ArbiterMirror(agent, mirror, roles)
    if role == "primary":
        worker = PrimaryMirror(agent, mirror, roles)
    else:
        worker = ReceiverMirror(agent, mirror, roles)
    arbiter = worker.arbiter_member()
    if arbiter is not None and role in ("primary", "backup"):
        worker.companions.append(ArbiterLink(worker, arbiter))
    return worker
