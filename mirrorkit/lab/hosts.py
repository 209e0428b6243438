"""The lab's podman network and one systemd container per inventory host.

Containers carry labels saying which lab network they belong to and a hash of
everything they were created from (image, address, key, run options): `up`
leaves a running container with the current hash alone and recreates anything
stopped, stale (a leftover whose processes are gone) or out of date. A
container of the same name that belongs to another lab is never touched.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mirrorkit.errors import MirrorkitError
from mirrorkit.lab import podman as pm
from mirrorkit.lab.progress import say
from mirrorkit.lab.spec import LabHost, LabSpec
from mirrorkit.lab.sshkey import ensure_lab_key, public_key_path, ssh_command

LABEL_NETWORK = "mirrorkit.lab.network"
LABEL_SPEC = "mirrorkit.lab.spec"
# Bump when run_args() changes in a way existing containers should pick up.
RUN_ARGS_VERSION = "1"


@dataclass(frozen=True)
class ContainerState:
    exists: bool
    id: str = ""
    status: str = "absent"     # podman's status, or "stale" when its process is gone
    network: str | None = None  # the LABEL_NETWORK label (None: not a lab container)
    spec: str = ""
    image_id: str = ""

    @property
    def running(self) -> bool:
        return self.status == "running"


def container_state(name: str) -> ContainerState:
    info = pm.inspect("container", name)
    if info is None:
        return ContainerState(exists=False)
    state: dict[str, Any] = info.get("State") or {}
    labels: dict[str, str] = (info.get("Config") or {}).get("Labels") or {}
    status = str(state.get("Status", "unknown"))
    pid = int(state.get("Pid") or 0)
    conmon = int(state.get("ConmonPid") or 0)
    if status == "running" and not (_alive(pid) and _alive(conmon)):
        status = "stale"
    return ContainerState(
        exists=True, id=str(info.get("Id", "")), status=status,
        network=labels.get(LABEL_NETWORK), spec=labels.get(LABEL_SPEC, ""),
        image_id=str(info.get("Image", "")),
    )


def _alive(pid: int) -> bool:
    """True if PID is a live process (not gone, not a zombie)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _answers(name: str) -> bool:
    """The container really runs: podman can exec in it."""
    proc = pm.podman("exec", name, "true", check=False, timeout=15)
    return proc.returncode == 0


# --- network -------------------------------------------------------------

def ensure_network(spec: LabSpec) -> str:
    """Create the internal network (or recreate it on another subnet); return what happened."""
    subnets = pm.network_subnets(spec.network)
    if subnets == [str(spec.subnet)]:
        return "exists"
    for other, nets in pm.all_networks().items():
        if other == spec.network:
            continue
        for net in nets:
            try:
                if ipaddress.ip_network(net, strict=False).overlaps(spec.subnet):
                    raise MirrorkitError(
                        f"subnet {spec.subnet} of lab network {spec.network} overlaps podman "
                        f"network {other} ({net}); take that lab down first "
                        f"(mirrorkit lab down INVENTORY, or podman network rm {other})"
                    )
            except ValueError:
                continue
    action = "created"
    if subnets is not None:
        say(f"network {spec.network} has subnet {subnets}, not {spec.subnet}: recreating")
        pm.podman("network", "rm", "-f", spec.network)
        action = "recreated"
    pm.podman("network", "create", "--internal", "--subnet", str(spec.subnet),
              "--label", "mirrorkit.lab=1", spec.network)
    return action


def remove_network(spec: LabSpec) -> bool:
    """Remove the network and any container still attached to it; True if it existed."""
    if pm.network_subnets(spec.network) is None:
        return False
    pm.podman("network", "rm", "-f", spec.network)
    return True


# --- containers ----------------------------------------------------------

def run_args(spec: LabSpec, host: LabHost, image: str) -> list[str]:
    """`podman run` options for HOST (labels excluded)."""
    args = [
        "--hostname", host.name, "--network", spec.network, "--ip", host.address,
        "--mac-address", mac_address(host.address),
        "--systemd=always",
        "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",   # keepalived VRRP, faults
        "--cap-add", "SYS_ADMIN", "--device", "/dev/fuse",   # FUSE capture
        "-v", f"{public_key_path(ensure_lab_key())}:/root/.ssh/authorized_keys:ro",
    ]
    for other in spec.hosts:
        if other.name != host.name:
            args += ["--add-host", f"{other.name}:{other.address}"]
    return [*args, image]


def mac_address(address: str) -> str:
    """A fixed, locally administered MAC per address (02:00 + the IPv4 bytes).

    A recreated host keeps its MAC, so neighbours' ARP caches (the controller's
    included) stay right and SSH answers at once instead of after ARP times out.
    """
    return "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


def spec_hash(spec: LabSpec, host: LabHost, image_id: str) -> str:
    key = public_key_path(ensure_lab_key()).read_bytes()
    text = json.dumps([RUN_ARGS_VERSION, run_args(spec, host, image_id)]).encode()
    return hashlib.sha256(text + key).hexdigest()[:16]


def _check_ours(spec: LabSpec, host: LabHost, state: ContainerState) -> None:
    if state.exists and state.network != spec.network:
        owner = f"lab network {state.network}" if state.network else "no mirrorkit lab"
        raise MirrorkitError(
            f"a container named {host.container} already exists and belongs to {owner}; "
            f"take that lab down, or set mirrorkit_lab.prefix in {spec.inventory} "
            "to give this lab's containers other names"
        )


def ensure_container(spec: LabSpec, host: LabHost, image: str) -> str:
    """Make HOST's container run from IMAGE; return 'unchanged', 'resumed' (it was
    paused), 'created' or 'recreated'."""
    state = container_state(host.container)
    _check_ours(spec, host, state)
    image_id = pm.image_id(image) or image
    wanted = spec_hash(spec, host, image_id)
    if state.status == "paused" and state.spec == wanted:
        # Frozen by `mirrorkit lab pause`: thaw it rather than recreate it (its
        # disk would be lost).
        pm.podman("unpause", host.container)
        if _answers(host.container):
            return "resumed"
    if state.running and state.spec == wanted and _answers(host.container):
        return "unchanged"
    if state.exists:
        remove_container(host.container)
    pm.podman(
        "run", "-d", "--name", host.container,
        "--label", f"{LABEL_NETWORK}={spec.network}", "--label", f"{LABEL_SPEC}={wanted}",
        "--label", f"mirrorkit.lab.inventory={spec.inventory}",
        *run_args(spec, host, image),
    )
    return "recreated" if state.exists else "created"


def remove_container(name: str) -> None:
    pm.podman("rm", "--force", "--ignore", "--time", "0", name, check=False)
    if pm.inspect("container", name) is not None:
        # A leftover podman cannot stop: clean its runtime state, then retry.
        pm.podman("container", "cleanup", name, check=False)
        pm.podman("rm", "--force", "--ignore", "--time", "0", name)


def remove_hosts(spec: LabSpec) -> list[str]:
    """Remove this lab's containers (never another lab's); return the removed names."""
    removed = []
    for host in spec.hosts:
        state = container_state(host.container)
        if not state.exists:
            continue
        if state.network != spec.network:
            say(f"{host.container}: left alone (belongs to {state.network or 'no mirrorkit lab'})")
            continue
        remove_container(host.container)
        removed.append(host.container)
    return removed


def kill_host(spec: LabSpec, host: LabHost) -> None:
    """Pull the plug: SIGKILL the container's init; nothing shuts down cleanly."""
    state = container_state(host.container)
    _check_ours(spec, host, state)
    if not state.running:
        raise MirrorkitError(f"{host.container} is not running")
    pm.podman("kill", "--signal", "KILL", host.container)


def start_host(spec: LabSpec, host: LabHost) -> None:
    state = container_state(host.container)
    _check_ours(spec, host, state)
    if state.status == "stale":
        remove_container(host.container)
        raise MirrorkitError(f"{host.container} was a stale leftover (removed); "
                             "run `mirrorkit lab up` to recreate it")
    if not state.exists:
        raise MirrorkitError(f"{host.container} does not exist; run `mirrorkit lab up` first")
    if state.running:
        return
    pm.podman("start", host.container)


# --- readiness and status ------------------------------------------------

def systemd_state(host: LabHost, wait: float = 0) -> str:
    """`systemctl is-system-running` in the container (with --wait up to WAIT s)."""
    cmd = ["exec", host.container, "systemctl", "is-system-running"]
    if wait:
        cmd.append("--wait")
    try:
        proc = pm.podman(*cmd, check=False, timeout=wait + 10 if wait else 10)
    except MirrorkitError:
        return "timeout"
    return proc.stdout.strip() or "unreachable"


def failed_units(host: LabHost) -> list[str]:
    proc = pm.podman("exec", host.container, "systemctl", "list-units", "--failed",
                     "--plain", "--no-legend", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.split()]


def ssh_ok(host: LabHost, timeout: float = 3) -> bool:
    argv = ssh_command(host.address, ["true"], batch=True, connect_timeout=timeout)
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout + 5, check=False)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def wait_ready(host: LabHost, timeout: float) -> str:
    """Wait until HOST's systemd has booted and SSH answers; return the systemd state."""
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        left = deadline - time.monotonic()
        if not container_state(host.container).running:
            raise MirrorkitError(
                f"{host.name}: container {host.container} is not running; "
                f"see: podman logs {host.container}"
            )
        state = systemd_state(host, wait=min(left, 30))
        if state in ("running", "degraded"):
            break
        time.sleep(0.5)
    else:
        raise MirrorkitError(
            f"{host.name}: systemd did not finish booting within {timeout:.0f} s "
            f"(state {state!r}); see: podman logs {host.container}"
        )
    while not ssh_ok(host, timeout=min(3, max(1, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            raise MirrorkitError(
                f"{host.name}: SSH on {host.address} did not answer within {timeout:.0f} s; "
                f"try: podman exec {host.container} systemctl status ssh"
            )
        time.sleep(0.5)
    if state == "degraded":
        state += f" ({', '.join(failed_units(host))})"
    return state


def wait_all(hosts: list[LabHost], timeout: float) -> dict[str, str]:
    """wait_ready() for every host in parallel; raise listing every host that failed."""
    results: dict[str, str] = {}
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        futures = {h.name: pool.submit(wait_ready, h, timeout) for h in hosts}
        for name, fut in futures.items():
            try:
                results[name] = fut.result()
            except MirrorkitError as exc:
                errors.append(str(exc))
    if errors:
        raise MirrorkitError("lab hosts not ready:\n  - " + "\n  - ".join(errors))
    return results


@dataclass(frozen=True)
class HostStatus:
    host: LabHost
    container: str
    systemd: str
    ssh: bool
    image: str


def host_status(spec: LabSpec, host: LabHost, image: str) -> HostStatus:
    state = container_state(host.container)
    if not state.exists:
        return HostStatus(host, "absent", "-", False, "-")
    if state.network != spec.network:
        return HostStatus(host, f"other lab ({state.network})", "-", False, "-")
    current = pm.image_id(image)
    img = "current" if current and state.image_id == current else "old"
    if not state.running:
        return HostStatus(host, state.status, "-", False, img)
    return HostStatus(host, "running", systemd_state(host), ssh_ok(host, 2), img)


def lab_status(spec: LabSpec, image: str) -> list[HostStatus]:
    with ThreadPoolExecutor(max_workers=max(1, len(spec.hosts))) as pool:
        return list(pool.map(lambda h: host_status(spec, h, image), spec.hosts))
