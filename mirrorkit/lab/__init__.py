"""The local lab: Debian systemd containers standing in for servers (`mirrorkit lab`).

Reusable from molecule scenarios, tests and other commands:

- `mirrorkit.lab.podman.podman_env()` / `CONTAINERS_CONF`: the environment every
  podman call (and every molecule / ansible run that drives podman) needs;
- `mirrorkit.lab.sshkey.lab_key_path()`, `ensure_lab_key(path=None)`,
  `ssh_command(address, cmd)`;
- `mirrorkit.lab.image.ensure_image()` (build or reuse; returns the tag),
  `host_image_ref()`;
- `mirrorkit.lab.spec.load_spec(inventory)` and `mirrorkit.lab.hosts`
  (`ensure_network`, `ensure_container`, `wait_all`, `remove_hosts`,
  `remove_network`, `kill_host`, `start_host`).
"""
