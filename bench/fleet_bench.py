"""Benchmarks 2 and 3 on the local fleet (real systemd hosts, 127.0.21.x, deployed with ansible-playbook).

2. Cutover skew: 3 and 5 web hosts, N rollouts between two staged builds through
   sync_agent.control.rollout (what `fab rollout` calls); the skew is latest minus earliest
   `switched_at_ns` from the agents' statuses. Baseline: an Ansible play flipping the same symlink
   with the `file` module; its skew from each host's `current` lstat mtime (4 ms ticks here).
3. Rollout throughput: a generated build (2,000 files / 50 MB) and a second build with 1 % of the
   files changed, to 3 hosts. Baselines: `rsync -a --delete` over OpenSSH, one process per host in
   parallel; an Ansible `copy` play on a 100-file sample, extrapolated.

The fleet is torn down in a `finally`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO, median, percentile, ratio
from fleet import Fleet
from tests.builds import make_build

BIN = Path(sys.executable).parent
SUBNET = os.environ.get("FRONTFLEET_BENCH_SUBNET", "127.0.21")  # another /24 in 127/8 runs beside it
APP = "bench"
ROOT = f"/srv/{APP}"
RSYNC_DIR = "/srv/bench-rsync"
COPY_DIR = "/srv/bench-copy"

FLIP_PLAY = """\
- name: Flip current (the baseline for the cutover skew)
  hosts: web
  gather_facts: false
  tasks:
    - name: Point current at the release
      ansible.builtin.file:
        src: "releases/{{ bench_release }}"
        dest: "%s/current"
        state: link
        force: true
""" % ROOT

COPY_PLAY = """\
- name: Copy a build sample (the baseline for rollout throughput)
  hosts: web
  gather_facts: false
  tasks:
    - name: Copy the sample
      ansible.builtin.copy:
        src: "{{ bench_sample }}/"
        dest: "%s/"
        mode: preserve
""" % COPY_DIR


# --- builds -----------------------------------------------------------------------------------------


def sized_build(directory: Path, files: int, total_bytes: int, seed: int) -> Path:
    """A dist/ folder of `files` files, about `total_bytes` in all: index.html, hashed chunks under assets/,
    pages; random (incompressible) content from the seed. What was in directory before is removed."""
    rng = random.Random(seed)
    mean = total_bytes // files
    content: dict[str, bytes] = {}
    for index in range(files):
        if index == 0:
            relative = "index.html"
        elif index % 4:
            relative = f"assets/chunk{index:05d}-{rng.getrandbits(32):08x}.js"
        else:
            relative = f"pages/{index % 40:02d}/page{index:05d}.html"
        content[relative] = rng.randbytes(max(64, int(rng.uniform(0.2, 1.8) * mean)))
    return make_build(directory, content, fresh=True)


def next_build(source: Path, directory: Path, fraction: float, seed: int) -> tuple[Path, int, int]:
    """A copy of source (mtimes kept, as for the strictest rsync floor) with `fraction` of the files rewritten
    (same size, new bytes). Returns (build, files changed, bytes changed)."""
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(source, directory, copy_function=shutil.copy2)
    rng = random.Random(seed)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    changed = rng.sample(files, max(1, round(len(files) * fraction)))
    changed_bytes = 0
    for path in changed:
        size = path.stat().st_size
        path.write_bytes(rng.randbytes(size))
        changed_bytes += size
    return directory, len(changed), changed_bytes


# --- the fleet --------------------------------------------------------------------------------------


class BenchFleet:
    """The bench fleet and two inventories over it (web1-3, web1-5) sharing one credentials dir."""

    def __init__(self, workdir: Path, web: int) -> None:
        self.workdir = workdir
        self.fleet = Fleet(f"bench-{SUBNET.removeprefix('127.').replace('.', '-')}", subnet=SUBNET)
        self.web = web
        self.credentials = workdir / "credentials"

    def up(self) -> None:
        try:
            self.fleet.up(web=self.web, redis=1, base="provisioned")
        except Exception as err:  # a host that did not boot in time on a loaded machine: once more
            print(f"  fleet: {err}; booting once more", flush=True)
            self.fleet.up(web=self.web, redis=1, base="provisioned")

    def down(self) -> None:
        self.fleet.down()

    def inventory(self, hosts: int) -> Path:
        folder = self.workdir / f"inventory-{hosts}"
        folder.mkdir(parents=True, exist_ok=True)
        full = folder / "hosts.full.yml"
        self.fleet.write_inventory(full)
        body = yaml.safe_load(full.read_text())
        full.unlink()
        web = body["all"]["children"]["web"]["hosts"]
        for name in sorted(web)[hosts:]:
            del web[name]
        (folder / "hosts.yml").write_text(yaml.safe_dump(body, sort_keys=False))
        group_vars = folder / "group_vars" / "all"
        group_vars.mkdir(parents=True, exist_ok=True)
        (group_vars / "vars.yml").write_text(yaml.safe_dump({
            "frontfleet_app": APP, "frontfleet_http_address": "{{ ansible_host }}", "frontfleet_http_port": 80,
            "frontfleet_credentials_dir": str(self.credentials),
            # no release is pruned during the benchmarks: ext4 passes over inodes freed in the last minutes when
            # it allocates new ones, so whoever writes right after a deletion pays for it (both systems, unevenly)
            "frontfleet_keep_releases": 12}))
        return folder

    def env(self, inventory: Path) -> dict[str, str]:
        return {**os.environ, "ANSIBLE_INVENTORY": str(inventory), "PATH": f"{BIN}:{os.environ['PATH']}",
                "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1"}

    def playbook(self, inventory: Path, playbook: str | Path, *args: str, timeout: float = 900) -> float:
        start = time.monotonic()
        result = subprocess.run([str(BIN / "ansible-playbook"), str(playbook), "-i", str(inventory), *args],
                                cwd=REPO, env=self.env(inventory), capture_output=True, text=True, timeout=timeout)
        elapsed = time.monotonic() - start
        if result.returncode != 0:
            raise RuntimeError(f"ansible-playbook {playbook} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
        return elapsed

    def ssh(self, host: str, command: str) -> str:
        result = self.fleet.ssh(host, command)
        if result.returncode != 0:
            raise RuntimeError(f"{host}: {command}: {result.stderr}")
        return result.stdout

    def web_hosts(self, count: int) -> list[str]:
        return [f"web{i}" for i in range(1, count + 1)]


# --- 2: cutover skew --------------------------------------------------------------------------------


def _rollout_skews(inventory: Path, builds: list[Path], rollouts: int) -> tuple[list[float], list[float]]:
    """Roll out alternating staged builds; (skews in ms, wall seconds per rollout)."""
    from sync_agent import control

    skews, walls = [], []
    with control.session(str(inventory / "hosts.yml")) as s:
        for build in builds:  # stage both (and switch to each once)
            control.rollout(s, build, label="bench")
        for index in range(rollouts):
            start = time.monotonic()
            result = control.rollout(s, builds[index % 2], label="bench")
            walls.append(time.monotonic() - start)
            if result.skew_ns is None:
                raise RuntimeError("a rollout reported no skew (a host without switched_at_ns)")
            skews.append(result.skew_ns / 1e6)
    return skews, walls


def _ansible_flip_skews(bf: BenchFleet, inventory: Path, hosts: list[str], releases: list[str], flips: int,
                        workdir: Path) -> tuple[list[float], list[float]]:
    play = workdir / "flip.yml"
    play.write_text(FLIP_PLAY)
    skews, walls = [], []
    stat = f"python3 -c 'import os; print(os.lstat(\"{ROOT}/current\").st_mtime_ns)'"
    for index in range(flips):
        release = releases[(index + 1) % 2]  # away from the live release first; an even count ends on it
        walls.append(bf.playbook(inventory, play, "-e", f"bench_release={release}", "--forks", str(len(hosts))))
        with ThreadPoolExecutor(len(hosts)) as pool:
            stamps = [int(out) for out in pool.map(lambda h: bf.ssh(h, stat), hosts)]
        skews.append((max(stamps) - min(stamps)) / 1e6)
    return skews, walls


def skew(bf: BenchFleet, sizes: list[int], rollouts: int, flips: int, workdir: Path, log: Any) -> dict[str, Any]:
    from sync_agent.manifest import build_manifest

    rows = []
    builds = [sized_build(workdir / f"skew-{name}", 20, 100_000, seed) for name, seed in (("a", 11), ("b", 12))]
    releases = [build_manifest(b).release_id for b in builds]
    for size in sorted(sizes, reverse=True):
        inventory = bf.inventory(size)
        hosts = bf.web_hosts(size)
        others = [h for h in bf.web_hosts(bf.web) if h not in hosts]
        for host in others:  # agents outside this inventory would see releases they do not have
            bf.ssh(host, "systemctl stop sync-agent")
        try:
            agent, agent_walls = _rollout_skews(inventory, builds, rollouts)
            live = _live_release(bf, hosts[0])
            order = [live, next(r for r in releases if r != live)]
            ansible, ansible_walls = _ansible_flip_skews(bf, inventory, hosts, [order[1], order[0]][::-1], flips,
                                                         workdir)
        finally:
            for host in others:
                bf.ssh(host, "systemctl start sync-agent")
        row = {"hosts": size,
               "agent": {"rollouts": rollouts, "median_ms": round(median(agent), 3), "max_ms": round(max(agent), 3),
                         "p99_ms": round(percentile(agent, 99), 3), "all_ms": [round(x, 3) for x in agent],
                         "rollout_wall_s_median": round(median(agent_walls), 2)},
               "ansible_file": {"plays": flips, "median_ms": round(median(ansible), 3), "max_ms": round(max(ansible), 3),
                                "all_ms": [round(x, 3) for x in ansible],
                                "play_wall_s_median": round(median(ansible_walls), 2)}}
        row["baseline_median_over_agent_median"] = round(ratio(row["ansible_file"]["median_ms"],
                                                               row["agent"]["median_ms"]), 1)
        row["target_met"] = row["agent"]["median_ms"] * 50 <= row["ansible_file"]["median_ms"]
        log(f"  skew {size} hosts: agent median {row['agent']['median_ms']:.3f} ms max {row['agent']['max_ms']:.3f} "
            f"ms; ansible file median {row['ansible_file']['median_ms']:.1f} ms "
            f"(x{row['baseline_median_over_agent_median']})")
        rows.append(row)
    return {"config": {"rollouts": rollouts, "ansible_plays": flips, "sizes": sizes}, "rows": rows}


def _live_release(bf: BenchFleet, host: str) -> str:
    return bf.ssh(host, f"readlink {ROOT}/current").strip().rpartition("/")[2]


# --- 3: rollout throughput --------------------------------------------------------------------------


def _rsync(bf: BenchFleet, hosts: list[str], build: Path, target: str) -> tuple[float, dict[str, int]]:
    """rsync -a --delete over OpenSSH (the fleet's ssh_config), one process per host, in parallel."""
    def one(host: str) -> int:
        result = subprocess.run(["rsync", "-a", "--delete", "--stats", "-e", f"ssh -F {bf.fleet.ssh_config}",
                                 f"{build}/", f"{host}:{target}/"], capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"rsync to {host} failed: {result.stderr}")
        sent = next((line for line in result.stdout.splitlines() if line.startswith("Total bytes sent:")), "0")
        return int(sent.split(":")[1].replace(",", "").split()[0])
    start = time.monotonic()
    with ThreadPoolExecutor(len(hosts)) as pool:
        sent = dict(zip(hosts, pool.map(one, hosts), strict=True))
    return time.monotonic() - start, sent


def _settle() -> None:
    """Write every dirty page out first, so neither system pays for the other's writeback (the hosts'
    filesystems are directories on this machine's disk)."""
    os.sync()


def throughput(bf: BenchFleet, files: int, total_bytes: int, fraction: float, reps: int, sample: int,
               workdir: Path, log: Any) -> dict[str, Any]:
    from sync_agent import control
    from sync_agent.manifest import build_manifest
    from sync_agent.stream import offer

    hosts = bf.web_hosts(3)
    inventory = bf.inventory(3)
    others = [h for h in bf.web_hosts(bf.web) if h not in hosts]
    for host in hosts:
        bf.ssh(host, "command -v rsync >/dev/null || (apt-get update -qq && apt-get install -y -qq rsync)")
    runs = []
    for host in others:
        bf.ssh(host, "systemctl stop sync-agent")
    try:
        with control.session(str(inventory / "hosts.yml")) as s:
            for rep in range(reps):
                first = sized_build(workdir / "tp-first", files, total_bytes, 1000 + rep)
                second, changed_files, changed_bytes = next_build(first, workdir / "tp-second", fraction, 2000 + rep)
                run: dict[str, Any] = {"files": files, "bytes": sum(p.stat().st_size for p in first.rglob("*")
                                                                     if p.is_file()),
                                       "changed_files": changed_files, "changed_bytes": changed_bytes,
                                       "offer_bytes": len(offer(build_manifest(second)))}
                for name, build in (("first", first), ("incremental", second)):
                    _settle()
                    s.remote.disconnect(list(s.fleet.web))  # from cold SSH, as each rsync run starts
                    start = time.monotonic()
                    result = control.rollout(s, build, label=f"bench-{name}")
                    run[f"agent_{name}_total_s"] = time.monotonic() - start
                    run[f"agent_{name}_s"] = result.timings["acknowledged"]  # staging through acknowledgement
                    run[f"agent_{name}_timings"] = result.timings
                # the whole stream to each host: its opening line, the offer, the contents and their headers
                run["agent_incremental_bytes_per_host"] = {h: st.bytes_sent for h, st in result.staged.items()}
                for name, build in (("first", first), ("incremental", second)):
                    _settle()
                    run[f"rsync_{name}_s"], run[f"rsync_{name}_sent"] = _rsync(bf, hosts, build, f"{RSYNC_DIR}-{rep}")
                runs.append(run)
                log(f"  throughput rep {rep + 1}: agent {run['agent_first_s']:.2f}s / {run['agent_incremental_s']:.2f}s"
                    f" to acknowledgement ({run['agent_first_total_s']:.2f}s / {run['agent_incremental_total_s']:.2f}s "
                    f"with HTTP check and prune), rsync {run['rsync_first_s']:.2f}s / "
                    f"{run['rsync_incremental_s']:.2f}s; incremental bytes per host "
                    f"{max(run['agent_incremental_bytes_per_host'].values())} (changed {changed_bytes})")
        copy = _ansible_copy(bf, inventory, workdir / "tp-first", sample, files, workdir)
        log(f"  throughput ansible copy: {copy['sample_files']} files in {copy['seconds']:.1f}s, "
            f"extrapolated {copy['extrapolated_s']:.0f}s for {files} files")
    finally:
        for host in others:
            bf.ssh(host, "systemctl start sync-agent")
        for host in hosts:
            bf.ssh(host, f"rm -rf {RSYNC_DIR}-* {COPY_DIR}")

    def med(key: str) -> float:
        return round(median(r[key] for r in runs), 3)

    budget = round(median(r["changed_bytes"] for r in runs) * 1.1 + 65536)
    sent = round(median(max(r["agent_incremental_bytes_per_host"].values()) for r in runs))
    summary = {key: med(key) for key in ("agent_first_s", "agent_incremental_s", "agent_first_total_s",
                                         "agent_incremental_total_s", "rsync_first_s", "rsync_incremental_s")}
    summary.update({"incremental_bytes_per_host": sent, "incremental_bytes_budget": budget,
                    "changed_bytes": round(median(r["changed_bytes"] for r in runs)),
                    "offer_bytes": round(median(r["offer_bytes"] for r in runs)),
                    "first_vs_rsync": round(ratio(summary["agent_first_s"], summary["rsync_first_s"]), 2),
                    "incremental_vs_rsync": round(ratio(summary["agent_incremental_s"],
                                                        summary["rsync_incremental_s"]), 2)})
    summary["targets"] = {"first_within_1.3x_rsync": summary["first_vs_rsync"] <= 1.3,
                          "incremental_within_1.5x_rsync": summary["incremental_vs_rsync"] <= 1.5,
                          "incremental_bytes_within_budget": sent <= budget}
    return {"config": {"files": files, "bytes": total_bytes, "changed_fraction": fraction, "repetitions": reps,
                       "hosts": 3, "ansible_copy_sample": sample},
            "runs": runs, "summary": summary, "ansible_copy": copy}


def _ansible_copy(bf: BenchFleet, inventory: Path, build: Path, sample: int, files: int,
                  workdir: Path) -> dict[str, Any]:
    sample_dir = workdir / "tp-sample"
    if sample_dir.exists():
        shutil.rmtree(sample_dir)
    chosen = sorted(p for p in build.rglob("*") if p.is_file())[:sample]
    for path in chosen:
        target = sample_dir / path.relative_to(build)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    play = workdir / "copy.yml"
    play.write_text(COPY_PLAY)
    seconds = bf.playbook(inventory, play, "-e", f"bench_sample={sample_dir}", "--forks", "3")
    return {"sample_files": len(chosen), "sample_bytes": sum(p.stat().st_size for p in chosen), "seconds": seconds,
            "seconds_per_file": seconds / len(chosen), "extrapolated_s": seconds / len(chosen) * files}


def _seconds(command: list[str], env: dict[str, str]) -> float:
    """Wall time of a whole process; `fab status` exiting 5 (a host not ready yet) still counts."""
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    if result.returncode not in (0, 5):
        raise RuntimeError(f"{' '.join(command)} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def fab_latency(bf: BenchFleet, reps: int, workdir: Path, log: Any) -> dict[str, Any]:
    """Whole-process wall time of `fab status` and `fab data-set` against a cold `ssh host true` (its own TCP and
    SSH handshake, no master), all in this run: with the fleet cache warm, and with it cold (an empty cache folder
    per call, so the inventory is read by Ansible as before the cache)."""
    inventory = bf.inventory(bf.web)
    env = {**bf.env(inventory), "XDG_CACHE_HOME": str(workdir / "fab-cache")}
    cold_ssh = [str(v) for v in ["ssh", "-F", bf.fleet.ssh_config, "-o", "ControlMaster=no", "web1", "true"]]
    fab = str(BIN / "fab")
    runs: dict[str, list[float]] = {"ssh": [], "status_cached": [], "status_uncached": [], "data_set_cached": []}
    _seconds([fab, "data-set", "bench-latency", "0"], env)  # fills the cache; the store has an epoch from here
    for rep in range(reps):
        runs["ssh"].append(_seconds(cold_ssh, env))
        runs["status_cached"].append(_seconds([fab, "status"], env))
        runs["data_set_cached"].append(_seconds([fab, "data-set", "bench-latency", str(rep)], env))
        uncached = {**env, "XDG_CACHE_HOME": str(workdir / f"fab-cold-{rep}")}
        runs["status_uncached"].append(_seconds([fab, "status"], uncached))
    out: dict[str, Any] = {"reps": reps, **{f"{k}_s_median": round(median(v), 3) for k, v in runs.items()}}
    ssh = out["ssh_s_median"]
    for key in ("status_cached", "status_uncached", "data_set_cached"):
        out[f"{key}_vs_ssh"] = round(ratio(out[f"{key}_s_median"], ssh), 1)
    out["target_met"] = out["status_cached_vs_ssh"] <= 2 and out["data_set_cached_vs_ssh"] <= 2
    log(f"  fab latency: cold ssh {ssh:.3f}s; fab status {out['status_cached_s_median']:.3f}s cached "
        f"(x{out['status_cached_vs_ssh']}), {out['status_uncached_s_median']:.3f}s uncached "
        f"(x{out['status_uncached_vs_ssh']}); fab data-set {out['data_set_cached_s_median']:.3f}s cached "
        f"(x{out['data_set_cached_vs_ssh']})")
    return out


def run(workdir: Path, skew_sizes: list[int], rollouts: int, flips: int, files: int, total_bytes: int, reps: int,
        sample: int, log: Any = print) -> dict[str, Any]:
    bf = BenchFleet(workdir, max(skew_sizes + [3]))
    out: dict[str, Any] = {}
    try:
        start = time.monotonic()
        bf.up()
        log(f"  fleet: {bf.web} web + 1 redis up in {time.monotonic() - start:.1f}s")
        start = time.monotonic()
        bf.playbook(bf.inventory(bf.web), "deploy.yml")
        out["deploy_s"] = round(time.monotonic() - start, 1)
        log(f"  fleet: deploy.yml in {out['deploy_s']}s")
        out["fab_latency"] = fab_latency(bf, max(3, reps * 2), workdir, log)
        out["skew"] = skew(bf, skew_sizes, rollouts, flips, workdir, log)
        out["throughput"] = throughput(bf, files, total_bytes, 0.01, reps, sample, workdir, log)
    finally:
        bf.down()
    return out


__all__ = ["json", "run"]
