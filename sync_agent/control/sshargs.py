"""ssh(1) arguments as Ansible passes them (`ssh_args`, `ansible_ssh_common_args`, `ansible_ssh_extra_args`) turned
into ssh_config lines, so that `fab` reaches every host exactly as a play does. Each option is parsed as ssh's own
getopt does (`-p2222`, `-4C`, `-J jump`); an option that an ssh_config cannot express is refused, naming it, never
dropped."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ..errors import ConfigError

# Options that take a value, and the ssh_config keyword that says the same.
_VALUED = {
    "-B": "BindInterface", "-b": "BindAddress", "-c": "Ciphers", "-D": "DynamicForward", "-e": "EscapeChar",
    "-F": "Include",
    "-I": "PKCS11Provider", "-i": "IdentityFile", "-J": "ProxyJump", "-L": "LocalForward", "-l": "User",
    "-m": "MACs", "-P": "Tag", "-p": "Port", "-R": "RemoteForward", "-S": "ControlPath",
}
# Flags, and the ssh_config lines they stand for.
_FLAGS = {
    "-4": ("AddressFamily inet",), "-6": ("AddressFamily inet6",), "-A": ("ForwardAgent yes",),
    "-a": ("ForwardAgent no",), "-C": ("Compression yes",), "-g": ("GatewayPorts yes",),
    "-K": ("GSSAPIAuthentication yes", "GSSAPIDelegateCredentials yes"), "-k": ("GSSAPIDelegateCredentials no",),
    "-M": ("ControlMaster yes",), "-q": ("LogLevel QUIET",), "-T": ("RequestTTY no",), "-X": ("ForwardX11 yes",),
    "-x": ("ForwardX11 no",), "-Y": ("ForwardX11 yes", "ForwardX11Trusted yes"),
}
# What an ssh_config cannot say, or what would break the commands frontfleet runs (their stdin and stdout carry
# the staging stream and JSON answers).
_REFUSED = {
    "-E": "writes ssh's log to a file",
    "-f": "backgrounds ssh", "-G": "prints the configuration instead of connecting", "-N": "runs no command",
    "-n": "closes the command's stdin", "-O": "sends a control command", "-Q": "queries ssh instead of connecting",
    "-s": "runs a subsystem, not a command", "-t": "allocates a TTY, which corrupts the staging stream",
    "-V": "prints ssh's version", "-W": "forwards stdio instead of running a command", "-w": "opens a tun device",
    "-y": "logs to syslog",
}
_VERBOSITY = ("LogLevel DEBUG1", "LogLevel DEBUG2", "LogLevel DEBUG3")
_OPTION = re.compile(r"\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+)(.*\S)\s*$")


def ssh_config_lines(*args: str | None, where: str = "ssh arguments") -> tuple[str, ...]:
    """ssh_config lines ("Keyword value") for the ssh command-line arguments in args, in their order (ssh takes the
    first value of a keyword, as it takes the first -o). ConfigError names what cannot be expressed."""
    lines: list[str] = []
    for arg in args:
        words = shlex.split(arg or "")
        index = 0
        while index < len(words):
            word = words[index]
            index += 1
            if not word.startswith("-") or word in ("-", "--"):
                raise ConfigError(f"{where}: {word!r} is not an ssh option; a destination or a command does not "
                                  "belong in the ssh arguments")
            verbosity = 0
            position = 1
            while position < len(word):
                flag = "-" + word[position]
                position += 1
                if flag == "-o" or flag in _VALUED:
                    value = word[position:]
                    if not value:
                        if index >= len(words):
                            raise ConfigError(f"{where}: {flag} needs a value")
                        value = words[index]
                        index += 1
                    lines.append(_option(value, where) if flag == "-o" else _valued(flag, value))
                    break
                if flag == "-v":
                    verbosity += 1
                elif flag in _FLAGS:
                    lines.extend(_FLAGS[flag])
                elif flag in _REFUSED:
                    raise ConfigError(f"{where}: {flag} cannot be used: it {_REFUSED[flag]}")
                else:
                    raise ConfigError(f"{where}: {flag} is not an option of ssh(1)")
            if verbosity:
                lines.append(_VERBOSITY[min(verbosity, 3) - 1])
    return tuple(lines)


def _option(value: str, where: str) -> str:
    """`-o Keyword=value` or `-o "Keyword value"`, as ssh_config writes it."""
    match = _OPTION.match(value)
    if match is None:
        raise ConfigError(f"{where}: -o {value!r} is not Keyword=value")
    return f"{match.group(1)} {match.group(2)}"


def _valued(flag: str, value: str) -> str:
    keyword = _VALUED[flag]
    if flag == "-F":  # another ssh_config, read for this host after what comes before it; a jump host named there
        value = str(Path(value).expanduser().resolve())  # resolves too (ssh hands its own -F to the jump's ssh)
    if flag in ("-L", "-R"):  # [bind_address:]port:host:hostport → "[bind_address:]port host:hostport"
        parts = re.findall(r"\[[^]]*\]|[^:]+", value)
        if len(parts) >= 3:
            value = f"{':'.join(parts[:-2])} {parts[-2]}:{parts[-1]}"
        elif len(parts) == 2:  # port:remote_socket
            value = f"{parts[0]} {parts[1]}"
    return f"{keyword} {value}"
