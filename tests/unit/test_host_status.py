"""What an agent reports, as it writes it (HostStatus.to_json) and as the controller reads it: hostile input."""

from __future__ import annotations

import json

import pytest

from sync_agent.errors import ProtocolError
from sync_agent.protocol import MAX_STATUS_BYTES, MAX_STATUS_ERROR, HostStatus

pytestmark = pytest.mark.unit


def test_a_status_reads_back_as_written() -> None:
    status = HostStatus(release="r1", previous="r0", revision=42, epoch="e", state="ready", seen_at=1.5, pid=7,
                        switched_at_ns=10**18, batches=3)
    assert HostStatus.from_json(status.to_json()) == status
    assert HostStatus.from_json(status.to_json().encode()) == status


def test_the_agent_cuts_a_long_error_so_its_status_stays_small() -> None:
    text = HostStatus(error="x" * 100_000).to_json()
    assert len(json.loads(text)["error"]) == MAX_STATUS_ERROR and text.endswith('…","switched_at_ns":0,'
                                                                                  '"seen_at":0.0,"heartbeat":5.0,'
                                                                                  '"agent_version":"","protocol":1,'
                                                                                  '"pid":0,"batches":0,"resyncs":0,'
                                                                                  '"skipped":0}')


def test_fields_of_the_wrong_type_take_their_defaults_and_unknown_ones_are_ignored() -> None:
    status = HostStatus.from_json('{"release": 5, "revision": "42", "pid": true, "seen_at": 3, '
                                  '"future": {"later": [1]}}')
    assert (status.release, status.revision, status.pid, status.seen_at) == ("", 0, 0, 3.0)


@pytest.mark.parametrize(("raw", "why"), [
    (b"\xff\xfe{}", "not valid JSON"),
    ("[]", "not a JSON object"),
    ('{"later": ' + "[" * 40 + "]" * 40 + "}", "nested deeper than 32 levels"),
    ('{"seen_at": NaN}', "not a finite number"),
    ('{"release": "' + "x" * MAX_STATUS_BYTES + '"}', f"over the {MAX_STATUS_BYTES} a status may have"),
])
def test_an_unreadable_status_is_a_protocol_error_naming_why(raw: str | bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        HostStatus.from_json(raw)
