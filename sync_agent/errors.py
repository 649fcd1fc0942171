"""One exception tree for frontfleet, and the exit codes that go with it.

Every error a user can cause or meet says what went wrong and what to do;
the CLI maps the class to an exit code and prints the message, never a
traceback.
"""

from __future__ import annotations

import os

_MIB = 1024 * 1024

# Exit codes, in one place (the CLI and the Fabric tasks use them).
EXIT_OK = 0
EXIT_FAILURE = 1  # the operation ran and failed (a host lagged, a rollout rolled back)
EXIT_USAGE = 2  # bad input: arguments, configuration, a manifest or stream
EXIT_UNAVAILABLE = 3  # Redis or a host could not be reached
EXIT_LOCKED = 4  # another operation holds the deploy lock
EXIT_UNHEALTHY = 5  # `fleet`/`status`: a host is silent, lagging or degraded


class FrontfleetError(Exception):
    """Base of every error frontfleet raises on purpose."""

    exit_code = EXIT_FAILURE


class UsageError(FrontfleetError):
    """Bad input from the user: an argument, a key, a value."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration file is missing, unreadable, or has a wrong or missing key."""


class ProtocolError(UsageError):
    """A message, key, value or release id that the protocol refuses."""


class SnapshotRefused(ProtocolError):
    """A snapshot whose epoch or revision cannot be read: nothing in it can be ordered, so none of it applies."""


class ManifestError(UsageError):
    """A manifest or staging stream that does not describe a safe, consistent build."""


class ReleaseNotStaged(FrontfleetError):
    """A release that is not staged and verified cannot be switched to."""


class NotEnoughSpace(FrontfleetError):
    """The releases filesystem has less room than the content a host lacks needs; nothing was sent."""

    def __init__(self, directory: str | os.PathLike[str], needed: int, free: int, what: str = "space") -> None:
        if what == "space":
            detail = f"needs {needed / _MIB:.1f} MiB, {free / _MIB:.1f} MiB free"
        else:
            detail = f"needs {needed} {what}, {free} free"
        super().__init__(f"not enough {what} in {directory}: {detail}; free some (`fab prune --keep 1`) or grow it")
        self.needed, self.free = needed, free


class StoreUnavailable(FrontfleetError):
    """Redis could not be reached or refused us."""

    exit_code = EXIT_UNAVAILABLE


class LockHeld(FrontfleetError):
    """Another operation holds the deploy lock."""

    exit_code = EXIT_LOCKED

    def __init__(self, holder: str, expires_in: float) -> None:
        super().__init__(
            f"the deploy lock is held by {holder} (expires in {expires_in:.0f}s unless renewed); "
            "wait for it to finish, or break a dead holder's lock with --force"
        )
        self.holder = holder


class AckTimeout(FrontfleetError):
    """Some hosts did not acknowledge in time."""

    def __init__(self, laggards: dict[str, str]) -> None:
        detail = "; ".join(f"{host}: {why}" for host, why in sorted(laggards.items()))
        super().__init__(f"{len(laggards)} host(s) did not acknowledge in time: {detail}")
        self.laggards = laggards
