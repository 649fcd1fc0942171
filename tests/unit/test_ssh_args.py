"""ssh arguments from an inventory become the ssh_config lines that say the same; the rest is refused by name."""

from __future__ import annotations

import pytest

from sync_agent.control.sshargs import ssh_config_lines
from sync_agent.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("args", "lines"), [
    ("-o ControlMaster=auto -o ControlPersist=60s", ("ControlMaster auto", "ControlPersist 60s")),
    ("-oStrictHostKeyChecking=no", ("StrictHostKeyChecking no",)),
    ("-o 'ProxyCommand ssh -W %h:%p -o Port=2 bastion'", ("ProxyCommand ssh -W %h:%p -o Port=2 bastion",)),
    ("-J deploy@bastion:2222", ("ProxyJump deploy@bastion:2222",)),
    ("-Jbastion", ("ProxyJump bastion",)),
    ("-p 2222 -l deploy -i ~/.ssh/fleet", ("Port 2222", "User deploy", "IdentityFile ~/.ssh/fleet")),
    ("-p2222", ("Port 2222",)),
    ("-4C", ("AddressFamily inet", "Compression yes")),
    ("-Cp 2222", ("Compression yes", "Port 2222")),
    ("-vvv", ("LogLevel DEBUG3",)),
    ("-L 8080:localhost:80", ("LocalForward 8080 localhost:80",)),
    ("-R 127.0.0.1:9000:db:5432", ("RemoteForward 127.0.0.1:9000 db:5432",)),
    ("-D 1080", ("DynamicForward 1080",)),
    ("-F /etc/fleet/ssh_config -J web1", ("Include /etc/fleet/ssh_config", "ProxyJump web1")),
    ("", ()),
])
def test_ssh_arguments_become_ssh_config_lines(args: str, lines: tuple[str, ...]) -> None:
    assert ssh_config_lines(args) == lines


def test_every_argument_string_contributes_in_order() -> None:
    assert ssh_config_lines("-C -o ControlPersist=60s", None, "-J jump", "-p 22") == (
        "Compression yes", "ControlPersist 60s", "ProxyJump jump", "Port 22")


@pytest.mark.parametrize(("args", "message"), [
    ("-t", "-t cannot be used: it allocates a TTY"),
    ("-n", "-n cannot be used: it closes the command's stdin"),
    ("-E /tmp/ssh.log", "-E cannot be used"),
    ("-Z", "-Z is not an option of ssh(1)"),
    ("-p", "-p needs a value"),
    ("-o NoValue", "-o 'NoValue' is not Keyword=value"),
    ("bastion", "'bastion' is not an ssh option"),
])
def test_what_an_ssh_config_cannot_say_is_refused_by_name(args: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        ssh_config_lines(args, where="web1: ansible_ssh_common_args")
    assert str(refused.value).startswith("web1: ansible_ssh_common_args: ")
