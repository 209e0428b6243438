"""High availability: which worker runs a mirror on this host, and (with the
failover issue) the state machine that decides role changes."""
