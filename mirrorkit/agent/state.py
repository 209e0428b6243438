"""Per-mirror runtime state: ``<state_dir>/<mirror>/state.json``, and its one owner.

``state.json`` holds ``{term, role, primary}``: who this member *is* now. It
outranks the config's ``role``, which is only the initial layout (so a
re-applied config never forces the inventory's primary over a newer one).
An arbiter of a sync mirror also keeps there (all terms, 0 = none; a file
without them, from before, reads as 0): ``backup_out``, the term whose
primary it confirmed to run without its backup, ``backup_out_lsn``, from
where, and ``primary_lost``, a term in which it told the backup that the
primary had been silent for the arbiter timeout (it then never confirms
``backup_out`` in that term: the backup may have promoted itself on it).
``applied.json`` holds the last LSN a receiver made durable in its replica.

:class:`RoleOwner` is the one owner of a mirror's role and term on this
host: it loads them, persists every change before it takes effect, and every
other part asks it (the worker in charge, the API, the arbiter link). When it
cannot read its state it refuses to act (:class:`StateUnreadable`), loudly,
rather than guessing from the inventory: a demoted former primary whose
``state.json`` is damaged must never come back as primary.

Every write is atomic and durable: temp file in the same directory, fsync,
rename, fsync of the directory. A crash leaves either the old or the new file.

The receiver's per-batch ``applied.json`` takes a cheaper path with the same
result (:meth:`StateStore.stage_applied` / :meth:`StateStore.commit_applied`):
the temp file is written but not fsynced; the applier's durability point for
the batch (``syncfs`` of every file system it touched, the state directory's
included, or an fsync of the temp file where ``syncfs`` cannot be trusted)
makes its contents durable together with the replica data; only then is it
renamed over ``applied.json`` and the directory fsynced. So ``applied.json``
never names contents that are not durable, and never an LSN whose replica data
is not durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from mirrorkit.agent.util.lease import Lease
from mirrorkit.atomicfile import atomic_write, fsync_dir, temp_path, write_all

T = TypeVar("T")

__all__ = [
    "DEMOTED_ROLE",
    "ROLES_OF_CLASS",
    "MirrorState",
    "RoleOwner",
    "StateStore",
    "StateUnreadable",
    "TermMoved",
    "atomic_write_json",
    "read_json_object",
]

log = logging.getLogger(__name__)










# The runtime roles a member of each class may hold (its certificate's OU).
# An async member may be primary too: a disaster-recovery copy promoted by
# an operator (`mirrorkit promote`; reporting copies are refused there).
ROLES_OF_CLASS = {"failover": ("primary", "backup"), "arbiter": ("arbiter",),
                  "async": ("async", "primary")}
# The role a member of each class takes when it stops being primary.
DEMOTED_ROLE = {"failover": "backup", "async": "async"}
RECOVERY_DOC = "docs/architecture.md, 'Damaged or missing state'"


_SYNC_FLAGS = ("backup_out", "backup_out_lsn", "primary_lost")


@dataclass(frozen=True, slots=True)
class MirrorState:
    term: int
    role: str
    primary: str | None
    # The arbiter's sync flags (module docstring); each means something only
    # while equal to ``term``, and a new term starts without them.
    backup_out: int = 0
    backup_out_lsn: int = 0
    primary_lost: int = 0

    def same_term_flags(self, new: MirrorState) -> MirrorState:
        """``new`` with our sync flags when it keeps our term (a role or
        primary change does not clear them; a new term does)."""
        if new.term != self.term or (new.backup_out, new.backup_out_lsn,
                                     new.primary_lost) != (0, 0, 0):
            return new
        return replace(new, backup_out=self.backup_out, backup_out_lsn=self.backup_out_lsn,
                       primary_lost=self.primary_lost)


class StateUnreadable(Exception):
    """The mirror's state cannot be trusted; the message names the file, what
    is wrong and how to recover. The mirror refuses to start."""


def _encode(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode() + b"\n"


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write(path, _encode(value))


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The object in ``path``; ``None`` if the file does not exist.
    Raises :class:`StateUnreadable` for anything else: never guess."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateUnreadable(f"{path} cannot be read: {exc}") from None
    if not isinstance(value, dict):
        raise StateUnreadable(f"{path} does not hold a JSON object")
    return value


def _history_files(directory: Path) -> list[str]:
    """What shows that this member has run before (and so must have a state)."""
    found = []
    log_dir = directory / "log"
    if any(log_dir.glob("*.log")):
        found.append(f"{log_dir}/*.log")
    for name in ("applied.json", "terms.json", "blockindex.db"):
        if (directory / name).exists() or (log_dir / name).exists():
            found.append(name)
    return found


class StateStore:
    """The state files of one mirror on this host."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.state_path = directory / "state.json"
        self.applied_path = directory / "applied.json"

    def load(self, member_class: str) -> MirrorState | None:
        """The persisted state; ``None`` on a member that never ran this mirror.

        Raises :class:`StateUnreadable` when ``state.json`` is damaged, holds
        a role this member's class cannot have, or is missing although the
        mirror's log or other state shows the member has run before."""
        raw = read_json_object(self.state_path)
        if raw is None:
            found = _history_files(self.directory)
            if found:
                raise StateUnreadable(
                    f"{self.state_path} is missing, but this member has run this mirror "
                    f"before ({', '.join(found)}): refusing to guess its role")
            return None
        term, role, primary = raw.get("term"), raw.get("role"), raw.get("primary")
        allowed = ROLES_OF_CLASS.get(member_class, ())
        if not (isinstance(term, int) and not isinstance(term, bool) and term >= 1):
            raise StateUnreadable(f"{self.state_path}: term must be an integer >= 1, "
                                  f"found {term!r}")
        if role not in allowed:
            raise StateUnreadable(f"{self.state_path}: role {role!r} is not one a "
                                  f"{member_class} member can hold ({', '.join(allowed)})")
        if primary is not None and not isinstance(primary, str):
            raise StateUnreadable(f"{self.state_path}: primary must be a member name or "
                                  f"null, found {primary!r}")
        flags = []
        for key in _SYNC_FLAGS:
            value = raw.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StateUnreadable(f"{self.state_path}: {key} must be an integer >= 0 "
                                      f"(0: none), found {value!r}")
            flags.append(value)
        return MirrorState(term, str(role), primary, *flags)

    def save(self, state: MirrorState) -> None:
        # The sync flags only when set: the file of a member that never uses
        # them stays what earlier versions wrote and read.
        atomic_write_json(self.state_path, {k: v for k, v in asdict(state).items()
                                            if k not in _SYNC_FLAGS or v})

    def load_applied(self) -> int:
        """The receiver's last durably applied LSN (0 when never written).
        Raises :class:`StateUnreadable` when the file is damaged."""
        raw = read_json_object(self.applied_path)
        if raw is None:
            return 0
        lsn = raw.get("lsn")
        if not (isinstance(lsn, int) and not isinstance(lsn, bool) and lsn >= 0):
            raise StateUnreadable(f"{self.applied_path}: lsn must be an integer >= 0, "
                                  f"found {lsn!r}")
        return lsn

    def save_applied(self, lsn: int) -> None:
        atomic_write_json(self.applied_path, {"lsn": lsn})

    def stage_applied(self, lsn: int) -> int:
        """Write ``lsn`` into the temp file, *not* fsynced, and return its open
        descriptor: the caller makes it durable (fsync or syncfs), closes it,
        then calls :meth:`commit_applied`."""
        fd = os.open(temp_path(self.applied_path),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, _encode({"lsn": lsn}))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def commit_applied(self) -> None:
        """Rename the durable temp file over ``applied.json``; fsync the directory."""
        os.replace(temp_path(self.applied_path), self.applied_path)
        fsync_dir(self.directory)


# Called after a change is durable: (old state, new state, reason).
Listener = Callable[[MirrorState, MirrorState, str], None]


class TermMoved(ValueError):
    """A role change decided on a term that is no longer ours."""


class RoleOwner:
    """The one owner of one mirror's role and term on this host.

    Every change is persisted (fsync, in a worker thread: never on the event
    loop) before it takes effect, and then announced to the listeners (the
    ``ha`` supervisor, which swaps the worker). Changes are serialised by a
    lock, so two messages announcing higher terms cannot interleave.

    ``writable`` turns false the moment this member learns that it may no
    longer act as primary, *before* the new state is durable: stopping early
    is always safe, acting late never is.
    """

    def __init__(self, store: StateStore, member_class: str, state: MirrorState) -> None:
        self.store = store
        self.member_class = member_class
        self._state = state
        self._lock = asyncio.Lock()
        self._stepping_down = False
        # A switchover in progress: still the primary of its term (it keeps
        # shipping to its receivers) but no longer writable (VIP released,
        # on_demote has run), until the handover or its abort.
        self._draining = False
        # The drain's on_demote is still running: the VIP stays until it has
        # ended (see keeps_vip).
        self._keep_vip = False
        # Set by ha when the mirror has a backup and an arbiter: writable
        # only while a peer's echo renews it (util/lease.py). None: no lease
        # (no one could take over automatically, so there is nothing to fence for).
        self.lease: Lease | None = None
        self.listeners: list[Listener] = []
        # Called the moment ``writable`` turns false, before the new state is
        # durable (the primary file keepalived reads is rewritten at once).
        self.step_down_listeners: list[Callable[[], None]] = []

    @classmethod
    def load(cls, store: StateStore, member_class: str, initial_role: str,
             initial_primary: str | None) -> RoleOwner:
        """Load the persisted state, or on a member's very first start take
        the inventory's layout at term 1 and persist it. Raises
        :class:`StateUnreadable` (never falls back to the inventory)."""
        state = store.load(member_class)
        if state is None:
            state = MirrorState(1, initial_role, initial_primary)
            store.save(state)
            log.info("no state for %s yet: starting as %s, term 1 (from the inventory)",
                     store.directory.name, initial_role)
        return cls(store, member_class, state)

    @property
    def state(self) -> MirrorState:
        return self._state

    @property
    def term(self) -> int:
        return self._state.term

    @property
    def role(self) -> str:
        return self._state.role

    @property
    def primary(self) -> str | None:
        return self._state.primary

    @property
    def holds_primary(self) -> bool:
        """Is this member the primary of its term (not stepping down)? It
        keeps serving its receivers while fenced or draining."""
        return self._state.role == "primary" and not self._stepping_down

    @property
    def writable(self) -> bool:
        """May this member act as the mirror's primary right now: hold the
        role, not draining for a switchover, and its lease (if any) valid?"""
        return (self.holds_primary and not self._draining
                and (self.lease is None or self.lease.valid()))

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self, *, keep_vip: bool = False) -> None:
        """Stop being writable for a switchover (announced at once, like a
        step-down). ``keep_vip``: the VIP stays until :meth:`release_vip`
        (see :attr:`keeps_vip`)."""
        if self._draining:
            return
        self._draining = True
        self._keep_vip = keep_vip
        self._announce_step_down()

    def release_vip(self) -> None:
        """The drain's ``on_demote`` has ended: the VIP goes now (announced)."""
        if self._keep_vip:
            self._keep_vip = False
            self._announce_step_down()

    def end_drain(self) -> None:
        """The switchover was abandoned: writable again (if the lease allows)."""
        self._draining = False
        self._keep_vip = False

    @property
    def keeps_vip(self) -> bool:
        """Draining for a switchover whose ``on_demote`` is still running,
        and still the one primary of its term with a valid lease: the VIP
        may stay here until the application has stopped, so that requests
        in flight are answered over it (released at once, a request in
        flight never gets its answer: the reply's source address is gone).
        Nobody else can hold it meanwhile: the HANDOVER comes after. Not
        writable all the same: ``GET /primary`` and the primary file say
        "not primary" (the tracking script releases the VIP after its
        ``interval * fall`` should ``on_demote`` hang); a lost lease or a
        higher term ends it at once."""
        return (self._keep_vip and self._draining and self.holds_primary
                and (self.lease is None or self.lease.valid()))

    async def observe_term(self, term: int, primary: str | None, source: str) -> bool:
        """A message from ``source`` carried ``term``. A higher term than ours
        means another member was promoted: a primary steps down to backup at
        once. Returns True when our term changed."""
        if term <= self._state.term:
            return False
        if self._state.role == "primary":
            self._step_down()

        async def commit() -> bool:
            if term <= self._state.term:
                return False
            old = self._state
            role = DEMOTED_ROLE.get(self.member_class, "backup") \
                if old.role == "primary" else old.role
            why = f"{source} announced term {term} > our term {old.term}"
            if old.role == "primary":
                why += f": another member was promoted; {self.store.directory.name} " \
                       f"stops acting as primary"
            await self._commit(MirrorState(term, role, primary), why)
            return True

        return await self._exclusive(commit)

    async def change(self, role: str, term: int, primary: str | None, why: str,
                     from_term: int | None = None) -> None:
        """Take ``role`` in ``term`` (never lower than ours; a new role for the
        same member class only), persisted before it takes effect.

        ``from_term``: the term the caller decided on; raises
        :class:`TermMoved` if ours is another by the time the change runs (a
        promotion to ``from_term + 1`` must not land in a term someone else
        took meanwhile). A primary claim for a term that already names
        another primary is refused the same way."""
        allowed = ROLES_OF_CLASS.get(self.member_class, ())
        if role not in allowed:
            raise ValueError(f"a {self.member_class} member cannot be {role}")
        if term < self._state.term:
            raise ValueError(f"term {term} is older than our term {self._state.term}")
        if role != "primary" and self._state.role == "primary":
            self._step_down()  # stop at once; durable below

        async def commit() -> None:
            if term < self._state.term:
                raise ValueError(f"term {term} is older than our term {self._state.term}")
            if from_term is not None and self._state.term != from_term:
                raise TermMoved(f"our term moved from {from_term} to {self._state.term} "
                                f"meanwhile")
            if (role == "primary" and term == self._state.term
                    and self._state.primary not in (None, primary)):
                raise TermMoved(f"term {term} already has primary {self._state.primary}")
            await self._commit(MirrorState(term, role, primary), why)

        await self._exclusive(commit)

    def _step_down(self) -> None:
        self._stepping_down = True
        self._announce_step_down()

    def _announce_step_down(self) -> None:
        for listener in list(self.step_down_listeners):
            try:
                listener()
            except Exception:  # a listener must not stop the step-down itself
                log.exception("%s: a step-down listener failed", self.store.directory.name)

    async def note_primary(self, primary: str) -> None:
        """Remember who the primary of our current term is (receivers learn it
        when they connect)."""
        if primary == self._state.primary:
            return
        async def commit() -> None:
            old = self._state
            await self._commit(MirrorState(old.term, old.role, primary),
                               f"{primary} is the primary of term {old.term}")

        await self._exclusive(commit)

    async def set_sync_flags(self, why: str, *, backup_out: int | None = None,
                             backup_out_lsn: int | None = None,
                             primary_lost: int | None = None) -> bool:
        """Persist the arbiter's sync flags for our *current* term (each
        given one; the others stay), durable before it returns; False when
        nothing changed. No listener runs: role and term are unchanged."""
        async def commit() -> bool:
            old = self._state
            new = replace(old,
                          backup_out=old.backup_out if backup_out is None else backup_out,
                          backup_out_lsn=old.backup_out_lsn if backup_out_lsn is None
                          else backup_out_lsn,
                          primary_lost=old.primary_lost if primary_lost is None
                          else primary_lost)
            if new == old:
                return False
            await asyncio.to_thread(self.store.save, new)
            self._state = new
            log.warning("%s: term %d: %s", self.store.directory.name, new.term, why)
            return True

        return await self._exclusive(commit)

    async def _exclusive(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run ``body`` under the lock and to its end even if our caller is
        cancelled meanwhile (a connection that closes under a HANDOVER being
        handled): cancelled between the save and taking the state into
        memory, the member would act on a role its state file no longer
        holds, and the listeners (the worker swap, the hooks) would never hear
        of it. The caller still sees its cancellation at once."""
        async def run() -> T:
            async with self._lock:
                return await body()

        task = asyncio.get_running_loop().create_task(run())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._orphan_done)
            raise

    def _orphan_done(self, task: asyncio.Task[Any]) -> None:
        # Its caller is gone (cancelled): a failure must still be seen.
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: a state change failed: %r", self.store.directory.name,
                      task.exception())

    async def _commit(self, new: MirrorState, why: str) -> None:
        old = self._state
        new = old.same_term_flags(new)
        if new == old:
            return
        await asyncio.to_thread(self.store.save, new)
        self._state = new
        self._stepping_down = False
        self._draining = False
        self._keep_vip = False
        level = logging.WARNING if old.role != new.role else logging.INFO
        log.log(level, "%s: role %s -> %s, term %d -> %d, primary %s -> %s: %s",
                self.store.directory.name, old.role, new.role, old.term, new.term,
                old.primary, new.primary, why)
        for listener in list(self.listeners):
            listener(old, new, why)
