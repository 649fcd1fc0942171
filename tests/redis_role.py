"""The redis role's memory settings, rendered from the role itself for a test Redis: its defaults/main.yml and
its redis.conf template, for a fleet of N web hosts. So the integration tests run against the limits a deployed
Redis has, written down in one place (the role), never retyped."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import jinja2
import yaml
from ansible.module_utils.common.text.formatters import human_to_bytes

ROLE = Path(__file__).resolve().parents[1] / "ansible_collections/frontfleet/fleet/roles/redis"
# The directives of redis.conf.j2 that bound memory and connections (docs/reliability.md, "Memory budget").
MEMORY_DIRECTIVES = ("maxmemory", "maxmemory-policy", "maxmemory-clients", "proto-max-bulk-len",
                     "client-query-buffer-limit", "client-output-buffer-limit", "maxclients", "rename-command")


def _environment() -> jinja2.Environment:
    """Jinja as Ansible sets it up, for the filters the role uses."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["comment"] = lambda text: f"# {text}"
    env.filters["ansible.builtin.human_to_bytes"] = human_to_bytes
    return env


def role_defaults(web_hosts: int) -> dict[str, Any]:
    """The role's defaults, every Jinja expression in them rendered for an inventory with web_hosts web hosts."""
    context: dict[str, Any] = {"groups": {"web": [f"web{n}" for n in range(1, web_hosts + 1)]},
                               "frontfleet_redis_address": "127.0.0.1", "frontfleet_redis_port": 6379}
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    env = _environment()
    pending = dict(defaults)
    while pending:  # a default may use one defined below it, as Ansible's lazy templating allows
        for name, value in list(pending.items()):
            try:
                context[name] = env.from_string(value).render(context) if isinstance(value, str) else value
            except jinja2.UndefinedError:
                continue
            del pending[name]
        if len(pending) == len(defaults):
            raise ValueError(f"cannot render the redis role's defaults {sorted(pending)}")
        defaults = dict(pending)
    return context


def memory_settings(web_hosts: int) -> list[tuple[str, str]]:
    """(directive, value) of every memory and connection limit redis.conf.j2 writes, rendered with role_defaults."""
    conf = _environment().from_string((ROLE / "templates/etc/redis/redis.conf.j2").read_text()).render(
        {**role_defaults(web_hosts), "ansible_managed": "test"})
    settings = []
    for line in conf.splitlines():
        directive, _, value = line.partition(" ")
        if directive in MEMORY_DIRECTIVES:
            settings.append((directive, value))
    return settings


def server_arguments(web_hosts: int) -> list[str]:
    """The settings as redis-server command-line options (`--maxmemory 90mb …`), quoted values unquoted."""
    return [part for directive, value in memory_settings(web_hosts) for part in (f"--{directive}", *shlex.split(value))]
