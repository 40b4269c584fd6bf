#!/usr/bin/env python3
"""Turn a bench/run.sh run directory into results.md (printed) and results.json.

    summarize.py RUN_DIR

Reads targets.tsv, runs.tsv, rss.tsv, machine.txt, checks.txt and the raw wrk / h2load outputs
under raw/. Per target it takes the median over the kept runs; every figure in the main table
is followed by its ratio to haproxy_jwt (HAProxy with its jwt_verify check), the bar.
Standard library only.
"""
import json
import os
import re
import statistics
import sys

BAR = "haproxy_jwt"
HZ = os.sysconf("SC_CLK_TCK")


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    head, rows = lines[0], lines[1:]
    return [dict(zip(head, r)) for r in rows]


def pctl(sorted_vals, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def parse_wrk(path):
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    m = re.search(r"^RESULT (.*)$", text, re.M)
    if not m:
        return out
    for kv in m.group(1).split():
        k, v = kv.split("=")
        out[k] = float(v)
    if out.get("duration_us"):
        out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
    out["errors"] = sum(out.get(k, 0) for k in ("connect_err", "read_err", "write_err", "timeout_err"))
    return out


def parse_h2load(path):
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    if m:
        out["requests"], out["failed"], out["errored"] = int(m.group(4)), int(m.group(5)), int(m.group(6))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["non2xx"] = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    lat, starts = [], []
    try:
        with open(path + ".log") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1].startswith("2"):
                    starts.append(int(parts[0]))
                    lat.append(int(parts[2]))
    except OSError:
        pass
    lat.sort()
    if lat:
        out.update(p50_us=pctl(lat, 50), p90_us=pctl(lat, 90), p99_us=pctl(lat, 99), p999_us=pctl(lat, 99.9), max_us=lat[-1])
        span = (max(starts) - min(starts)) / 1e6
        out["achieved_rps"] = (len(lat) - 1) / span if span > 0 else None
        out.setdefault("requests", len(lat))
    return out


def med(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt_int(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt_us(v):
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.0f} µs" if abs(v) >= 100 else f"{v:.1f} µs"


def fmt_added(v):
    if v is None:
        return "—"
    return ("+" if v >= 0 else "−") + fmt_us(abs(v))


def fmt_mib(kb):
    return "—" if kb is None else f"{kb / 1024:.1f} MiB"


def ratio(v, bar):
    if v is None or bar in (None, 0):
        return ""
    return f" ({v / bar:.2f}×)"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run = sys.argv[1]
    targets = read_tsv(os.path.join(run, "targets.tsv"))
    runs = read_tsv(os.path.join(run, "runs.tsv"))
    rss = {}
    with open(os.path.join(run, "rss.tsv")) as f:
        for line in f:
            phase, server, kb = line.split()
            rss[(phase, server)] = int(kb)
    with open(os.path.join(run, "machine.txt")) as f:
        machine = [l.rstrip("\n") for l in f]
    rate_nominal = None
    for l in machine:
        m = re.search(r"\bRATE=(\d+)", l)
        if m:
            rate_nominal = int(m.group(1))

    # ---- per run
    pin_mode = next((m.group(1) for l in machine for m in [re.search(r"\bPINNING=(\w+)", l)] if m), "shared")
    per_run = []
    for r in runs:
        path = os.path.join(run, "raw", r["file"])
        res = parse_wrk(path) if r["mode"] == "wrk" else parse_h2load(path)
        n = res.get("requests") or 0
        pin_total = int(r["pin_busy"]) + int(r["pin_idle"]) + int(r["pin_steal"])
        oth_total = int(r["other_busy"]) + int(r["other_idle"]) + int(r["other_steal"])
        res.update(
            mode=r["mode"], target=r["target"], round=int(r["round"]), attempt=int(r["attempt"]), kept=r["kept"] == "1",
            proxy_us_per_req=(int(r["proxy_ticks"]) * 1e6 / HZ / n) if n and r["target"] != "direct" else None,
            upstream_us_per_req=(int(r["upstream_ticks"]) * 1e6 / HZ / n) if n else None,
            loadgen_us_per_req=(int(r["loadgen_us"]) / n) if n else None,
            pin_busy_pct=100.0 * int(r["pin_busy"]) / pin_total if pin_total else None,
            steal_pct=100.0 * int(r["pin_steal"]) / pin_total if pin_total else None,
            other_busy_pct=100.0 * int(r["other_busy"]) / oth_total if oth_total else None,
            # busy time on the pinned CPU not charged to our servers or the load generator: other
            # processes scheduled there, plus softirq/interrupt time the kernel charges to no task
            foreign_pct=100.0 * (int(r["pin_busy"]) - int(r["proxy_ticks"]) - int(r["upstream_ticks"])
                                 - (int(r["loadgen_us"]) * HZ / 1e6 if pin_mode == "shared" else 0)) / pin_total
            if pin_total and pin_mode != "off" else None,
        )
        per_run.append(res)

    def kept(mode, target):
        return [x for x in per_run if x["mode"] == mode and x["target"] == target and x["kept"]]

    # ---- per target
    agg = {}
    for t in targets:
        name, server = t["target"], t["server"]
        w, q = kept("wrk", name), kept("rate", name)
        a = {
            "description": t["description"], "server": server, "token": t["token"],
            "rps": med(x.get("rps") for x in w),
            "rps_runs": [round(x["rps"]) for x in w if x.get("rps")],
            "p50_us": med(x.get("p50_us") for x in w),
            "p99_us": med(x.get("p99_us") for x in w),
            "p999_us": med(x.get("p999_us") for x in w),
            "cpu_us": med(x.get("proxy_us_per_req") for x in w),
            "cpu_runs": [round(x["proxy_us_per_req"], 1) for x in w if x.get("proxy_us_per_req")],
            "upstream_cpu_us": med(x.get("upstream_us_per_req") for x in w),
            "errors": sum(int(x.get("errors", 0)) + int(x.get("non2xx", 0)) for x in w)
            + sum(int(x.get("failed", 0)) + int(x.get("errored", 0)) + int(x.get("non2xx", 0)) for x in q),
            "rate_p50_us": med(x.get("p50_us") for x in q),
            "rate_p99_us": med(x.get("p99_us") for x in q),
            "rate_p999_us": med(x.get("p999_us") for x in q),
            "rate_achieved": med(x.get("achieved_rps") for x in q),
            "rate_cpu_us": med(x.get("proxy_us_per_req") for x in q),
            "rss_idle_kb": rss.get(("idle", server)) if name != "direct" else None,
            "rss_after_kb": rss.get(("after", server)) if name != "direct" else None,
        }
        agg[name] = a
    direct = agg.get("direct", {})
    for a in agg.values():
        for k in ("p50", "p99"):
            v, d = a.get(f"rate_{k}_us"), direct.get(f"rate_{k}_us")
            a[f"added_{k}_us"] = (v - d) if (v is not None and d is not None and a is not direct) else None
    bar = agg.get(BAR, {})

    # ---- main table
    out = []
    P = out.append
    P("# portcullis side-by-side benchmark")
    P("")
    P("Closed loop: wrk, 1 thread, %s connections, medians of the rounds. Fixed rate: h2load --h1, one "
      "keep-alive connection at %s req/s; *added* = that target's latency minus the upstream's alone. "
      "CPU/req = the proxy's own utime+stime (all its threads and processes) over the requests served. "
      "In brackets: the ratio to **%s** (HAProxy with its jwt_verify check) measured in this same run; "
      "for req/s higher is better, for everything else lower." % (
          next((m.group(1) for l in machine for m in [re.search(r"CONNS=(\d+)", l)] if m), "?"),
          f"{rate_nominal:,}" if rate_nominal else "?", BAR))
    P("")
    at = f"@{rate_nominal:,}/s" if rate_nominal else "@rate"
    P(f"| target | req/s | p50 | p99 | p99.9 | proxy CPU/req | added p50 {at} | added p99 {at} | proxy CPU/req {at} | RSS idle | RSS after load |")
    P("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in targets:
        name = t["target"]
        a = agg[name]
        same_proc = any(o["server"] == a["server"] and o is not a and not on.endswith("_big") for on, o in agg.items()) and name.endswith("_big")
        row = [
            f"**{name}**: {a['description']}",
            fmt_int(a["rps"]) + ratio(a["rps"], bar.get("rps")),
            fmt_us(a["p50_us"]) + ratio(a["p50_us"], bar.get("p50_us")),
            fmt_us(a["p99_us"]) + ratio(a["p99_us"], bar.get("p99_us")),
            fmt_us(a["p999_us"]) + ratio(a["p999_us"], bar.get("p999_us")),
            (fmt_us(a["cpu_us"]) + ratio(a["cpu_us"], bar.get("cpu_us"))) if name != "direct" else "— (no proxy)",
            fmt_added(a["added_p50_us"]) + ratio(a["added_p50_us"], bar.get("added_p50_us")),
            fmt_added(a["added_p99_us"]) + ratio(a["added_p99_us"], bar.get("added_p99_us")),
            (fmt_us(a["rate_cpu_us"]) + ratio(a["rate_cpu_us"], bar.get("rate_cpu_us"))) if name != "direct" else "—",
            "same process" if same_proc else fmt_mib(a["rss_idle_kb"]) + ratio(a["rss_idle_kb"], bar.get("rss_idle_kb")),
            "same process" if same_proc else fmt_mib(a["rss_after_kb"]) + ratio(a["rss_after_kb"], bar.get("rss_after_kb")),
        ]
        if name == "direct":
            row[6] = f"(upstream's own p50: {fmt_us(a['rate_p50_us'])})"
            row[7] = f"(upstream's own p99: {fmt_us(a['rate_p99_us'])})"
        P("| " + " | ".join(row) + " |")
    P("")

    # ---- warnings: anything that makes this run's figures less trustworthy
    warn = []
    kept_runs = [x for x in per_run if x["kept"]]
    noisy = next((l for l in machine if l.startswith("noisy_rounds:")), "")
    m = re.match(r"noisy_rounds: (\d+)", noisy)
    if m and int(m.group(1)) > 0:
        warn.append(f"{m.group(1)} round(s) started while the machine was busy with other work ({noisy.split('(')[-1].rstrip(')')}).")
    closed_foreign = [x["foreign_pct"] for x in kept_runs if x["mode"] == "wrk" and x.get("foreign_pct") is not None]
    if closed_foreign and med(closed_foreign) > 10:
        warn.append(f"in the closed-loop runs a median {med(closed_foreign):.0f}% of the pinned CPU went to processes other "
                    "than ours (or to unattributed interrupt work): other work shared the CPU; req/s is depressed, CPU/req is less affected.")
    others = [x["other_busy_pct"] for x in kept_runs if x.get("other_busy_pct") is not None]
    if pin_mode == "shared" and others and med(others) > 25:
        warn.append(f"the CPU the benchmark does not use was a median {med(others):.0f}% busy: something else ran during the "
                    "measurements (shared caches and memory bandwidth; ratios hold better than absolute figures).")
    for x in kept_runs:
        if x["mode"] == "rate" and rate_nominal and (x.get("achieved_rps") or 0) < 0.95 * rate_nominal:
            warn.append(f"{x['target']} round {x['round']}: h2load achieved only {fmt_int(x.get('achieved_rps'))} of {rate_nominal:,} "
                        "req/s; its fixed-rate latency is not at the nominal rate.")
    max_steal = next((int(m.group(1)) for l in machine for m in [re.search(r"\bMAX_STEAL=(\d+)", l)] if m), 20)
    bad_steal = [x for x in kept_runs if (x.get("steal_pct") or 0) > max_steal]
    if bad_steal:
        warn.append(f"{len(bad_steal)} run(s) were kept with more than {max_steal}% steal after the retries.")
    n_err = sum(a["errors"] for a in agg.values())
    if n_err:
        warn.append(f"{n_err} request(s) failed or got a non-2xx answer during the load (see 'Every run').")
    for w in warn:
        P(f"> **Warning**: {w}")
    if warn:
        P("")

    # ---- issue 5 targets
    pc, pb, hp, ng = agg.get("portcullis"), agg.get("portcullis_big"), agg.get("haproxy"), agg.get("nginx")
    checks = []

    def verdict(label, value_txt, ok):
        checks.append({"target": label, "value": value_txt, "met": ok})
        P(f"- {'met' if ok else '**not met**' if ok is not None else 'n/a'}: {label}: {value_txt}")

    if pc and bar.get("cpu_us"):
        P("Targets (issue 5), from this run:")
        P("")
        r = pc["cpu_us"] / bar["cpu_us"] if pc["cpu_us"] else None
        verdict("CPU/req ≤ 0.8× HAProxy+JWT", f"{r:.2f}×" if r else "—", r is not None and r <= 0.8)
        if hp and hp.get("cpu_us") and pc["cpu_us"]:
            verdict("stretch: CPU/req < HAProxy plain", f"{pc['cpu_us']:.1f} µs vs {hp['cpu_us']:.1f} µs", pc["cpu_us"] < hp["cpu_us"])
        r = pc["rps"] / bar["rps"] if pc["rps"] and bar.get("rps") else None
        verdict("req/s ≥ 1.2× HAProxy+JWT", f"{r:.2f}×" if r else "—", r is not None and r >= 1.2)
        if ng and ng.get("added_p50_us") is not None and pc.get("added_p50_us") is not None:
            verdict(f"added p50 at {rate_nominal:,} req/s ≤ nginx plain proxy's",
                    f"{fmt_added(pc['added_p50_us'])} vs {fmt_added(ng['added_p50_us'])}", pc["added_p50_us"] <= ng["added_p50_us"])
        if pb and pb.get("cpu_us") and pc["cpu_us"]:
            r = pb["cpu_us"] / pc["cpu_us"]
            verdict("2,400-char token CPU/req ≤ 1.2× the small token's", f"{r:.2f}× ({pb['cpu_us']:.1f} vs {pc['cpu_us']:.1f} µs)", r <= 1.2)
        if pc.get("rss_after_kb"):
            verdict("RSS after load ≤ 20 MiB", fmt_mib(pc["rss_after_kb"]), pc["rss_after_kb"] <= 20 * 1024)
        P("")
    elif not pc:
        P("portcullis was **not measured** in this run (binary missing or SKIP_PORTCULLIS=1).")
        P("")

    jb = agg.get("haproxy_jwt_big")
    if jb and jb.get("cpu_us") and bar.get("cpu_us"):
        P(f"HAProxy+JWT with the 2,400-char token: {jb['cpu_us'] / bar['cpu_us']:.2f}× its small-token CPU/req.")
        P("")
    if hp and bar.get("cpu_us") and hp.get("cpu_us"):
        P(f"JWT check inside HAProxy: +{bar['cpu_us'] - hp['cpu_us']:.1f} µs CPU/req over its plain proxy "
          f"({hp['cpu_us']:.1f} → {bar['cpu_us']:.1f} µs)." + (
              f" portcullis over HAProxy plain: {pc['cpu_us'] - hp['cpu_us']:+.1f} µs." if pc and pc.get("cpu_us") else ""))
        P("")

    # ---- spread and noise
    P("## Every run")
    P("")
    P("| mode | target | round | attempt | kept | req/s | p50 | p99 | proxy CPU/req | upstream CPU/req | loadgen CPU/req | pinned CPU busy | of which unattributed | steal | other CPU busy | errors |")
    P("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in sorted(per_run, key=lambda x: (x["mode"] != "wrk", x["round"], x["target"], x["attempt"])):
        rps = x.get("rps") if x["mode"] == "wrk" else x.get("achieved_rps")
        errs = int(x.get("errors", 0)) + int(x.get("non2xx", 0)) + int(x.get("failed", 0)) + int(x.get("errored", 0))
        pf = lambda v: "—" if v is None else f"{v:.0f}%"
        P(f"| {'closed loop' if x['mode'] == 'wrk' else 'fixed rate'} | {x['target']} | {x['round']} | {x['attempt']} | "
          f"{'yes' if x['kept'] else 'no (steal)'} | {fmt_int(rps)} | {fmt_us(x.get('p50_us'))} | {fmt_us(x.get('p99_us'))} | "
          f"{fmt_us(x.get('proxy_us_per_req'))} | {fmt_us(x.get('upstream_us_per_req'))} | {fmt_us(x.get('loadgen_us_per_req'))} | "
          f"{pf(x.get('pin_busy_pct'))} | {pf(x.get('foreign_pct'))} | {pf(x.get('steal_pct'))} | {pf(x.get('other_busy_pct'))} | {errs} |")
    P("")
    steals = [x["steal_pct"] for x in kept_runs if x.get("steal_pct") is not None]
    closed_busy = [x["pin_busy_pct"] for x in kept_runs if x["mode"] == "wrk" and x.get("pin_busy_pct") is not None]
    P(f"Noise: {len(per_run) - len(kept_runs)} run(s) set aside for steal; steal on the pinned CPU in kept runs "
      f"median {med(steals) or 0:.0f}%, max {max(steals) if steals else 0:.0f}%; other CPU busy median {med(others) or 0:.0f}%, "
      f"max {max(others) if others else 0:.0f}%; pinned CPU busy in closed-loop runs min {min(closed_busy) if closed_busy else 0:.0f}% "
      "(below ~90% the closed loop was held back by something other than CPU). Errors in all runs: "
      f"{n_err}.")
    P("")
    spread = []
    for t in targets:
        a = agg[t["target"]]
        if len(a["rps_runs"]) > 1:
            lo, hi = min(a["rps_runs"]), max(a["rps_runs"])
            spread.append(f"{t['target']} {100.0 * (hi - lo) / statistics.median(a['rps_runs']):.0f}%")
    if spread:
        P("Spread of closed-loop req/s across rounds ((max−min)/median): " + ", ".join(spread) + ".")
        P("")

    P("## Machine and settings")
    P("")
    P("```")
    out.extend(machine)
    P("```")
    P("")
    try:
        with open(os.path.join(run, "checks.txt")) as f:
            lines = [l.rstrip("\n") for l in f]
        bad = [l for l in lines if not l.startswith("ok")]
        P(f"Functional checks: {len(lines) - len(bad)} of {len(lines)} passed (details in checks.txt)" + (":" if bad else "."))
        for l in bad:
            P(f"    {l}")
    except OSError:
        pass

    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump({"targets": agg, "runs": per_run, "issue5_targets": checks, "machine": machine}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
