"""Warnings about settings that are valid but risky (``mirrorkit validate``
prints them; they never fail validation): :func:`timing_warnings`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirrorkit.inventory.model import Timeouts

__all__ = ["QOS_TUNED_FLOOR", "timing_warnings"]

# Below the default qos the lease and the backup's patience are shorter than
# a loaded host's stalls: measured on the lab (bench/RESULTS.md, "Failover
# (issue 8)"), qos 0.4 s gave a false failover at load average 20 on 2 cores;
# the defaults gave none.
QOS_TUNED_FLOOR = Timeouts().qos


def timing_warnings(all_vars: Mapping[str, Any]) -> list[str]:
    """One line per mirror whose failover timers are tighter than the defaults."""
    mirrors = all_vars.get("mirrorkit_mirrors")
    if not isinstance(mirrors, Mapping):
        return []
    out = []
    for name, spec in mirrors.items():
        timeouts = spec.get("timeouts") if isinstance(spec, Mapping) else None
        qos = timeouts.get("qos") if isinstance(timeouts, Mapping) else None
        if isinstance(qos, int | float) and not isinstance(qos, bool) \
                and 0 < qos < QOS_TUNED_FLOOR:
            out.append(
                f"mirror {name}: timeouts.qos {qos:g} s is below the default "
                f"{QOS_TUNED_FLOOR:g} s: a member stalled longer than that (a loaded host, "
                f"a slow disk) loses its lease or is taken for dead. On the lab at load "
                f"average 20, qos 0.4 s gave a false failover (bench/RESULTS.md). Measure "
                f"with `make bench-failover` on hosts like yours before relying on it")
    return out
