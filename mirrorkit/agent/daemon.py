"""The agent daemon: every mirror worker of this host, the read-only status
API on loopback TCP and the root-only control socket."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from mirrorkit import __version__
from mirrorkit.agent.api.control import control_routes
from mirrorkit.agent.api.control_socket import ControlSocket, start_control
from mirrorkit.agent.api.http import start_api
from mirrorkit.agent.config import AgentConfig
from mirrorkit.agent.ha.roles import create_worker
from mirrorkit.agent.stream.worker import MirrorWorker

__all__ = ["RETRY_SECONDS", "Agent"]

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0


class Agent:
    """All mirror workers of this host plus the status API and control socket."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.workers: dict[str, MirrorWorker] = {}
        self.failed: dict[str, str] = {}
        self._stop = asyncio.Event()

    def status(self) -> dict[str, Any]:
        mirrors: dict[str, Any] = {}
        for name, worker in self.workers.items():
            try:
                mirrors[name] = worker.status()
            except Exception as exc:  # status must never take the API down
                mirrors[name] = {"role": worker.state.role, "alive": False, "error": repr(exc)}
        for name, reason in self.failed.items():
            mirrors[name] = {"role": self.cfg.mirrors[name].role, "alive": False,
                             "error": reason}
        return {"host": self.cfg.host, "version": __version__, "mirrors": mirrors}

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        for name in self.cfg.mirrors:
            await self._start_mirror(name)
        api = await self._start_api()
        control = await self._start_control()
        log.info("agent %s %s running %d mirror(s)", self.cfg.host, __version__,
                 len(self.workers))
        retry = asyncio.create_task(self._retry_failed())
        await self._stop.wait()
        log.info("shutting down")
        retry.cancel()
        if api is not None:
            api.close()
        if control is not None:
            control.close()
        await asyncio.gather(*(w.stop() for w in self.workers.values()),
                             return_exceptions=True)
        log.info("stopped")

    async def _start_mirror(self, name: str) -> None:
        worker: MirrorWorker | None = None
        try:
            worker = create_worker(self.cfg, self.cfg.mirrors[name])
            await worker.start()
        except Exception as exc:  # one broken mirror must not stop the others
            log.error("mirror %s failed to start: %s (retrying in %.0fs)", name, exc,
                      RETRY_SECONDS)
            self.failed[name] = str(exc)
            if worker is not None:
                await worker.stop()
            return
        self.failed.pop(name, None)
        self.workers[name] = worker

    async def _retry_failed(self) -> None:
        # A port still held by a dying predecessor, a missing certificate
        # being deployed...: keep trying instead of needing a restart.
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            for name in list(self.failed):
                await self._start_mirror(name)

    async def _start_api(self) -> asyncio.base_events.Server | None:
        try:
            return await start_api(self.cfg.api_listen, self.cfg.api_port, self.status,
                                   str(self.cfg.control_socket))
        except OSError as exc:
            log.error("status API cannot listen on %s:%d: %s", self.cfg.api_listen,
                      self.cfg.api_port, exc)
            return None

    async def _start_control(self) -> ControlSocket | None:
        # Replication goes on without it; only resync and repair wait for a restart.
        path, routes = self.cfg.control_socket, control_routes(self.workers)
        try:
            control = await start_control(path, routes)
        except OSError as exc:
            log.error("control socket %s: cannot listen: %s (resync and repair are "
                      "unavailable until the agent restarts)", path, exc)
            return None
        log.info("control socket %s: serving %s to root", path, ", ".join(sorted(routes)))
        return control
