"""The agent daemon: every mirror worker of this host plus the status API."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from mirrorkit import __version__
from mirrorkit.agent.api.control import repair_handler, resync_handler
from mirrorkit.agent.api.http import start_api
from mirrorkit.agent.api.metrics import StatusCollector, metrics_text
from mirrorkit.agent.config import AgentConfig
from mirrorkit.agent.ha.roles import create_worker
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.util.loopstall import LoopStallProbe
from mirrorkit.agent.util.stats import AgentMetrics

__all__ = ["RETRY_SECONDS", "Agent"]

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0


class Agent:
    """All mirror workers of this host plus the status API."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.workers: dict[str, MirrorWorker] = {}
        self.failed: dict[str, str] = {}
        self._stop = asyncio.Event()
        # One registry per agent: the instruments plus the status gauges.
        self.metrics = AgentMetrics(cfg.host)
        self.loop_stall = LoopStallProbe(self.metrics.loop_stall().observe)
        self.metrics.registry.register(StatusCollector(self.status))

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
        return {"host": self.cfg.host, "version": __version__,
                "loop_stall": self.loop_stall.summary(), "mirrors": mirrors}

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        stall = asyncio.create_task(self.loop_stall.run(), name="loop-stall-probe")
        for name in self.cfg.mirrors:
            await self._start_mirror(name)
        api = await self._start_api()
        log.info("agent %s %s running %d mirror(s)", self.cfg.host, __version__,
                 len(self.workers))
        retry = asyncio.create_task(self._retry_failed())
        await self._stop.wait()
        log.info("shutting down")
        retry.cancel()
        stall.cancel()
        if api is not None:
            api.close()
        await asyncio.gather(*(w.stop() for w in self.workers.values()),
                             return_exceptions=True)
        log.info("stopped")

    async def _start_mirror(self, name: str) -> None:
        worker: MirrorWorker | None = None
        try:
            worker = create_worker(self.cfg, self.cfg.mirrors[name])
            worker.metrics = self.metrics.mirror(name)  # series survive a new worker
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
                                   resync_handler(self.workers,
                                                  repair_handler(self.workers)),
                                   lambda: metrics_text(self.metrics.registry))
        except OSError as exc:
            log.error("status API cannot listen on %s:%d: %s", self.cfg.api_listen,
                      self.cfg.api_port, exc)
            return None
