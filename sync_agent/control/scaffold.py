"""`frontfleet init`: a team's own repository made ready to deploy with the installed `frontfleet` distribution.

It writes a starter inventory (inventory/<env>/: hosts.yml, group_vars/all/vars.yml, a .gitignore for the
generated credentials/), an ansible.cfg that points at it, and a fabfile that imports the fab tasks. The roles and
playbooks stay in the installed collection (`ansible-playbook frontfleet.fleet.deploy`), so an upgrade is a `pip
install -U` and nothing to copy. An existing file is never overwritten without --force: then nothing is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..fsutil import atomic_write
from .inventory import COLLECTION

_ANSIBLE_CFG = """\
# Written by `frontfleet init`. Ansible and `fab` both read it (fab: the inventory and ssh_args).
[defaults]
inventory = inventory/{env}
forks = 20
interpreter_python = auto_silent
retry_files_enabled = false
host_key_checking = true

[ssh_connection]
pipelining = true
ssh_args = -o ControlMaster=auto -o ControlPersist=60s
"""

_FABFILE = '''\
"""frontfleet's fab tasks: fab rollout, rollback, status, data-set … (`fab --list`). Written by `frontfleet init`."""

from sync_agent.control.fabtasks import *  # noqa: F403
'''

_HOSTS = """\
---
# Written by `frontfleet init`: replace these hosts with yours. frontfleet needs hosts in the groups web (nginx and
# the sync agent) and redis (one host), each with ansible_host; the rest is in group_vars/all/vars.yml.
all:
  children:
    web:
      hosts:
        web1:
          ansible_host: 192.0.2.11
        web2:
          ansible_host: 192.0.2.12
    redis:
      hosts:
        redis1:
          ansible_host: 192.0.2.21
"""

_VARS = """\
---
# Written by `frontfleet init`. Every setting and its default: the frontfleet.fleet collection's
# roles/*/defaults/main.yml (frontfleet_* are shared by the roles and fab).
ansible_user: deploy
ansible_become: true
# ansible_ssh_private_key_file: ~/.ssh/frontfleet_deploy
# ansible_ssh_common_args: "-o ProxyJump=deploy@bastion.example.com"
frontfleet_app: {app}
# Your own runtime templates (*.j2, rendered into /_sync/ on every data change), instead of the starter env.js.j2:
# sync_agent_templates_src: "{{{{ inventory_dir }}}}/../../templates"
"""

_GITIGNORE = """\
# Redis ACL passwords the roles generate for this fleet: keep them out of git (or in a vault).
credentials/
"""


@dataclass(frozen=True)
class Scaffold:
    """What `frontfleet init` wrote."""

    directory: Path
    files: tuple[str, ...]
    inventory: str

    def to_json(self) -> dict[str, object]:
        return {"directory": str(self.directory), "files": list(self.files), "inventory": self.inventory,
                "deploy": f"ansible-playbook {COLLECTION}.deploy -e release_build=dist/"}

    def to_text(self) -> str:
        written = "\n".join(f"  {name}" for name in self.files)
        return (f"wrote in {self.directory}:\n{written}\n\nNext: put your hosts in {self.inventory}/hosts.yml, then\n"
                f"  ansible-playbook {COLLECTION}.deploy -e release_build=dist/   # provision and deploy\n"
                "  fab rollout --build dist/                                    # the fast path from then on\n"
                "  fab status")


def app_name(directory: Path) -> str:
    """The folder's name as frontfleet_app (it names the release root, the Redis namespace and the nginx site)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", directory.resolve().name).strip("-_")
    return name or "frontfleet"


def init(directory: Path, env: str = "production", app: str | None = None, force: bool = False) -> Scaffold:
    """Write the starter files into directory (created if missing); refuse, writing nothing, if one exists."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", env):
        raise UsageError(f"--env {env!r}: use letters, digits, _ and - (it names the folder inventory/{env})")
    app = app or app_name(directory)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", app):
        raise UsageError(f"--app {app!r}: use letters, digits, _ and - (it names the release root and namespace)")
    inventory = f"inventory/{env}"
    files = {"ansible.cfg": _ANSIBLE_CFG.format(env=env), "fabfile.py": _FABFILE,
             f"{inventory}/hosts.yml": _HOSTS, f"{inventory}/group_vars/all/vars.yml": _VARS.format(app=app),
             f"{inventory}/.gitignore": _GITIGNORE}
    existing = sorted(name for name in files if (directory / name).exists())
    if existing and not force:
        raise UsageError(f"{directory}: {', '.join(existing)} already exist; nothing was written (--force "
                         "overwrites them)")
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode())
    return Scaffold(directory.resolve(), tuple(files), inventory)
