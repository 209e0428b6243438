#!/usr/bin/python
"""Create or refresh every mirror's CA and member certificates on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mirrorkit_pki
short_description: Per-mirror CA and member certificates (controller side)
description:
  - Calls C(mirrorkit.pki.ensure_mirror_pki) for every mirror. Run it on the
    controller with C(ansible_python_interpreter) set to C(ansible_playbook_python)
    so that the C(mirrorkit) package is importable.
  - Idempotent: reports a change only when a CA, key or certificate was created
    or reissued. In check mode the work is done on a throw-away copy of
    I(pki_dir) to tell whether anything would change; I(pki_dir) is untouched.
options:
  pki_dir:
    description: Controller-side CA store (C(<pki_dir>/<mirror>/)).
    type: path
    required: true
  members:
    description: C({mirror: {host: [ip, class]}}), class one of failover, arbiter, async
      (the C(mirrorkit_pki_members) filter's output).
    type: dict
    required: true
author: mirrorkit
"""

RETURN = r"""
changed_mirrors: {description: Mirrors whose PKI was (or would be) created or refreshed., type: list, returned: always}
pki_dir: {description: The expanded controller-side PKI directory., type: str, returned: always}
"""

import os
import shutil
import tempfile
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule


def ensure_all(pki_dir, members):
    from mirrorkit.pki import ensure_mirror_pki

    changed = []
    for mirror in sorted(members):
        hosts = {h: (str(v[0]), str(v[1])) for h, v in members[mirror].items()}
        if ensure_mirror_pki(Path(pki_dir), mirror, hosts):
            changed.append(mirror)
    return changed


def main():
    module = AnsibleModule(
        argument_spec={
            "pki_dir": {"type": "path", "required": True},
            "members": {"type": "dict", "required": True},
        },
        supports_check_mode=True,
    )
    pki_dir = os.path.expanduser(module.params["pki_dir"])
    members = module.params["members"]
    try:
        import mirrorkit.pki  # noqa: F401
    except ImportError as exc:
        module.fail_json(
            msg="cannot import mirrorkit.pki (%s): run this task with "
            "ansible_python_interpreter set to ansible_playbook_python, in the "
            "environment where mirrorkit is installed" % exc
        )
    try:
        if module.check_mode:
            scratch = tempfile.mkdtemp(prefix="mirrorkit-pki-check-")
            try:
                copy = os.path.join(scratch, "pki")
                if os.path.isdir(pki_dir):
                    shutil.copytree(pki_dir, copy, symlinks=True)
                changed = ensure_all(copy, members)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        else:
            changed = ensure_all(pki_dir, members)
    except Exception as exc:  # MirrorkitError carries an actionable message
        module.fail_json(msg=str(exc), exception_type=type(exc).__name__)
    module.exit_json(changed=bool(changed), changed_mirrors=changed, pki_dir=pki_dir)


if __name__ == "__main__":
    main()
