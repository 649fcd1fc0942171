"""The fleet read from an inventory is cached until anything it depends on changes; vault data never is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sync_agent.control.fleetcache import cache_dir, cached_fleet
from sync_agent.control.inventory import ansible_config_file, load_fleet

pytestmark = pytest.mark.unit

HOSTS = """
all:
  children:
    web:
      hosts:
        web-a: {ansible_host: 10.0.0.1}
    redis:
      hosts:
        cache: {ansible_host: 10.0.0.9}
"""
#: A child interpreter reads the fleet and says whether Ansible had to be imported for it.
READ = ("import sys; from sync_agent.control.fleetcache import cached_fleet; fleet = cached_fleet(sys.argv[1]); "
        "print(fleet.web[0].settings['frontfleet_http_port'], 'ansible' in sys.modules)")


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "prod"
    (folder / "group_vars" / "web").mkdir(parents=True)
    (folder / "hosts.yml").write_text(HOSTS)
    (folder / "group_vars" / "web" / "vars.yml").write_text("frontfleet_http_port: 8080\n")
    return folder


def read_in_child(inventory: Path) -> tuple[str, bool]:
    result = subprocess.run([sys.executable, "-c", READ, str(inventory)], capture_output=True, text=True, check=True)
    port, imported = result.stdout.split()
    return port, imported == "True"


def test_a_second_read_of_an_unchanged_inventory_imports_no_ansible(inventory: Path) -> None:
    assert read_in_child(inventory) == ("8080", True)
    assert read_in_child(inventory) == ("8080", False)
    assert cached_fleet(str(inventory)) == load_fleet(str(inventory.resolve()))


@pytest.mark.parametrize("change", ["group_vars", "hosts", "new host_vars", "environment"])
def test_any_change_of_what_the_inventory_reads_is_seen_by_the_next_read(inventory: Path, change: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_in_child(inventory) == ("8080", True)
    if change == "group_vars":
        (inventory / "group_vars" / "web" / "vars.yml").write_text("frontfleet_http_port: 8081\n")
    elif change == "hosts":
        (inventory / "hosts.yml").write_text(HOSTS.replace("10.0.0.1}", "10.0.0.1, frontfleet_http_port: 8081}"))
    elif change == "new host_vars":
        (inventory / "host_vars").mkdir()
        (inventory / "host_vars" / "web-a.yml").write_text("frontfleet_http_port: 8081\n")
    else:
        monkeypatch.setenv("ANSIBLE_SSH_ARGS", "-o ControlPersist=5s")
    port, imported = read_in_child(inventory)
    assert imported, "a changed inventory must be read again by Ansible"
    if change != "environment":
        assert port == "8081"


def test_vault_encrypted_data_is_never_cached(inventory: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-value-that-must-not-land-on-disk"
    password = tmp_path / "vault-password"
    password.write_text("vault-test-password\n")
    encrypted = subprocess.run([str(Path(sys.executable).with_name("ansible-vault")), "encrypt_string",
                                "--vault-password-file", str(password), secret, "--name", "frontfleet_app"],
                               capture_output=True, text=True, check=True).stdout
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(password))  # for the reads, as an operator sets it
    (inventory / "group_vars" / "web" / "vault.yml").write_text(encrypted)
    app = subprocess.run([sys.executable, "-c", "import sys; from sync_agent.control.fleetcache import cached_fleet; "
                          "print(cached_fleet(sys.argv[1]).web[0].settings['frontfleet_app'])", str(inventory)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert app == secret, "the vault password is Ansible's own setting ($ANSIBLE_VAULT_PASSWORD_FILE)"
    assert read_in_child(inventory)[1], "an inventory with vault data is read by Ansible every time"
    cached = [p.read_text() for p in cache_dir().rglob("*") if p.is_file()] if cache_dir().exists() else []
    assert not any(secret in text for text in cached)
    assert cached == []


def test_an_executable_inventory_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    script = tmp_path / "inventory.py"
    hosts = {"web": {"hosts": ["web-a"]}, "redis": {"hosts": ["cache"]}, "_meta": {"hostvars": {}}}
    script.write_text(f"#!{sys.executable}\nimport json\nprint(json.dumps({hosts!r}))\n")
    script.chmod(0o755)
    assert [h.name for h in cached_fleet(str(script)).web] == ["web-a"]
    assert not cache_dir().exists() or not any(cache_dir().iterdir())


def test_the_cache_is_the_users_own(inventory: Path) -> None:
    cached_fleet(str(inventory))
    files = list(cache_dir().iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    assert cache_dir().stat().st_mode & 0o777 == 0o700
    assert json.loads(files[0].read_text())["fleet"]["web"][0]["name"] == "web-a"


def test_the_ansible_cfg_is_found_where_ansible_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible.config.manager import find_ini_config_file

    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    monkeypatch.chdir(tmp_path)
    assert ansible_config_file() == Path(find_ini_config_file()).resolve() == (tmp_path / "ansible.cfg").resolve()
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "ansible.cfg").write_text("[defaults]\n")
    monkeypatch.setenv("ANSIBLE_CONFIG", str(other))
    assert ansible_config_file() == Path(find_ini_config_file()).resolve() == (other / "ansible.cfg").resolve()


def test_vault_data_without_a_vault_password_is_refused_with_what_to_set(inventory: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    password = tmp_path / "vault-password"
    password.write_text("vault-test-password\n")
    encrypted = subprocess.run([str(Path(sys.executable).with_name("ansible-vault")), "encrypt_string",
                                "--vault-password-file", str(password), "x", "--name", "frontfleet_app"],
                               capture_output=True, text=True, check=True).stdout
    (inventory / "group_vars" / "web" / "vault.yml").write_text(encrypted)
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    result = subprocess.run([sys.executable, "-c", "import sys; from sync_agent.control.fleetcache import "
                             "cached_fleet; cached_fleet(sys.argv[1])", str(inventory)], capture_output=True, text=True)
    assert result.returncode != 0
    assert ("web-a: frontfleet_app is vault-encrypted and no vault password was given: set "
            "ANSIBLE_VAULT_PASSWORD_FILE") in result.stderr
