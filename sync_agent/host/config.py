"""The agent's configuration: one TOML file, validated once into a frozen dataclass.

Every key is documented in docs/configuration.md. A wrong or missing key is a
ConfigError whose message names the key, so `systemctl status` shows one line
an operator can act on. The password can live in its own file (`password_file`)
so the config itself holds no secret.
"""

from __future__ import annotations

import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, ProtocolError
from ..layout import SHARED
from ..protocol import agent_user, validate_host, validate_namespace

LOG_LEVELS = ("debug", "info", "warning", "error")

# section → key → (type, required)
_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "agent": {
        "host": (str, True),
        "namespace": (str, False),
        "release_root": (str, True),
        "templates_dir": (str, False),
        "log_level": (str, False),
    },
    "redis": {
        "url": (str, True),
        "username": (str, False),
        "password": (str, False),
        "password_file": (str, False),
        "ca_file": (str, False),
        "connect_timeout": ((int, float), False),
        "command_timeout": ((int, float), False),
    },
    "intervals": {
        "heartbeat": ((int, float), False),
        "reconcile": ((int, float), False),
        "probe": ((int, float), False),
        "probe_timeout": ((int, float), False),
        "reconnect_min": ((int, float), False),
        "reconnect_max": ((int, float), False),
    },
    "live": {
        "socket": (str, False),
        "max_clients": (int, False),
        "ring": (int, False),
        "heartbeat": ((int, float), False),
        "client_buffer": (int, False),
    },
}


@dataclass(frozen=True)
class LiveOptions:
    """The live stream's `[live]` section (docs/configuration.md): on when `socket` is set."""

    socket: Path
    max_clients: int = 10_000
    ring: int = 1024  # changes kept in memory for clients that reconnect
    heartbeat: float = 15.0  # seconds between `: ping` comments on every stream
    client_buffer: int = 1024 * 1024  # unsent bytes past which a client has fallen behind and is dropped


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent reads from its config file, checked."""

    host: str
    release_root: Path
    redis_url: str
    namespace: str = "frontfleet"
    templates_dir: Path | None = None
    log_level: str = "info"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    connect_timeout: float = 5.0
    command_timeout: float = 5.0
    heartbeat: float = 5.0
    reconcile: float = 30.0
    probe: float = 5.0
    probe_timeout: float = 10.0  # unless set: twice the probe interval, at least 1 s
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    live: LiveOptions | None = None  # the live stream, off unless [live] socket is set

    @property
    def shared_dir(self) -> Path:
        return self.release_root / SHARED

    @property
    def log_level_number(self) -> int:
        return int(getattr(logging, self.log_level.upper()))


def _default(name: str) -> Any:
    """A setting's default, written once: in AgentConfig above."""
    return AgentConfig.__dataclass_fields__[name].default


def _check_type(name: str, value: Any, kind: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        wanted = {(int, float): "a number", int: "an integer"}.get(kind, "a string")
        raise ConfigError(f"{name} must be {wanted}, got {value!r}")


def _positive(name: str, value: Any) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return number


def parse_config(body: dict[str, Any], source: str = "config") -> AgentConfig:
    """Validate a parsed TOML document; every error names the offending key as section.key."""
    for section, value in body.items():
        if section not in _SCHEMA:
            raise ConfigError(f"{source}: unknown section or key {section!r} (known: {', '.join(_SCHEMA)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {section} must be a [{section}] table")
    values: dict[str, Any] = {}
    for section, spec in _SCHEMA.items():
        table = body.get(section, {})
        for key in table:
            if key not in spec:
                raise ConfigError(f"{source}: unknown key {section}.{key} (known: {', '.join(spec)})")
        for key, (kind, required) in spec.items():
            name = f"{section}.{key}"
            if key not in table:
                if required:
                    raise ConfigError(f"{source}: missing key {name}")
                continue
            _check_type(f"{source}: {name}", table[key], kind)
            values[name] = table[key]

    try:
        host = validate_host(values["agent.host"])
    except ProtocolError as err:
        raise ConfigError(f"{source}: agent.host: {err}") from err
    namespace = values.get("agent.namespace", _default("namespace"))
    try:
        validate_namespace(namespace)
    except ProtocolError as err:
        raise ConfigError(f"{source}: agent.namespace: {err}") from err
    root = Path(values["agent.release_root"])
    if not root.is_absolute():
        raise ConfigError(f"{source}: agent.release_root must be an absolute path, got {str(root)!r}")
    templates = values.get("agent.templates_dir")
    if templates is not None and not Path(templates).is_absolute():
        raise ConfigError(f"{source}: agent.templates_dir must be an absolute path, got {templates!r}")
    level = values.get("agent.log_level", _default("log_level")).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{source}: agent.log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")

    url = values["redis.url"]
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"{source}: redis.url must be redis://HOST:PORT[/0] or rediss://…, got {url!r}")
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigError(f"{source}: redis.url names database {parts.path.strip('/')!r}; frontfleet uses database 0 "
                          "(an agent's ACL user may not SELECT another): redis://HOST:PORT/0")
    try:
        _ = parts.port
    except ValueError as err:
        raise ConfigError(f"{source}: redis.url has a bad port: {url!r}") from err
    if parts.password:
        raise ConfigError(f"{source}: redis.url must not hold a password; use redis.password_file")
    if "redis.password" in values and "redis.password_file" in values:
        raise ConfigError(f"{source}: redis.password and redis.password_file are exclusive; keep password_file")
    password = values.get("redis.password")
    if "redis.password_file" in values:
        path = values["redis.password_file"]
        try:
            password = Path(path).read_text().strip()
        except OSError as err:
            raise ConfigError(f"{source}: redis.password_file {path!r} cannot be read: {err.strerror}") from err
        if not password:
            raise ConfigError(f"{source}: redis.password_file {path!r} is empty")
    username = values.get("redis.username") or parts.username or (agent_user(host) if password else None)
    ca_file = values.get("redis.ca_file")
    if ca_file is not None and parts.scheme != "rediss":
        raise ConfigError(f"{source}: redis.ca_file needs a rediss:// redis.url")

    seconds = {key: _positive(f"{source}: {key}", values[key]) for key in values
               if key.startswith("intervals.") or key.endswith("_timeout")}
    reconnect_min = seconds.get("intervals.reconnect_min", _default("reconnect_min"))
    reconnect_max = seconds.get("intervals.reconnect_max", _default("reconnect_max"))
    if reconnect_max < reconnect_min:
        raise ConfigError(f"{source}: intervals.reconnect_max ({reconnect_max}) is below "
                          f"intervals.reconnect_min ({reconnect_min})")
    live = _live_options(values, source)
    probe = seconds.get("intervals.probe", _default("probe"))
    probe_timeout = seconds.get("intervals.probe_timeout", max(2 * probe, 1.0))
    return AgentConfig(
        host=host,
        release_root=root,
        redis_url=url,
        namespace=namespace,
        templates_dir=Path(templates) if templates is not None else None,
        log_level=level,
        username=username,
        password=password,
        ca_file=ca_file,
        connect_timeout=seconds.get("redis.connect_timeout", _default("connect_timeout")),
        command_timeout=seconds.get("redis.command_timeout", _default("command_timeout")),
        heartbeat=seconds.get("intervals.heartbeat", _default("heartbeat")),
        reconcile=seconds.get("intervals.reconcile", _default("reconcile")),
        probe=probe,
        probe_timeout=probe_timeout,
        reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        live=live,
    )


def _live_options(values: dict[str, Any], source: str) -> LiveOptions | None:
    """The [live] section, checked; None (the stream off) when it names no socket."""
    if "live.socket" not in values:
        extra = sorted(key for key in values if key.startswith("live."))
        if extra:
            raise ConfigError(f"{source}: {extra[0]} is set but live.socket is not (the stream is on only with it)")
        return None
    path = Path(values["live.socket"])
    if not path.is_absolute():
        raise ConfigError(f"{source}: live.socket must be an absolute path, got {str(path)!r}")
    if len(str(path).encode()) > 107:
        raise ConfigError(f"{source}: live.socket is longer than a unix socket path may be (107 bytes)")
    numbers: dict[str, Any] = {}
    for key in ("max_clients", "ring", "client_buffer"):
        if f"live.{key}" in values:
            if values[f"live.{key}"] < 1:
                raise ConfigError(f"{source}: live.{key} must be at least 1, got {values[f'live.{key}']!r}")
            numbers[key] = values[f"live.{key}"]
    if "live.heartbeat" in values:
        numbers["heartbeat"] = _positive(f"{source}: live.heartbeat", values["live.heartbeat"])
    return LiveOptions(path, **numbers)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the TOML file at path."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the config file {path}: {err.strerror}") from err
    try:
        body = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    return parse_config(body, str(path))
