"""Private shared data on the session's deployed fleet (issue 20): `fab data-set --private` reaches a private
template's output on every host, and no byte nginx serves, whatever path a browser tries; `fab recover` keeps it.
The finer points (the earlier agent, export/import, the record of changes) are in
tests/integration/test_private_data.py."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.deployment import Deployment, wait_until
from tests.fleet.fab_builds import Builds, fab_json, rollout
from tests.fleet.helpers import wait_fab_status

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(600)]

SECRET = "fleet-upstream-tok-71c04be9"
KEY = "fleettest_upstream_token"
ROOT = "/srv/fleettest"
TEMPLATE = "/etc/sync-agent/templates/upstream.conf.private.j2"
# What a browser could try to reach private/ through nginx: the folder nginx serves, its listing, and private/ by
# every spelling of a step out of it that nginx might not normalise.
PATHS = ["/_sync/data.json", "/_sync/env.js", "/_sync/", "/_sync", "/_sync/../private/upstream.conf",
         "/_sync/%2e%2e/private/upstream.conf", "/_sync/..%2fprivate/upstream.conf", "/private/upstream.conf",
         "/private/data.json", "/_sync/../private/data.json", "/_sync/..;/private/data.json"]


@pytest.fixture
def private_template(deployed: Deployment) -> Iterator[None]:
    """A private template on every web host, as the sync_agent role ships one from sync_agent_templates_src; the
    key and the template are gone again afterwards (also after a failure)."""
    for host in deployed.web_hosts:
        deployed.ssh(host, f"printf '%s\\n' 'proxy_set_header Authorization \"Bearer "
                           f"{{{{ private.get(\"{KEY}\", \"\") }}}}\";' > {TEMPLATE}")
    try:
        yield
    finally:
        deployed.fab("data-del", "--private", KEY)
        for host in deployed.web_hosts:
            deployed.ssh(host, f"rm -f {TEMPLATE} {ROOT}/private/upstream.conf", check=False)


def live_stream_start(deployed: Deployment, host: str, seconds: float = 3.0) -> bytes:
    """The first bytes a page reads from /_sync/events through nginx (the snapshot), for a few seconds at most."""
    connection = http.client.HTTPConnection(deployed.address(host), timeout=seconds)
    try:
        connection.request("GET", "/_sync/events", headers={"Accept": "text/event-stream"})
        response = connection.getresponse()
        assert response.status == 200, f"{host} /_sync/events answered {response.status}"
        body, deadline = b"", time.monotonic() + seconds
        while b"event: snapshot" not in body or not body.endswith(b"\n\n"):
            if time.monotonic() > deadline:
                break
            body += response.read1(65536)
        return body
    finally:
        connection.close()


def serving_one_release(deployed: Deployment, tmp_path: Path) -> None:
    """`fab recover` takes the release every web host serves: roll one out when the fleet has none yet (this file
    run alone)."""
    if any(not deployed.status_of(host).get("release") for host in deployed.web_hosts):
        rollout(deployed, Builds.create(tmp_path, "private").a)


def rendered(deployed: Deployment, host: str) -> str:
    return deployed.ssh(host, f"cat {ROOT}/private/upstream.conf", check=False)


def test_a_private_value_reaches_every_hosts_private_file_and_no_served_byte_and_survives_recover(
        deployed: Deployment, private_template: None, tmp_path: Path) -> None:
    serving_one_release(deployed, tmp_path)
    made = fab_json(deployed, "data-set", "--private", KEY, json.dumps(SECRET))
    assert made["private"] is True
    for host in deployed.web_hosts:
        wait_until(lambda h=host: SECRET in rendered(deployed, h), timeout=30, what=f"{host}'s private/upstream.conf")
        mode = deployed.ssh(host, f"stat -c '%a %U' {ROOT}/private {ROOT}/private/upstream.conf").split()
        assert mode == ["750", "sync-agent", "640", "sync-agent"], mode
        denied = deployed.fleet.ssh(host, f"runuser -u www-data -- cat {ROOT}/private/upstream.conf")
        assert denied.returncode != 0 and SECRET not in denied.stdout, "nginx's user reads private/"
        assert "autoindex on" not in deployed.ssh(host, "nginx -T 2>/dev/null")
        for path in PATHS:
            status, body, _ = deployed.get(host, path)
            assert SECRET.encode() not in body, f"{host} serves the private value at {path} ({status})"
            if path == "/_sync/":
                assert status in (301, 403, 404), f"{host} lists /_sync/ ({status})"
        assert KEY not in deployed.env_js(host)["data"]
        stream = live_stream_start(deployed, host)
        assert b"event: snapshot" in stream and SECRET.encode() not in stream and KEY.encode() not in stream

    listed = deployed.fab("data-list")
    assert listed.returncode == 0 and SECRET not in listed.stdout and f"{KEY} (private" in listed.stdout
    assert SECRET not in deployed.fab("log").stdout

    recovered = fab_json(deployed, "recover", "--yes", timeout=120)
    assert KEY in recovered["private_keys"] and SECRET not in json.dumps(recovered)
    wait_fab_status(deployed, 0)
    assert json.loads(deployed.fab("data-get", "--private", KEY, "--json").stdout) == SECRET
    for host in deployed.web_hosts:
        assert SECRET in rendered(deployed, host)
