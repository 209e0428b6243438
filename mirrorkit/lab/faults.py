"""Network and process faults between lab hosts (`mirrorkit lab partition|heal|loss|pause|resume`).

Network faults are nftables rules inside the hosts (the containers have
NET_ADMIN; this kernel has no `tc netem`), all in one table of their own,
``inet mirrorkit_lab_faults``, so that they never touch anything else's
rules (keepalived's, an operator's) and "heal everything" is one
``delete table``. The rules are the state: each carries a comment
``mirrorkit partition ADDR`` or ``mirrorkit loss ADDR BASIS_POINTS``, and
every change reads the host's current faults, changes the one asked for and
writes the whole table back in one ``nft -f`` transaction. So every command
is idempotent, and a host that is recreated (``lab up``) or restarted comes
back without faults, because its network namespace is new.

- A partition of A and B drops, on both hosts, every packet from and to the
  other's address, in both hooks (input and output), before conntrack:
  established connections are cut too.
- Loss of P % on the link A-B drops P % of the packets each host *sends* to
  the other (``numgen random``, the nft form of iptables'
  ``-m statistic --mode random``): P % each way, not compounded.
- Pause freezes every process of a host (``podman pause``, the cgroup
  freezer): its kernel still answers ARP and may accept a TCP connection,
  but nothing in it runs, sends or answers. Resume thaws it; clocks jump.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from mirrorkit.errors import MirrorkitError
from mirrorkit.lab import podman as pm
from mirrorkit.lab.hosts import container_state
from mirrorkit.lab.spec import LabHost, LabSpec

__all__ = ["TABLE", "Faults", "heal", "host_faults", "loss", "partition", "pause",
           "render_table", "resume"]

TABLE = "mirrorkit_lab_faults"
_COMMENT = re.compile(r"mirrorkit (partition|loss) ([0-9.]+)(?: ([0-9]+))?")
_EXEC_TIMEOUT = 30.0


@dataclass
class Faults:
    """One host's network faults: peers cut off, and loss (basis points) towards peers."""
    partitioned: set[str]
    loss_bp: dict[str, int]

    @property
    def empty(self) -> bool:
        return not self.partitioned and not self.loss_bp


def render_table(faults: Faults) -> str:
    """The nft script that replaces the fault table with FAULTS (deletes it when empty)."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}"]
    if faults.empty:
        return "\n".join(lines) + "\n"
    inp = [f'        ip saddr {a} drop comment "mirrorkit partition {a}"'
           for a in sorted(faults.partitioned)]
    out = [f'        ip daddr {a} drop comment "mirrorkit partition {a}"'
           for a in sorted(faults.partitioned)]
    out += [f'        ip daddr {a} numgen random mod 10000 < {bp} drop '
            f'comment "mirrorkit loss {a} {bp}"'
            for a, bp in sorted(faults.loss_bp.items())]
    lines += [
        f"table inet {TABLE} {{",
        # -300: before conntrack, so that established connections are cut too.
        "    chain input {", "        type filter hook input priority -300; policy accept;",
        *inp, "    }",
        "    chain output {", "        type filter hook output priority -300; policy accept;",
        *out, "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def parse_table(listing: str) -> Faults:
    """Faults from ``nft -j list table inet TABLE`` output (rules' comments)."""
    faults = Faults(set(), {})
    data = json.loads(listing or "{}")
    for item in data.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        match = _COMMENT.fullmatch(str(rule.get("comment", "")))
        if match is None:
            continue
        kind, addr, bp = match.groups()
        if kind == "partition":
            faults.partitioned.add(addr)
        elif bp is not None:
            faults.loss_bp[addr] = int(bp)
    return faults


# --- hosts ---------------------------------------------------------------

def _require_running(spec: LabSpec, host: LabHost) -> None:
    state = container_state(host.container)
    if not state.exists:
        raise MirrorkitError(f"{host.name}: container {host.container} does not exist; "
                             "run `mirrorkit lab up` first")
    if state.network != spec.network:
        raise MirrorkitError(f"{host.name}: container {host.container} belongs to "
                             f"{state.network or 'no mirrorkit lab'}, not to lab {spec.network}")
    if state.status == "paused":
        raise MirrorkitError(f"{host.name} is paused; `mirrorkit lab resume {host.name}` first")
    if not state.running:
        raise MirrorkitError(f"{host.name} is not running ({state.status}); "
                             f"`mirrorkit lab start {host.name}` first")


def host_faults(host: LabHost) -> Faults:
    proc = pm.podman("exec", host.container, "nft", "-j", "list", "table", "inet", TABLE,
                     check=False, timeout=_EXEC_TIMEOUT)
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return Faults(set(), {})  # no table: no faults
        raise MirrorkitError(f"{host.name}: cannot read its fault rules: "
                             f"{proc.stderr.strip()[-300:]}")
    return parse_table(proc.stdout)


def _write(host: LabHost, faults: Faults) -> None:
    proc = pm.podman("exec", "-i", host.container, "nft", "-f", "-",
                     input_bytes=render_table(faults).encode(), check=False,
                     timeout=_EXEC_TIMEOUT)
    if proc.returncode != 0:
        raise MirrorkitError(f"{host.name}: nft refused the fault rules: "
                             f"{proc.stderr.strip()[-300:]}")


def _pair(spec: LabSpec, a: str, b: str) -> tuple[LabHost, LabHost]:
    host_a, host_b = spec.host(a), spec.host(b)
    if host_a == host_b:
        raise MirrorkitError(f"{a} and {b} are the same host: name two different lab hosts")
    for h in (host_a, host_b):
        _require_running(spec, h)
    return host_a, host_b


def partition(spec: LabSpec, a: str, b: str) -> None:
    """Cut every packet between A and B, both ways (idempotent)."""
    host_a, host_b = _pair(spec, a, b)
    for me, peer in ((host_a, host_b), (host_b, host_a)):
        faults = host_faults(me)
        faults.partitioned.add(peer.address)
        _write(me, faults)


def loss(spec: LabSpec, a: str, b: str, percent: float) -> None:
    """Drop PERCENT % of the packets each of A and B sends to the other (0 removes it)."""
    if not 0 <= percent <= 100:
        raise MirrorkitError(f"loss {percent:g} %: give a percentage from 0 to 100")
    host_a, host_b = _pair(spec, a, b)
    bp = round(percent * 100)
    for me, peer in ((host_a, host_b), (host_b, host_a)):
        faults = host_faults(me)
        if bp:
            faults.loss_bp[peer.address] = bp
        else:
            faults.loss_bp.pop(peer.address, None)
        _write(me, faults)


def heal(spec: LabSpec, a: str | None = None, b: str | None = None) -> list[str]:
    """Remove the faults between A and B, or every fault of every host; return notes
    about hosts that could not be healed (not running: their next start is clean)."""
    if a is not None and b is not None:
        host_a, host_b = _pair(spec, a, b)
        for me, peer in ((host_a, host_b), (host_b, host_a)):
            faults = host_faults(me)
            faults.partitioned.discard(peer.address)
            faults.loss_bp.pop(peer.address, None)
            _write(me, faults)
        return []
    notes = []
    for host in spec.hosts:
        try:
            _require_running(spec, host)
        except MirrorkitError as exc:
            notes.append(str(exc))
            continue
        _write(host, Faults(set(), {}))
    return notes


def pause(spec: LabSpec, name: str) -> bool:
    """Freeze every process of NAME; False when it was paused already."""
    host = spec.host(name)
    state = container_state(host.container)
    if state.exists and state.network == spec.network and state.status == "paused":
        return False
    _require_running(spec, host)
    pm.podman("pause", host.container)
    return True


def resume(spec: LabSpec, name: str) -> bool:
    """Thaw NAME; False when it was not paused (running already)."""
    host = spec.host(name)
    state = container_state(host.container)
    if state.exists and state.network == spec.network and state.status == "paused":
        pm.podman("unpause", host.container)
        return True
    _require_running(spec, host)
    return False
