"""What a host answers is input: an answer the controller cannot read fails that host, named, not the operation."""

from __future__ import annotations

import json

import pytest

from sync_agent.control.inventory import Host
from sync_agent.control.session import reading_answer_of
from sync_agent.errors import HostError

pytestmark = pytest.mark.unit

WEB2 = Host(name="web2", address="10.0.0.2")


@pytest.mark.parametrize("answer", ["not json", '{"staged": true}', "[1, 2]", '{"missing": 5, "staged": false}'])
def test_an_answer_that_cannot_be_read_is_a_host_error_naming_the_host(answer: str) -> None:
    with pytest.raises(HostError, match="cannot read") as failed, reading_answer_of(WEB2):
        body = json.loads(answer)
        [entry["path"] for entry in body["missing"]]
    assert failed.value.host == "web2" and "same version" in failed.value.why
