"""records-app: the demo application on the VIP (issue 8, part 1).

A small HTTP service that stores each write it accepts as one file under
the mirrored path and answers only once that file is durable on the local
disk. It runs on the primary only (the lab inventory's ``on_promote`` /
``on_demote`` hooks start and stop ``records-app.service``), so a client
writing to the VIP sees failover as any application would: requests fail,
then succeed on the new primary, and every record acknowledged before the
failover that was replicated is still readable there.

Standard library only (``http.server``): it runs from the agent's venv on
the targets and must not widen what the targets need. Parts:

- ``store``: record ids and the durable write (temp, fsync, rename, fsync dir);
- ``server``: the HTTP API, with its bounds (connections, body, request time);
- ``main``: the ``mirrorkit-records-app`` command line.
"""
