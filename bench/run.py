"""`make bench`: run every benchmark, write bench/results/<name>.json, print the table.

    .venv/bin/python -m bench.run                 # everything, full sizes (at most 20 minutes on 2 cores)
    .venv/bin/python -m bench.run --quick         # small sizes, a few minutes, for development
    .venv/bin/python -m bench.run --only propagation,footprint

The table is also written to bench/results/table.md (docs/performance.md quotes it).
Nothing here passes or fails: the figures and the ratios against same-run baselines are the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, write_result

NAMES = ("propagation", "footprint", "scale", "fleet", "live")

FULL: dict[str, dict[str, Any]] = {
    "propagation": {"sizes": [1, 10, 100], "steady_count": 1000, "steady_rate": 50.0, "burst_count": 1000,
                    "steady_reps": 1, "burst_reps": 2},
    "footprint": {"idle_seconds": 60.0, "load_seconds": 10.0, "rate": 500.0},
    "scale": {"steps": [100, 200], "changes": 200, "rate": 20.0},
    "fleet": {"skew_sizes": [3, 5], "rollouts": 20, "flips": 6, "files": 2000, "total_bytes": 50_000_000,
              "reps": 3, "sample": 100},
    "live": {"steps": [1000, 5000, 10000, 15000, 20000], "changes": 20, "gap": 0.2, "apply_count": 1000,
             "apply_rate": 50.0, "apply_at": [1000, 5000]},
}
QUICK: dict[str, dict[str, Any]] = {
    "propagation": {"sizes": [1, 10], "steady_count": 200, "steady_rate": 50.0, "burst_count": 300,
                    "steady_reps": 1, "burst_reps": 2},
    "footprint": {"idle_seconds": 10.0, "load_seconds": 5.0, "rate": 500.0},
    "scale": {"steps": [20, 50], "changes": 100, "rate": 20.0},
    "fleet": {"skew_sizes": [3, 5], "rollouts": 4, "flips": 2, "files": 300, "total_bytes": 5_000_000,
              "reps": 1, "sample": 10},
    "live": {"steps": [1000, 5000], "changes": 10, "gap": 0.2, "apply_count": 200, "apply_rate": 50.0,
             "apply_at": [1000, 5000]},
}


def log(*parts: object) -> None:
    print(*parts, flush=True)


def run_one(name: str, params: dict[str, Any], work: Path) -> dict[str, Any]:
    if name == "propagation":
        from bench import propagation
        return propagation.run(params["sizes"], params["steady_count"], params["steady_rate"], params["burst_count"],
                           params["steady_reps"], params["burst_reps"], work, log)
    if name == "footprint":
        from bench import footprint
        return footprint.run(params["idle_seconds"], params["load_seconds"], params["rate"], work, log)
    if name == "scale":
        from bench import scale
        return scale.run(params["steps"], params["changes"], params["rate"], work, log)
    if name == "live":
        from bench import live_fanout
        return live_fanout.run(params["steps"], params["changes"], params["gap"], params["apply_count"],
                               params["apply_rate"], params["apply_at"], work, log)
    from bench import fleet_bench
    return fleet_bench.run(work, params["skew_sizes"], params["rollouts"], params["flips"], params["files"],
                           params["total_bytes"], params["reps"], params["sample"], log)


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    """One markdown table: benchmark, figure, baseline, ratio, target."""
    lines = ["| benchmark | measured | same-run baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    prop = results.get("propagation")
    if prop:
        rows = prop["rows"]
        for r in prop["ratios"]:
            size = r["size"]
            pick = {(x["system"], x["load"]): x for x in rows if x["size"] == size}
            a, b, g = pick[("floor_a", "steady")], pick[("floor_b", "steady")], pick[("agent", "steady")]
            rate = prop["config"]["steady_changes"] / g["publish_s"] if g.get("publish_s") else None
            achieved = f" ({rate:.0f}/s achieved)" if rate is not None else ""
            lines.append(f"| 1 propagation, steady, {size} agent(s){achieved} | p50 {_ms(g['median_ms'])} / p99 "
                         f"{_ms(g['p99_ms'])} ms | floor (b) p99 {_ms(b['p99_ms'])} ms; floor (a) p99 "
                         f"{_ms(a['p99_ms'])} ms | {r['steady_p99_vs_floor_b']}× (b) | ≤ 1.2× (b) | "
                         f"{'yes' if r['steady_p99_target_met'] else 'no'} |")
            ab, bb, gb = pick[("floor_a", "burst")], pick[("floor_b", "burst")], pick[("agent", "burst")]
            extra = (f"; last change everywhere {_ms(gb['final_after_last_publish_ms'])} ms after its publish "
                     f"(published in {gb['publish_s']:.1f} s)" if "publish_s" in gb else "")
            lines.append(f"| 1 propagation, burst, {size} agent(s) | all hold final {_ms(gb['all_final_ms'])} ms "
                         f"after the first publish (p99 per change {_ms(gb['p99_ms'])} ms{extra}) | floor (b) {_ms(bb['all_final_ms'])} ms; (a) "
                         f"{_ms(ab['all_final_ms'])} ms | {r['burst_all_final_vs_floor_b']}× (b) | < 1× (b) | "
                         f"{'yes' if r['burst_target_met'] else 'no'} |")
    fleet = results.get("fleet")
    if fleet and "skew" in fleet:
        for r in fleet["skew"]["rows"]:
            lines.append(f"| 2 cutover skew, {r['hosts']} hosts | median {r['agent']['median_ms']:.3f} / max "
                         f"{r['agent']['max_ms']:.3f} ms ({r['agent']['rollouts']} rollouts) | Ansible `file`: median "
                         f"{r['ansible_file']['median_ms']:.1f} / max {r['ansible_file']['max_ms']:.1f} ms | "
                         f"{r['baseline_median_over_agent_median']}× smaller | ≥ 50× smaller | "
                         f"{'yes' if r['target_met'] else 'no'} |")
    if fleet and "fab_latency" in fleet:
        f = fleet["fab_latency"]
        lines.append(f"| 5 `fab status` / `fab data-set`, whole process | {f['status_cached_s_median']:.2f} / "
                     f"{f['data_set_cached_s_median']:.2f} s (inventory cached; {f['status_uncached_s_median']:.2f} s "
                     f"uncached) | cold `ssh host true` {f['ssh_s_median']:.2f} s | {f['status_cached_vs_ssh']}× / "
                     f"{f['data_set_cached_vs_ssh']}× ssh | ≤ 2× | {'yes' if f['target_met'] else 'no'} |")
    if fleet and "throughput" in fleet:
        t = fleet["throughput"]
        s, c, cfg = t["summary"], t["ansible_copy"], t["config"]
        lines.append(f"| 3 first rollout, {cfg['files']} files / {cfg['bytes'] / 1e6:.0f} MB, 3 hosts | "
                     f"{s['agent_first_s']:.2f} s to acknowledgement ({s['agent_first_total_s']:.2f} s with HTTP "
                     f"check and prune) | rsync {s['rsync_first_s']:.2f} s; Ansible `copy` "
                     f"{c['seconds_per_file']:.2f} s/file → {c['extrapolated_s']:.0f} s | {s['first_vs_rsync']}× rsync"
                     f" | ≤ 1.3× | {'yes' if s['targets']['first_within_1.3x_rsync'] else 'no'} |")
        lines.append(f"| 3 incremental rollout (1 %) | {s['agent_incremental_s']:.2f} s to acknowledgement "
                     f"({s['agent_incremental_total_s']:.2f} s with HTTP check and prune) | rsync "
                     f"{s['rsync_incremental_s']:.2f} s | {s['incremental_vs_rsync']}× rsync | ≤ 1.5× | "
                     f"{'yes' if s['targets']['incremental_within_1.5x_rsync'] else 'no'} |")
        lines.append(f"| 3 incremental bytes per host | {s['incremental_bytes_per_host'] / 1024:.0f} KiB (offer "
                     f"{s['offer_bytes'] / 1024:.0f} KiB) | changed {s['changed_bytes'] / 1024:.0f} KiB"
                     f" | budget {s['incremental_bytes_budget'] / 1024:.0f} KiB | ≤ changed + 10 % + 64 KiB | "
                     f"{'yes' if s['targets']['incremental_bytes_within_budget'] else 'no'} |")
    foot = results.get("footprint")
    if foot:
        i, ld, fb = foot["idle"], foot["loaded"], foot["floor_b_loaded"]
        lines.append(f"| 4 footprint, idle {i['seconds']:.0f} s | RSS {i['rss_mb_peak']} MB (PSS {i['pss_mb_peak']}),"
                     f" CPU {i['cpu_percent']}% | – | – | RSS < 40 MB, CPU ≈ 0 | "
                     f"{'yes' if foot['targets']['rss_under_40mb'] and foot['targets']['idle_cpu_near_zero'] else 'no'}"
                     " |")
        lines.append(f"| 4 footprint, {foot['config']['rate_per_s']:g} changes/s | RSS {ld['rss_mb_peak']} MB, CPU "
                     f"{ld['cpu_percent']}% ({ld['cpu_us_per_change']:.0f} µs/change) | floor (b) CPU "
                     f"{fb['cpu_percent']}%, RSS {fb['rss_mb_peak']} MB | {foot['cpu_vs_floor_b']}× CPU | RSS < 40 MB |"
                     f" {'yes' if ld['rss_mb_peak'] < 40 else 'no'} |")
    scale = results.get("scale")
    if scale:
        for r in scale["rows"]:
            lines.append(f"| 5 scale, {r['agents']} agents, {scale['config']['rate_per_s']:g} changes/s | p50 "
                         f"{_ms(r['median_ms'])} / p99 {_ms(r['p99_ms'])} ms; Redis CPU "
                         f"{r['redis_cpu_percent_load']}% | PSS {r['pss_mb_per_agent']} MB/agent → "
                         f"{r['fit_in_12gb']} fit in 12 GB | – | ≥ 200 agents | "
                         f"{'yes' if r['agents'] >= 200 else '–'} |")
    live = results.get("live")
    if live:
        for r in live["rows"]:
            lines.append(f"| 6 live fan-out, {r['streams']:,} streams on one agent | p50 {_ms(r['median_ms'])} / p99 "
                         f"{_ms(r['p99_ms'])} / max {_ms(r['max_ms'])} ms from the publish call to each stream's "
                         f"`id:` ({r['samples']:,} receipts, {r['missing']} missing); agent RSS {r['agent_rss_mb_after']} MB, "
                         f"{r['kib_per_stream']} KiB per stream | – | – | p99 ≤ 100 ms at ≥ 5,000 | "
                         f"{'yes' if r['target_met'] else 'no'} |")
        wo, again = live["apply"]["without_streams"], live["apply"].get("without_streams_again")
        spread = f", again after: p99 {_ms(again['p99_ms'])} ms" if again else ""
        variants = [(w, "") for w in live["apply"]["with_streams"]]
        variants += [(w, ", the fan-out on the generator's core") for w in live["apply"].get("fanout_own_core", [])]
        variants += [(w, ", the fan-out paused (the agent's part alone)") for w in live["apply"].get("fanout_paused", [])]
        for w, what in variants:
            lines.append(f"| 6 apply path with {w['streams']:,} streams open{what}, "
                         f"{live['config']['apply_rate_per_s']:g} changes/s | p50 {_ms(w['median_ms'])} / p99 {_ms(w['p99_ms'])} ms | without streams: p50 "
                         f"{_ms(wo['median_ms'])} / p99 {_ms(wo['p99_ms'])} ms{spread} | {w['p99_ratio']}× p99 | "
                         f"no slower than without | {'yes' if w.get('no_slower', w['p99_ratio'] <= 1) else 'no'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {', '.join(NAMES)}")
    parser.add_argument("--table", action="store_true", help="print the table of bench/results/*.json; run nothing")
    args = parser.parse_args()
    if args.table:
        saved = {n: json.loads((RESULTS / f"{n}.json").read_text()) for n in NAMES if (RESULTS / f"{n}.json").exists()}
        print(table({n: r for n, r in saved.items() if "error" not in r}))
        return 0
    if os.geteuid() != 0:
        print("bench: the fleet benchmarks boot systemd-nspawn hosts and need root", file=sys.stderr)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(NAMES)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; known: {', '.join(NAMES)}")
    config = QUICK if args.quick else FULL
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    for name in NAMES:
        if name not in names:
            continue
        log(f"== {name} ({'quick' if args.quick else 'full'}): {json.dumps(config[name])}")
        begin = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"frontfleet-bench-{name}-") as tmp:
            try:
                results[name] = run_one(name, config[name], Path(tmp))
            except Exception:  # one benchmark failing must not lose the others' figures
                traceback.print_exc()
                results[name] = {"error": traceback.format_exc(limit=3)}
        timings[name] = round(time.monotonic() - begin, 1)
        body = {"mode": "quick" if args.quick else "full", "params": config[name], "wall_s": timings[name],
                **results[name]}
        log(f"   {name}: {timings[name]}s -> {write_result(name, body)}")
    good = {k: v for k, v in results.items() if "error" not in v}
    text = table(good)
    wall = time.monotonic() - started
    footer = (f"\n\n{'quick' if args.quick else 'full'} run, {wall / 60:.1f} min wall "
              f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}); machine: {json.dumps(machine())}")
    if set(good) == set(NAMES):
        (RESULTS / "table.md").write_text(text + footer + "\n")
    print("\n" + text + footer)
    return 1 if len(good) != len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
