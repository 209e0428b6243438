"""Which worker runs a mirror on this host, chosen from its runtime role."""

from __future__ import annotations

from mirrorkit.agent.arbiter.link import ArbiterLink
from mirrorkit.agent.arbiter.witness import ArbiterMirror
from mirrorkit.agent.config import AgentConfig, MirrorConfig
from mirrorkit.agent.state import StateStore
from mirrorkit.agent.stream.receiver import ReceiverMirror
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.agent.stream.worker import MirrorWorker

__all__ = ["create_worker"]


def create_worker(agent: AgentConfig, mirror: MirrorConfig) -> MirrorWorker:
    """Build the worker for ``mirror`` according to its persisted runtime role."""
    store = StateStore(agent.mirror_dir(mirror.name))
    default_primary = next((n for n, m in mirror.members.items() if m.role == "primary"), None)
    state = store.load(mirror.role, default_primary)
    worker: MirrorWorker
    if mirror.role == "arbiter" or state.role == "arbiter":
        return ArbiterMirror(agent, mirror, store, state)
    if state.role == "primary":
        worker = PrimaryMirror(agent, mirror, store, state)
    else:
        worker = ReceiverMirror(agent, mirror, store, state)
    arbiter = worker.arbiter_member()
    if arbiter is not None and state.role in ("primary", "backup"):
        worker.companions.append(ArbiterLink(worker, arbiter))
    return worker
