"""Checking, from a host itself, that it serves what it should (works behind a jump host)."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

from ..errors import CheckFailed


def check_url(url: str, sha256: str | None = None, timeout: float = 5.0) -> None:
    """GET url; raise CheckFailed unless it answers 200 and, with sha256, exactly that body."""
    request = urllib.request.Request(url, headers={"Cache-Control": "no-cache", "User-Agent": "frontfleet-check"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        raise CheckFailed(f"{url} answered {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise CheckFailed(f"{url} did not answer: {getattr(err, 'reason', err)}") from err
    if status != 200:
        raise CheckFailed(f"{url} answered {status}")
    if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256:
        raise CheckFailed(f"{url} serves other content than the release's ({len(body)} bytes, sha256 differs)")
