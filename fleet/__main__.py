"""`python -m fleet up|down|status`: boot, stop and list local fleets (the CLI is the only place that prints)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fleet.harness import DEFAULT_SUBNET, Fleet, list_fleets
from fleet.images import BASE_KINDS
from fleet.system import FleetError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fleet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command the harness runs")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="boot a fleet (after clearing an earlier run of the same name)")
    up.add_argument("--name", default="demo")
    up.add_argument("--web", type=int, default=3, help="number of web hosts (web1..webN)")
    up.add_argument("--redis", type=int, default=1, help="number of Redis hosts (redis1..)")
    up.add_argument("--base", choices=BASE_KINDS, default="provisioned")
    up.add_argument("--subnet", default=DEFAULT_SUBNET, help="the loopback /24 for the hosts (default %(default)s)")
    up.add_argument("--inventory", type=Path, help="also write the Ansible inventory here")
    down = commands.add_parser("down", help="power a fleet off and remove its state")
    down.add_argument("--name", default="demo")
    urls = commands.add_parser("urls", help="print the HTTP URL of each web host")
    urls.add_argument("--name", default="demo")
    status = commands.add_parser("status", help="list fleets and their hosts")
    status.add_argument("--name", help="only this fleet")
    return parser


def _print_fleet(fleet: Fleet) -> None:
    print(f"fleet {fleet.name} ({fleet.base} base, sshd port {fleet.port}, state {fleet.state_dir})")
    for row in fleet.status():
        print(f"  {row['name']:<10} {row['role']:<6} {row['address']}:{row['port']:<6} {row['state']}")
    print(f"  ssh -F {fleet.ssh_config} web1 | inventory {fleet.inventory}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "up":
            fleet = Fleet(args.name, subnet=args.subnet)
            started = time.monotonic()
            fleet.up(web=args.web, redis=args.redis, base=args.base)
            if args.inventory:
                fleet.write_inventory(args.inventory)
                print(f"inventory written to {args.inventory}")
            print(f"up in {time.monotonic() - started:.1f} s")
            _print_fleet(fleet)
        elif args.command == "urls":
            fleet = Fleet(args.name)
            if not fleet.hosts:
                raise FleetError(f"no fleet named {args.name} is up; start it with `make demo`")
            for host in fleet.hosts.values():
                if host.role == "web":
                    print(f"  {host.name}: http://{host.address}/")
        elif args.command == "down":
            Fleet(args.name).down()
            print(f"fleet {args.name} is down")
        else:
            fleets = [Fleet(args.name)] if args.name else list_fleets()
            for fleet in fleets:
                _print_fleet(fleet)
            if not fleets:
                print("no fleets")
    except FleetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
