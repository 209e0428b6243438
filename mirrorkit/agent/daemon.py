"""The agent daemon: every mirror of this host (a supervisor each), the
read-only status API on loopback TCP and the root-only control socket."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mirrorkit import __version__
from mirrorkit.agent.api.control import control_routes
from mirrorkit.agent.api.control_socket import ControlSocket, start_control
from mirrorkit.agent.api.http import start_api
from mirrorkit.agent.api.metrics import StatusCollector, metrics_text
from mirrorkit.agent.api.primary_publisher import PrimaryPublisher
from mirrorkit.agent.api.server import Listener
from mirrorkit.agent.config import AgentConfig, ConfigError, load_config, plan_reload
from mirrorkit.agent.ha.events import Sequence
from mirrorkit.agent.ha.loop import HaLoop
from mirrorkit.agent.ha.supervisor import MirrorSupervisor
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.util.loopstall import LoopStallProbe
from mirrorkit.agent.util.stats import AgentMetrics

__all__ = ["RETRY_SECONDS", "Agent"]

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
SHUTDOWN_SECONDS = 1.5  # at most this long for the mirrors to stop cleanly


class Agent:
    """Every mirror of this host (one :class:`MirrorSupervisor` each), the
    status API and the control socket."""

    def __init__(self, cfg: AgentConfig, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path  # re-read on SIGHUP (reload)
        # One registry per agent: the instruments plus the status gauges.
        self.metrics = AgentMetrics(cfg.host)
        self.loop_stall = LoopStallProbe(self.metrics.loop_stall().observe)
        self.metrics.registry.register(StatusCollector(self.status))
        self.event_sequence = Sequence()  # event numbers, shared by every mirror (GET /events)
        self.supervisors = {name: self._supervisor(cfg, name) for name in cfg.mirrors}
        self._stop = asyncio.Event()
        self._api: Listener | None = None
        # keepalived's check reads these files, not the API (api/primary_publisher.py).
        self.primary_files = PrimaryPublisher(lambda: self.cfg.control_socket.parent,
                                              self.status)
        self._control: ControlSocket | None = None
        self._reloading = asyncio.Lock()
        self.reloads = 0
        self.last_reload: dict[str, Any] | None = None
        # sha256 of the config file and of each mirror's TLS files as loaded:
        # /status shows the first (the role waits for it after a reload); a
        # reload restarts a mirror whose certificate or key changed in place.
        self.config_digest: str | None = None
        self._tls_digests: dict[str, str] = {}

    def _supervisor(self, cfg: AgentConfig, name: str) -> MirrorSupervisor:
        # The mirror's metric series survive a new worker (role swap, reload).
        # A demoted primary's file says "not primary" at once, not at the
        # publisher's next round (up to 0.5 s later).
        return MirrorSupervisor(cfg, cfg.mirrors[name], self.metrics.mirror(name),
                                on_step_down=lambda: self.primary_files.publish(),
                                sequence=self.event_sequence)

    @property
    def workers(self) -> Mapping[str, MirrorWorker]:
        """The running worker of each mirror (the API's mutating routes use it)."""
        return _Workers(self.supervisors)

    def status(self) -> dict[str, Any]:
        mirrors = {name: sup.status() for name, sup in self.supervisors.items()}
        return {"host": self.cfg.host, "version": __version__, "reloads": self.reloads,
                "config_digest": self.config_digest, "last_reload": self.last_reload,
                "loop_stall": self.loop_stall.summary(), "mirrors": mirrors}

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, signals: bool = True) -> None:
        if signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        stall = asyncio.create_task(self.loop_stall.run(), name="loop-stall-probe")
        if self.config_path is not None:
            self.config_digest, self._tls_digests = await asyncio.to_thread(
                _fingerprints, self.cfg, self.config_path)
        # The API first: while mirrors open their logs (a scan that can take
        # seconds) /health and /primary answer 503 "starting" instead of
        # refusing connections.
        self._api = await self._start_api()
        self._control = await self._start_control()
        publisher = asyncio.create_task(self.primary_files.run(), name="primary-files")
        await asyncio.gather(*(sup.start() for sup in self.supervisors.values()))
        log.info("agent %s %s running %d of %d mirror(s)", self.cfg.host, __version__,
                 sum(s.running for s in self.supervisors.values()), len(self.supervisors))
        retry = asyncio.create_task(self._retry_failed())
        await self._stop.wait()
        log.info("shutting down")
        retry.cancel()
        stall.cancel()
        publisher.cancel()
        self.primary_files.stop()  # first: a stopping agent is nobody's primary
        if self._api is not None:
            self._api.close()
        if self._control is not None:
            self._control.close()
        await self._stop_mirrors()
        log.info("stopped")

    async def _stop_mirrors(self) -> None:
        # A restart (an upgrade) must be quick, or keepalived releases the VIP
        # (docs/architecture.md, "A routine apply"): mirrors get SHUTDOWN_SECONDS
        # to stop cleanly, then their remaining waits (a peer's TLS goodbye, a
        # capture thread's last listing) are cancelled. Nothing acknowledged is
        # lost by that: every ACK follows a durability point, and a log append
        # under way finishes in its thread before the process exits.
        started = time.monotonic()
        stops = {asyncio.create_task(s.stop()): name for name, s in self.supervisors.items()}
        if not stops:
            return
        _done, pending = await asyncio.wait(stops, timeout=SHUTDOWN_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*stops, return_exceptions=True)
        if pending:
            log.warning("shutdown: mirror(s) %s still stopping after %.1f s: cut short",
                        ", ".join(sorted(stops[t] for t in pending)), SHUTDOWN_SECONDS)
        elapsed = time.monotonic() - started
        if elapsed > 0.5:
            log.info("shutdown of the mirrors took %.2f s", elapsed)

    def _reload_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        task.add_done_callback(_log_failure)

    async def reload(self) -> bool:
        """Read the config file again and apply it, keeping roles, terms and
        connections where it can (docs/architecture.md, "Reload"): unchanged
        mirrors are not touched; a change of timeouts or hooks is applied in
        place; any other change restarts only that mirror's worker (its role
        and term are persisted, so they stay). A config that does not
        validate changes nothing. Returns whether it was applied."""
        async with self._reloading:
            if self.config_path is None:
                log.error("reload: the agent was started without a config file")
                return False
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                log.error("reload refused, the running config stays: %s", exc)
                self.last_reload = {"ok": False, "time": time.time(), "error": str(exc)}
                return False
            digest, tls = await asyncio.to_thread(_fingerprints, new, self.config_path)
            plan = plan_reload(self.cfg, new)
            rotated = tuple(n for n in (*plan.unchanged, *plan.in_place)
                            if tls.get(n) != self._tls_digests.get(n))
            if rotated:
                plan = replace(plan, restart=(*plan.restart, *rotated),
                               unchanged=tuple(n for n in plan.unchanged if n not in rotated),
                               in_place=tuple(n for n in plan.in_place if n not in rotated))
            log.info("reload of %s: unchanged %s, in place %s, restart %s, added %s, "
                     "removed %s%s", self.config_path, list(plan.unchanged),
                     list(plan.in_place), list(plan.restart), list(plan.added),
                     list(plan.removed), ", API moves" if plan.api else "")
            self.cfg = new
            for name in plan.in_place:
                self.supervisors[name].reconfigure(new.mirrors[name])
            for name in (*plan.restart, *plan.removed):
                await self.supervisors.pop(name).stop()
            for name in (*plan.restart, *plan.added):
                self.supervisors[name] = self._supervisor(new, name)
                await self.supervisors[name].start()
            if plan.api:
                if self._api is not None:
                    self._api.close()
                if self._control is not None:
                    self._control.close()
                self._api = await self._start_api()
                self._control = await self._start_control()
            self.config_digest, self._tls_digests = digest, tls
            self.reloads += 1
            self.last_reload = {"ok": True, "time": time.time(), "error": None,
                                "restarted": list(plan.restart), "in_place": list(plan.in_place)}
            return True

    async def _retry_failed(self) -> None:
        # A port still held by a dying predecessor, a missing certificate
        # being deployed, a state file being repaired...: keep trying instead
        # of needing a restart.
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            for sup in self.supervisors.values():
                if not sup.running:
                    await sup.start()

    async def _start_api(self) -> Listener | None:
        try:
            return await start_api(self.cfg.api_listen, self.cfg.api_port, self.status,
                                   str(self.cfg.control_socket),
                                   lambda: metrics_text(self.metrics.registry),
                                   events=self.events)
        except OSError as exc:
            log.error("status API cannot listen on %s:%d: %s", self.cfg.api_listen,
                      self.cfg.api_port, exc)
            return None

    async def _start_control(self) -> ControlSocket | None:
        # Replication goes on without it; only resync and repair wait for a restart.
        path = self.cfg.control_socket
        routes = control_routes(self.workers, _Loops(self.supervisors))
        try:
            control = await start_control(path, routes)
        except OSError as exc:
            log.error("control socket %s: cannot listen: %s (resync and repair are "
                      "unavailable until the agent restarts)", path, exc)
            return None
        log.info("control socket %s: serving %s to root", path, ", ".join(sorted(routes)))
        return control


    def events(self, mirror: str | None, since: int, limit: int) -> tuple[int, dict[str, Any]]:
        """``GET /events``: one mirror's history, or every mirror's in time order."""
        if mirror is not None and mirror not in self.supervisors:
            return 404, {"error": f"no mirror {mirror!r} on this host"}
        names = [mirror] if mirror is not None else sorted(self.supervisors)
        found: list[dict[str, Any]] = []
        last = 0
        for name in names:
            log_ = self.supervisors[name].events
            found += log_.since(since, limit)
            last = max(last, log_.seq)
        found.sort(key=lambda e: e["seq"])
        return 200, {"events": found[:limit], "last_seq": last}


class _Loops(Mapping[str, HaLoop]):
    """A live view: mirror name -> its HA loop."""

    def __init__(self, supervisors: Mapping[str, MirrorSupervisor]) -> None:
        self._sups = supervisors

    def __getitem__(self, name: str) -> HaLoop:
        return self._sups[name].ha

    def __iter__(self) -> Iterator[str]:
        return iter(self._sups)

    def __len__(self) -> int:
        return len(self._sups)


class _Workers(Mapping[str, MirrorWorker]):
    """A live view: mirror name -> its worker now (absent while not running)."""

    def __init__(self, supervisors: Mapping[str, MirrorSupervisor]) -> None:
        self._sups = supervisors

    def __getitem__(self, name: str) -> MirrorWorker:
        sup = self._sups[name]
        if sup.worker is None:
            raise KeyError(name)
        return sup.worker

    def __iter__(self) -> Iterator[str]:
        return (n for n, s in self._sups.items() if s.worker is not None)

    def __len__(self) -> int:
        return sum(1 for s in self._sups.values() if s.worker is not None)


def _log_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reload failed: %r", task.exception())


def _fingerprints(cfg: AgentConfig, path: Path) -> tuple[str, dict[str, str]]:
    """(sha256 of the config file, {mirror: sha256 of its CA, certificate and
    key}); a file that cannot be read counts as its own value."""
    def digest(*files: Path) -> str:
        h = hashlib.sha256()
        for f in files:
            try:
                h.update(f.read_bytes())
            except OSError as exc:
                h.update(f"unreadable {f}: {exc.errno}".encode())
        return h.hexdigest()

    tls = {name: digest(m.tls.ca, m.tls.cert, m.tls.key) for name, m in cfg.mirrors.items()}
    return digest(path), tls
