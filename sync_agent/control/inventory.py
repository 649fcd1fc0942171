"""The fleet as Ansible sees it: the inventory's host variables over the frontfleet role's defaults (of the
collection shipped with this package).

`fab` and the release play read hosts through this one module, with
Ansible's own inventory loader and templating, so a play and `fab` always
agree on addresses, ports, users, paths and the namespace.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ProtocolError
from ..protocol import validate_namespace
from .sshargs import ssh_config_lines

# The Ansible collection beside the package: in the checkout, and in site-packages where the frontfleet
# distribution installs both (Ansible finds it there on sys.path).
COLLECTION = "frontfleet.fleet"
COLLECTION_DIR = Path(__file__).resolve().parents[2] / "ansible_collections" / "frontfleet" / "fleet"
DEFAULTS_FILE = COLLECTION_DIR / "roles" / "frontfleet" / "defaults" / "main.yml"

# The frontfleet_* settings the control plane needs, rendered per host.
_SETTINGS = (
    "frontfleet_app", "frontfleet_release_root", "frontfleet_namespace", "frontfleet_redis_address",
    "frontfleet_redis_port", "frontfleet_redis_direct", "frontfleet_http_address", "frontfleet_http_port",
    "frontfleet_immutable_paths", "frontfleet_keep_releases", "frontfleet_agent_venv", "frontfleet_credentials_dir",
)
# Connection variables, as Ansible's ssh connection plugin reads them.
_CONNECTION = (
    "ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file", "ansible_ssh_args",
    "ansible_ssh_common_args", "ansible_ssh_extra_args", "ansible_become", "ansible_become_method",
    "ansible_become_user",
)
ANSIBLE_DEFAULT_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s"  # the ssh plugin's own default


@dataclass(frozen=True)
class Host:
    """One host, reachable over OpenSSH, with the settings a play would give it."""

    name: str  # the inventory hostname: frontfleet's name for it everywhere
    address: str
    port: int | None = None
    user: str | None = None
    key_file: str | None = None
    # ssh_config lines ("Keyword value") of the ssh arguments, in Ansible's order: ssh_args come before the
    # connection variables above, ansible_ssh_common_args and _extra_args after them (sshargs.py)
    ssh_args_config: tuple[str, ...] = ()
    ssh_config: tuple[str, ...] = ()
    become: bool = False
    become_method: str = "sudo"
    become_user: str = "root"
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fleet:
    """The web hosts and the Redis host of one inventory."""

    source: str
    web: tuple[Host, ...]
    redis: Host

    def setting(self, name: str) -> Any:
        """A frontfleet_* setting, as the first web host sees it (the play runs the control plane once)."""
        host = self.web[0] if self.web else self.redis
        return host.settings[name]

    @property
    def namespace(self) -> str:
        """frontfleet_namespace, refused here (before any host or Redis is reached) when it is unsafe."""
        value = str(self.setting("frontfleet_namespace"))
        try:
            return validate_namespace(value)
        except ProtocolError as err:
            raise ConfigError(f"{self.source}: frontfleet_namespace: {err}") from err

    def host(self, name: str) -> Host:
        for candidate in (*self.web, self.redis):
            if candidate.name == name:
                return candidate
        raise ConfigError(f"{name} is not a host of the inventory {self.source}")


def default_inventory(cwd: Path | None = None) -> str:
    """$ANSIBLE_INVENTORY, else the `inventory` of ansible.cfg (as Ansible looks for it), else an error."""
    env = os.environ.get("ANSIBLE_INVENTORY")
    if env:
        return env.split(",")[0]
    config_file = ansible_config_file(cwd)
    value = _ansible_cfg_value(config_file, "defaults", "inventory")
    if config_file is not None and value:
        return str((config_file.parent / value.split(",")[0]).resolve())
    raise ConfigError("no inventory: pass -i/--inventory, set ANSIBLE_INVENTORY, or set inventory in ansible.cfg")


def ansible_config_file(cwd: Path | None = None) -> Path | None:
    """The ansible.cfg Ansible reads, found as it finds it: $ANSIBLE_CONFIG (a file, or a folder holding
    ansible.cfg), ./ansible.cfg unless the current folder is world-writable, ~/.ansible.cfg,
    /etc/ansible/ansible.cfg. (Ansible's own finder costs a tenth of a second of imports.)"""
    env = os.environ.get("ANSIBLE_CONFIG")
    candidates: list[Path] = []
    if env:
        path = Path(env).expanduser()
        candidates.append(path / "ansible.cfg" if path.is_dir() else path)
    here = cwd or Path.cwd()
    try:
        if not here.stat().st_mode & 0o002:
            candidates.append(here / "ansible.cfg")
    except OSError:
        pass
    candidates += [Path.home() / ".ansible.cfg", Path("/etc/ansible/ansible.cfg")]
    return next((path.resolve() for path in candidates if path.is_file()), None)


def default_ssh_args() -> str:
    """Ansible's `ssh_args` when no host sets `ansible_ssh_args`: $ANSIBLE_SSH_ARGS, else `[ssh_connection] ssh_args`
    of the ansible.cfg Ansible itself uses, else Ansible's default. (Read as the ssh plugin's config documents it,
    without loading the plugin: that costs a tenth of a second per command.)"""
    if "ANSIBLE_SSH_ARGS" in os.environ:
        return os.environ["ANSIBLE_SSH_ARGS"]
    value = _ansible_cfg_value(ansible_config_file(), "ssh_connection", "ssh_args")
    return ANSIBLE_DEFAULT_SSH_ARGS if value is None else value


def _ansible_cfg_value(config_file: Path | None, section: str, key: str) -> str | None:
    if config_file is None:
        return None
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config_file)
    return parser.get(section, key, fallback=None)


def load_fleet(source: str | None = None) -> Fleet:
    """Read an inventory with Ansible's loader; render what a play would see for each host."""
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template
    from ansible.vars.manager import VariableManager

    source = source or default_inventory()
    if not Path(source).exists():
        raise ConfigError(f"the inventory {source} does not exist")
    loader = DataLoader()
    _use_vault_secrets(loader)
    inventory = InventoryManager(loader=loader, sources=[source])
    variables = VariableManager(loader=loader, inventory=inventory)
    defaults = loader.load_from_file(str(DEFAULTS_FILE), trusted_as_template=True)
    groups = inventory.get_groups_dict()
    if not groups.get("web"):
        raise ConfigError(f"the inventory {source} has no host in the group 'web'")
    if not groups.get("redis"):
        raise ConfigError(f"the inventory {source} has no host in the group 'redis'")
    raw = {host.name: variables.get_vars(host=host) for host in inventory.get_hosts()}
    ssh_args = default_ssh_args()

    def render(name: str) -> Host:
        templar = Templar(loader=loader, variables={**defaults, **raw[name], "hostvars": raw})

        def value(var: str) -> Any:
            try:
                return templar.template(trust_as_template("{{ " + var + " | default(None) }}"))
            except AnsibleError as err:
                if "undecryptable" not in str(err):
                    raise ConfigError(f"{name}: {var}: {err.message}") from err
                raise ConfigError(f"{name}: {var} is vault-encrypted and no vault password was given: set "
                                  "ANSIBLE_VAULT_PASSWORD_FILE, or vault_password_file in ansible.cfg") from err

        settings = {var: value(var) for var in _SETTINGS}
        conn = {var: value(var) for var in _CONNECTION}
        return Host(
            name=name,
            address=str(conn["ansible_host"] or name),
            port=int(conn["ansible_port"]) if conn["ansible_port"] else None,
            user=conn["ansible_user"],
            key_file=str(Path(conn["ansible_ssh_private_key_file"]).expanduser())
            if conn["ansible_ssh_private_key_file"] else None,
            ssh_args_config=ssh_config_lines(conn["ansible_ssh_args"] or ssh_args, where=f"{name}: ssh_args"),
            ssh_config=ssh_config_lines(conn["ansible_ssh_common_args"], conn["ansible_ssh_extra_args"],
                                        where=f"{name}: ansible_ssh_common_args/ansible_ssh_extra_args"),
            become=bool(conn["ansible_become"]),
            become_method=conn["ansible_become_method"] or "sudo",
            become_user=conn["ansible_become_user"] or "root",
            settings=_plain(settings),
        )

    return Fleet(source=source, web=tuple(render(h) for h in groups["web"]), redis=render(groups["redis"][0]))


def _use_vault_secrets(loader: Any) -> None:
    """The vault passwords Ansible's own commands would use ($ANSIBLE_VAULT_PASSWORD_FILE, vault_password_file,
    vault ids), never a prompt: `fab` runs unattended as often as not."""
    from ansible import constants
    from ansible.cli import CLI
    from ansible.parsing.vault import VaultSecretsContext

    secrets = CLI.setup_vault_secrets(loader, list(constants.DEFAULT_VAULT_IDENTITY_LIST), auto_prompt=False,
                                      initialize_context=False)
    context = VaultSecretsContext.current(optional=True)
    if context is None:
        VaultSecretsContext.initialize(VaultSecretsContext(secrets))
    else:  # a second read in one process (tests; the release play reads once)
        context.secrets = secrets


def _plain(value: Any) -> Any:
    """Ansible's tagged values → plain Python (str, int, bool, list, dict)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)
