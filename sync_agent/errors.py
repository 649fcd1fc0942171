"""One exception tree for frontfleet, and the exit codes that go with it.

Every error a user can cause or meet says what went wrong and what to do;
the CLI maps the class to an exit code and prints the message, never a
traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

_MIB = 1024 * 1024

# Exit codes, in one place (the CLI and the Fabric tasks use them).
EXIT_OK = 0
EXIT_FAILURE = 1  # the operation ran and failed (a host lagged, a rollout rolled back)
EXIT_USAGE = 2  # bad input: arguments, configuration, a manifest or stream
EXIT_UNAVAILABLE = 3  # Redis or a host could not be reached
EXIT_LOCKED = 4  # another operation holds the deploy lock
EXIT_UNHEALTHY = 5  # `fleet`/`status`: a host is silent, lagging or degraded, or a rollout is unfinished
EXIT_UNKNOWN = 6  # Redis stopped answering mid-request: whether the change was made is not known
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it


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


class TransferInterrupted(FrontfleetError):
    """A staging stream ended before its trailer (the connection dropped, the sender stopped); nothing was staged."""

    exit_code = EXIT_UNAVAILABLE


class ReleaseNotStaged(FrontfleetError):
    """A release that is not staged and verified cannot be switched to."""


class UnsafePath(FrontfleetError):
    """A path that a step run as root would follow is a symlink, or a folder another user can change: refused."""


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


class StoreEmpty(FrontfleetError):
    """The store has no epoch (Redis lost its data, or the fleet was never deployed): no change is made by
    accident on it; `init` makes a new store, `recover` rebuilds one from what the hosts hold."""

    def __init__(self) -> None:
        super().__init__("the store is empty (no epoch: Redis lost its data, or the fleet was never deployed); "
                         "nothing was changed. If Redis lost its data, run `fab recover` to rebuild the store from "
                         "what the hosts hold; a new fleet is set up by `ansible-playbook deploy.yml`")


class StoreForeign(FrontfleetError):
    """The store's revision is past its change chain: a controller that keeps no chain (an older frontfleet) wrote
    to it. Nothing more is written on top; agents refuse it too."""


class StoreExists(UsageError):
    """`init` on a store that has an epoch already."""


class LockHeld(FrontfleetError):
    """Another operation holds the deploy lock."""

    exit_code = EXIT_LOCKED

    def __init__(self, holder: str, expires_in: float) -> None:
        super().__init__(
            f"the deploy lock is held by {holder} (expires in {expires_in:.0f}s unless renewed); "
            "wait for it to finish, or break a dead holder's lock with --force"
        )
        self.holder = holder


class LockLost(FrontfleetError):
    """The deploy lock this operation held expired or was broken: it stops, and changes nothing more."""

    exit_code = EXIT_LOCKED

    def __init__(self, why: str) -> None:
        super().__init__(f"lost the deploy lock ({why}); this operation stopped and changed nothing more. The fleet "
                         "is where the lock's new holder leaves it: `fab status` and `fab log` show it")


class RolloutUnfinished(FrontfleetError):
    """A rollout switched hosts and never finished (killed, its lock broken): nothing moves the fleet until it is
    aborted."""

    exit_code = EXIT_LOCKED


class OutcomeUnknown(FrontfleetError):
    """A change was sent and Redis stopped answering before saying whether it was made."""

    exit_code = EXIT_UNKNOWN

    def __init__(self, message: str, request: str) -> None:
        super().__init__(message)
        self.request = request  # the request's id: `fab log` lists it if it was made


class ConnectionLost(StoreUnavailable):
    """The agent's Redis session is dead: a probe did not come back, or the subscription went away."""


class CheckFailed(FrontfleetError):
    """A URL did not answer 200 with the expected body (the HTTP check a host runs on itself)."""


class HostError(FrontfleetError):
    """Something went wrong on one host; `why` is the cause without the host's name, for per-host reports."""

    def __init__(self, host: str, why: str) -> None:
        super().__init__(f"{host}: {why}")
        self.host = host
        self.why = why


class HostUnreachable(HostError):
    """A host could not be reached over SSH, or did not answer in time."""

    exit_code = EXIT_UNAVAILABLE


class RemoteCommandFailed(HostError):
    """A command ran on a host and failed; `why` is the end of what it printed on stderr."""

    def __init__(self, host: str, why: str, returncode: int) -> None:
        super().__init__(host, why)
        self.returncode = returncode


def cause(err: BaseException) -> str:
    """The one-line cause of a failure on a host, without the host's name (the report names it)."""
    return err.why if isinstance(err, HostError) else str(err) or type(err).__name__


class HostFailures(FrontfleetError):
    """An operation failed on some hosts. The failures stay data, host → cause (as Fabric's GroupException keeps
    them), and this is the one way they are printed: `what failed: host: cause; host: cause; where the fleet is`."""

    def __init__(self, what: str, failures: Mapping[str, BaseException | str], where: str = "") -> None:
        self.what = what
        self.failures = dict(failures)
        self.causes = {host: failure if isinstance(failure, str) else cause(failure)
                       for host, failure in sorted(self.failures.items())}
        self.where = where
        detail = "; ".join(f"{host}: {why}" for host, why in self.causes.items())
        super().__init__("; ".join(part for part in (f"{what}: {detail}" if detail else what, where) if part))

    def to_json(self) -> dict[str, object]:
        return {"error": str(self), "failed": self.what, "hosts": self.causes, "where": self.where}


class RolloutFailed(HostFailures):
    """A rollout, rollback or publish stopped; what was switched is undone, and the message says where the fleet is."""


def error_json(err: FrontfleetError) -> dict[str, object]:
    """What `--json` prints for a failed operation: the message, and per host the cause when there is one."""
    return err.to_json() if isinstance(err, HostFailures) else {"error": str(err)}
