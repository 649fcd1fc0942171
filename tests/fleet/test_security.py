"""Least privilege, tried as an attacker would on the session's deployed fleet: what each credential cannot do,
and what no secret may show up in (docs/reliability.md, "Security: what each credential was refused")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet.deployment import Deployment

pytestmark = pytest.mark.fleet

# Where a host keeps what sudo and the services logged: the journal (sudo logs through syslog into it) and the
# log files a host with rsyslog would have.
HOST_LOGS = "journalctl --no-pager -o cat; cat /var/log/auth.log /var/log/sudo.log /var/log/syslog 2>/dev/null"


@pytest.mark.timeout(900)
def test_no_generated_secret_in_ansible_output_sudo_logs_or_journals(deployed: Deployment, tmp_path: Path) -> None:
    """`ansible-playbook deploy.yml -vvv` as a sudo user (every remote command through sudo, and logged by it):
    no password of the credentials folder in its output, nor in any host's journal or log files afterwards."""
    as_deploy = deployed.like(tmp_path / "as-deploy", user="deploy")
    result = as_deploy.playbook("-vvv")
    assert result.returncode == 0, "deploy.yml -vvv as the deploy user failed; see the output above"
    output = result.stdout + result.stderr
    assert "EXEC" in output and "sudo" in output, "-vvv shows every remote command: this run shows none"
    secrets = {path.name: path.read_text().strip() for path in sorted((deployed.inventory / "credentials").iterdir())}
    # every password this fleet uses is searched for (an earlier test may have added a host: its password too)
    assert {"redis-publisher", *(f"redis-agent-{h}" for h in deployed.web_hosts)} <= set(secrets), sorted(secrets)
    leaks = [f"{name} in ansible-playbook -vvv's output" for name, secret in secrets.items() if secret in output]
    for host in sorted(deployed.fleet.hosts):
        logs = deployed.ssh(host, HOST_LOGS, check=False)
        assert "COMMAND=" in logs, f"{host}: no sudo command in its logs, so the search proves nothing"
        leaks += [f"{name} in {host}'s logs" for name, secret in secrets.items() if secret in logs]
    assert leaks == []
