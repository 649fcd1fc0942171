"""The one JSON reader for what agents serve: the depth limit at its boundary, finite numbers, UTF-8."""

from __future__ import annotations

import pytest

from sync_agent.errors import ProtocolError
from sync_agent.protocol import MAX_DEPTH, load_json

pytestmark = pytest.mark.unit


def nested(levels: int) -> str:
    return '{"a":' * (levels // 2) + "[" * (levels - levels // 2) + "]" * (levels - levels // 2) + "}" * (levels // 2)


def test_a_value_nested_exactly_to_the_limit_is_read_and_one_level_more_is_refused():
    assert load_json(nested(MAX_DEPTH)) is not None
    with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_json(nested(MAX_DEPTH + 1))


@pytest.mark.parametrize("raw", ["NaN", "-Infinity", "[1e999]", "9" * 310, b'"\xff"', "[" * 100_000])
def test_what_no_browser_or_agent_could_serve_is_a_protocol_error(raw):
    with pytest.raises(ProtocolError):
        load_json(raw)
