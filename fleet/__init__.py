"""frontfleet's local fleet harness: real systemd hosts (systemd-nspawn over overlayfs) on loopback.

    from fleet import Fleet
    fleet = Fleet("demo")
    fleet.up(web=3, redis=1, base="provisioned")
    fleet.ssh("web1", "hostname")
    fleet.write_inventory("inventory/demo/hosts.yml")
    fleet.down()

See docs/fleet-harness.md.
"""

from fleet.harness import Fleet, Host, list_fleets
from fleet.system import FleetError

__all__ = ["Fleet", "FleetError", "Host", "list_fleets"]
