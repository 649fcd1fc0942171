"""Reading the fleet from an Ansible inventory as a play would, and the ssh_config made from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync_agent.control.inventory import default_inventory, load_fleet
from sync_agent.control.remote import ssh_config_text
from sync_agent.errors import ConfigError

pytestmark = pytest.mark.unit

HOSTS = """
all:
  children:
    web:
      hosts:
        web-a: {ansible_host: 10.0.0.1}
        web-b: {ansible_host: 10.0.0.2, ansible_port: 2222}
    redis:
      hosts:
        cache: {ansible_host: 10.0.0.9}
  vars:
    ansible_user: deploy
    ansible_become: true
    ansible_ssh_private_key_file: ~/.ssh/fleet
    ansible_ssh_common_args: "-J deploy@bastion -o StrictHostKeyChecking=yes"
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    folder = tmp_path / "prod"
    (folder / "group_vars" / "web").mkdir(parents=True)
    (folder / "hosts.yml").write_text(HOSTS)
    (folder / "group_vars" / "web" / "vars.yml").write_text("frontfleet_app: shop\nfrontfleet_http_port: 8080\n")
    return folder


def test_host_settings_are_the_role_defaults_rendered_under_the_inventory(inventory):
    fleet = load_fleet(str(inventory))
    assert [h.name for h in fleet.web] == ["web-a", "web-b"] and fleet.redis.name == "cache"
    web = fleet.host("web-a")
    assert web.settings["frontfleet_release_root"] == "/srv/shop"
    assert web.settings["frontfleet_namespace"] == "shop"
    assert web.settings["frontfleet_redis_address"] == "10.0.0.9", "the first redis host's ansible_host"
    assert web.settings["frontfleet_http_port"] == 8080
    assert web.settings["frontfleet_credentials_dir"] == f"{inventory}/credentials"
    assert web.settings["frontfleet_immutable_paths"] == ["assets/", "_next/static/", "static/"]


def test_connection_variables_become_an_ssh_config_like_ansibles(inventory, tmp_path, monkeypatch):
    monkeypatch.setenv("ANSIBLE_SSH_ARGS", "-C -o ControlPersist=30s")
    fleet = load_fleet(str(inventory))
    web_b = fleet.host("web-b")
    assert (web_b.address, web_b.port, web_b.user, web_b.become) == ("10.0.0.2", 2222, "deploy", True)
    text = ssh_config_text(list(fleet.web), tmp_path)
    block = text.split("\n\n")[1]
    # Ansible's order: ssh_args, then the connection variables, then ansible_ssh_common_args (ssh takes the first)
    assert block.startswith("Host web-b\n  Compression yes\n  ControlPersist 30s\n  HostName 10.0.0.2\n  Port 2222\n"
                            "  User deploy\n")
    assert f"IdentityFile {Path('~/.ssh/fleet').expanduser()}" in block
    assert "  ProxyJump deploy@bastion" in block and "  StrictHostKeyChecking yes" in block
    assert f"ControlPath {tmp_path}/%C" in block


def test_ssh_args_come_from_the_host_then_the_environment_then_ansible_cfg_then_ansibles_default(
        inventory, tmp_path, monkeypatch):
    (inventory / "host_vars").mkdir()  # before the first load: Ansible caches what a vars folder holds
    (inventory / "host_vars" / "web-a.yml").write_text('ansible_ssh_args: "-4"\n')
    monkeypatch.delenv("ANSIBLE_SSH_ARGS", raising=False)
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ansible.cfg here: Ansible's own default
    fleet = load_fleet(str(inventory))
    assert fleet.host("web-a").ssh_args_config == ("AddressFamily inet",)
    assert fleet.host("web-b").ssh_args_config == ("Compression yes", "ControlMaster auto", "ControlPersist 60s")
    (tmp_path / "ansible.cfg").write_text("[ssh_connection]\nssh_args = -6 -o ControlPersist=90s\n")
    assert load_fleet(str(inventory)).host("web-b").ssh_args_config == ("AddressFamily inet6", "ControlPersist 90s")
    monkeypatch.setenv("ANSIBLE_SSH_ARGS", "-o ControlPersist=5s")
    fleet = load_fleet(str(inventory))
    assert fleet.host("web-b").ssh_args_config == ("ControlPersist 5s",)
    assert fleet.host("web-a").ssh_args_config == ("AddressFamily inet",)


def test_an_ssh_option_that_an_ssh_config_cannot_say_is_refused_naming_the_host(inventory):
    (inventory / "host_vars").mkdir()
    (inventory / "host_vars" / "web-b.yml").write_text('ansible_ssh_extra_args: "-tt"\n')
    with pytest.raises(ConfigError, match=r"web-b: ansible_ssh_common_args/ansible_ssh_extra_args: -t cannot be used"):
        load_fleet(str(inventory))


def test_an_inventory_without_a_redis_group_is_refused_clearly(tmp_path):
    (tmp_path / "hosts.yml").write_text("all:\n  children:\n    web:\n      hosts:\n        w1: {}\n")
    with pytest.raises(ConfigError, match="no host in the group 'redis'"):
        load_fleet(str(tmp_path / "hosts.yml"))


def test_the_inventory_comes_from_the_environment_then_ansible_cfg(tmp_path, monkeypatch):
    monkeypatch.delenv("ANSIBLE_INVENTORY", raising=False)
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    (tmp_path / "ansible.cfg").write_text("[defaults]\ninventory = inventory/demo\n")
    assert default_inventory(tmp_path) == str(tmp_path / "inventory" / "demo")
    monkeypatch.setenv("ANSIBLE_INVENTORY", "/srv/inv/prod")
    assert default_inventory(tmp_path) == "/srv/inv/prod"


def test_a_namespace_with_a_colon_is_refused_naming_it_before_any_host_is_reached(inventory):
    (inventory / "group_vars" / "web" / "vars.yml").write_text("frontfleet_namespace: 'shop:eu'\n")
    fleet = load_fleet(str(inventory))
    with pytest.raises(ConfigError, match=r"frontfleet_namespace: namespace 'shop:eu' contains ':'.*'shop-eu'"):
        fleet.namespace  # noqa: B018 - the property is the check
