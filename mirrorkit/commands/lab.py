"""`mirrorkit lab up|down|ssh|stop|start|status` and the faults
(`partition|heal|loss|pause|resume`): the local lab of podman hosts."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mirrorkit.errors import MirrorkitError
from mirrorkit.lab import faults as lf
from mirrorkit.lab import hosts as lh
from mirrorkit.lab import image as li
from mirrorkit.lab.podman import CONTAINERS_CONF
from mirrorkit.lab.progress import say, step
from mirrorkit.lab.spec import DEFAULT_INVENTORY, LabSpec, load_spec
from mirrorkit.lab.sshkey import ensure_lab_key, lab_key_path, ssh_command

DEFAULT_TIMEOUT = 120.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lab", help="create and drive the local lab of podman hosts",
        description="The local lab: one systemd container per inventory host on an "
                    "internal podman network (inventory var mirrorkit_lab).",
    )
    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    def add(name: str, help_text: str, host: bool = False,
            positional_inventory: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        if host:
            p.add_argument("host", metavar="HOST", help="inventory host name")
        if positional_inventory:
            p.add_argument("inventory", nargs="?", metavar="INVENTORY",
                           help=f"inventory file (default {DEFAULT_INVENTORY})")
        p.add_argument("-i", "--inventory", dest="inventory_opt", metavar="INVENTORY",
                       help="inventory file (same as the positional argument)")
        p.set_defaults(func=run)
        return p

    up = add("up", "build the image if needed, create network and hosts, wait for SSH")
    up.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                    help="seconds to wait for each host's systemd and SSH (default %(default)s)")
    down = add("down", "remove the lab's containers and network (the image cache stays)")
    down.add_argument("--purge-image", action="store_true",
                      help="also remove the lab images and the debootstrap cache")
    add("status", "show the lab hosts: container, systemd, SSH")
    ssh = add("ssh", "open a root shell (or run CMD) on a lab host", host=True,
              positional_inventory=False)
    ssh.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD",
                     help="command to run instead of a shell")
    add("stop", "pull the plug on a host (SIGKILL to the container)", host=True)
    env = sub.add_parser("env", help="print the shell exports podman needs (eval it)",
                         description="Print `export CONTAINERS_CONF=...` so that podman, "
                                     "molecule and ansible run from this shell use the "
                                     "project's podman settings: eval \"$(mirrorkit lab env)\"")
    env.set_defaults(func=run, inventory_opt=None)
    start = add("start", "start a stopped host and wait for SSH", host=True)
    start.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    _register_faults(add)


def _register_faults(add: Any) -> None:
    """partition / loss / heal / pause / resume (docs/lab.md, "Injecting faults")."""
    part = add("partition", "cut the network between two hosts, both ways",
               positional_inventory=False)
    part.add_argument("hosts", nargs=2, metavar="HOST", help="two inventory host names")
    part.add_argument("inventory", nargs="?", metavar="INVENTORY",
                      help=f"inventory file (default {DEFAULT_INVENTORY})")
    loss = add("loss", "drop PERCENT %% of the packets each of two hosts sends the other "
                       "(0 removes it)", positional_inventory=False)
    loss.add_argument("hosts", nargs=2, metavar="HOST", help="two inventory host names")
    loss.add_argument("percent", type=_percent, metavar="PERCENT", help="0 to 100")
    loss.add_argument("inventory", nargs="?", metavar="INVENTORY",
                      help=f"inventory file (default {DEFAULT_INVENTORY})")
    heal = add("heal", "remove the faults between two hosts, or every fault of the lab",
               positional_inventory=False)
    heal.add_argument("words", nargs="*", metavar="[HOST HOST] [INVENTORY]",
                      help="two hosts (heal that pair) or none (heal everything), "
                           "optionally followed by the inventory")
    add("pause", "freeze every process of a host without killing it (podman pause)",
        host=True)
    add("resume", "thaw a paused host (podman unpause)", host=True)


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage (0 to 100)") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage from 0 to 100")
    return value


def split_heal_words(words: list[str]) -> tuple[tuple[str, str] | None, str | None]:
    """`heal [HOST HOST] [INVENTORY]`: (the pair or None, the inventory or None)."""
    if len(words) == 1 and not Path(words[0]).exists():
        raise MirrorkitError(f"lab heal: {words[0]!r} is not an inventory file; give two hosts "
                             "(heal that pair) or none (heal everything), optionally followed "
                             "by the inventory")
    if len(words) in (0, 1):
        return None, (words[0] if words else None)
    if len(words) in (2, 3):
        return (words[0], words[1]), (words[2] if len(words) == 3 else None)
    raise MirrorkitError(f"lab heal: {len(words)} arguments; give two hosts (heal that pair) "
                         "or none (heal everything), optionally followed by the inventory")


def run(args: argparse.Namespace) -> int:
    if args.lab_command == "env":
        print(f"export CONTAINERS_CONF={shlex.quote(str(CONTAINERS_CONF))}")
        return 0
    if args.lab_command == "ssh":
        args.inventory_opt, args.command = _split_ssh_args(args.inventory_opt, args.command)
    if args.lab_command == "heal":
        args.pair, args.inventory = split_heal_words(args.words)
    if args.inventory_opt and getattr(args, "inventory", None):
        raise MirrorkitError("give the inventory once (positional or --inventory)")
    spec = load_spec(_inventory_path(args.inventory_opt or getattr(args, "inventory", None)))
    action: str = args.lab_command
    if action == "up":
        return _up(spec, args.timeout)
    if action == "down":
        return _down(spec, args.purge_image)
    if action == "status":
        return _status(spec)
    if action == "ssh":
        return _ssh(spec, args.host, args.command)
    if action == "stop":
        host = spec.host(args.host)
        lh.kill_host(spec, host)
        say(f"{host.name}: killed (SIGKILL); `mirrorkit lab start {host.name}` brings it back")
        return 0
    if action == "start":
        host = spec.host(args.host)
        with step(f"start {host.name}"):
            lh.start_host(spec, host)
            state = lh.wait_ready(host, args.timeout)
        say(f"{host.name}: {state}, SSH on {host.address}")
        return 0
    if action in ("partition", "loss", "heal", "pause", "resume"):
        return _fault(spec, action, args)
    raise MirrorkitError(f"unknown lab action {action}")


def _fault(spec: LabSpec, action: str, args: argparse.Namespace) -> int:
    if action == "partition":
        a, b = args.hosts
        lf.partition(spec, a, b)
        say(f"{a} and {b}: partitioned (no packet either way); `mirrorkit lab heal {a} {b}` "
            "restores the link")
    elif action == "loss":
        a, b = args.hosts
        lf.loss(spec, a, b, args.percent)
        say(f"{a} <-> {b}: {args.percent:g} % of the packets each sends the other are dropped"
            if args.percent else f"{a} <-> {b}: no packet loss")
    elif action == "heal":
        if args.pair is not None:
            a, b = args.pair
            lf.heal(spec, a, b)
            say(f"{a} <-> {b}: healed (no partition, no loss)")
        else:
            notes = lf.heal(spec)
            say("every fault removed" + (f"; not healed: {'; '.join(notes)}" if notes else ""))
    elif action == "pause":
        changed = lf.pause(spec, args.host)
        say(f"{args.host}: {'paused' if changed else 'already paused'} (every process frozen); "
            f"`mirrorkit lab resume {args.host}` thaws it")
    else:
        changed = lf.resume(spec, args.host)
        say(f"{args.host}: {'resumed' if changed else 'was not paused (running)'}")
    return 0


def _inventory_path(given: str | None) -> Path:
    if given:
        return Path(given)
    if DEFAULT_INVENTORY.exists():
        return DEFAULT_INVENTORY
    # Run from elsewhere with an editable install: the repository's lab inventory.
    repo = Path(__file__).resolve().parents[2] / DEFAULT_INVENTORY
    return repo if repo.exists() else DEFAULT_INVENTORY


def _up(spec: LabSpec, timeout: float) -> int:
    start = time.monotonic()
    key = ensure_lab_key()
    image = li.ensure_image()
    with step(f"network {spec.network} ({spec.subnet})"):
        say(f"network {spec.network}: {lh.ensure_network(spec)}")
    actions: dict[str, str] = {}
    with step(f"containers ({len(spec.hosts)})"):
        for host in spec.hosts:
            actions[host.name] = lh.ensure_container(spec, host, image)
    with step("waiting for systemd and SSH", f"up to {timeout:.0f} s"):
        states = lh.wait_all(list(spec.hosts), timeout)
    table = Table(title=f"lab {spec.network} {spec.subnet} ({spec.inventory})")
    for col in ("host", "address", "container", "systemd", "ssh"):
        table.add_column(col)
    for host in spec.hosts:
        table.add_row(host.name, host.address, actions[host.name], states[host.name], "ok")
    Console().print(table)
    print(f"image {image}; SSH key {key}; `mirrorkit lab ssh HOST` to log in")
    print(f"lab up in {time.monotonic() - start:.1f} s")
    return 0


def _down(spec: LabSpec, purge_image: bool) -> int:
    removed = lh.remove_hosts(spec)
    had_net = lh.remove_network(spec)
    say(f"removed containers: {', '.join(removed) or 'none'}; "
        f"network {spec.network}: {'removed' if had_net else 'absent'}")
    if purge_image:
        kept = li.purge_images()
        say(f"images and cache {li.cache_dir()} removed"
            + (f"; kept (in use): {', '.join(kept)}" if kept else ""))
    else:
        say(f"image cache kept ({li.host_image_ref()}, {li.cache_dir()}); "
            "`mirrorkit lab down --purge-image` removes it")
    return 0


def _status(spec: LabSpec) -> int:
    rows = lh.lab_status(spec, li.host_image_ref())
    table = Table(title=f"lab {spec.network} {spec.subnet} ({spec.inventory})")
    for col in ("host", "address", "container", "image", "systemd", "ssh"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.host.name, r.host.address, r.container, r.image, r.systemd,
                      "ok" if r.ssh else "-")
    Console().print(table)
    return 0 if all(r.ssh for r in rows) else 1


def _split_ssh_args(inventory: str | None, rest: list[str]) -> tuple[str | None, list[str]]:
    """`ssh HOST [-i INV] [--] [CMD...]`: argparse leaves everything after HOST in REST."""
    rest = list(rest)
    while rest and (rest[0] in ("-i", "--inventory") or rest[0].startswith("--inventory=")):
        opt = rest.pop(0)
        if "=" in opt:
            inventory = opt.split("=", 1)[1]
        elif rest:
            inventory = rest.pop(0)
        else:
            raise MirrorkitError(f"lab ssh: {opt} needs an inventory file")
    if rest and rest[0] == "--":
        rest = rest[1:]
    return inventory, rest


def _ssh(spec: LabSpec, name: str, command: list[str]) -> int:
    host = spec.host(name)
    if not lab_key_path().exists():
        raise MirrorkitError(f"no lab key at {lab_key_path()}; run `mirrorkit lab up` first")
    # Key-only lab: never stall on a password prompt; a powered-off host fails
    # in seconds instead of the system's default connect timeout.
    argv = ssh_command(host.address, command or None, batch=True, connect_timeout=5)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)
