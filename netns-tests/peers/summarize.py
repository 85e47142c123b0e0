#!/usr/bin/env python3
"""Summarises a peers.sh run (argument: its output directory) as Markdown on stdout: the median
of each figure over the repetitions, then the min..max spread and extra counters."""
import json, os, re, statistics, sys, glob

out = sys.argv[1]
order = ["veth1hop", "baseline", "boringtun", "boringtun-t1", "boringtun-t2", "boringtun-t4", "wggo", "strongswan"]
setups = [d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))]
setups.sort(key=lambda s: (order.index(s) if s in order else 99, s))


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rng(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def f(x, fmt="{:.2f}"):
    return "n/a" if x is None else fmt.format(x)


rows, raw = [], []
for s in setups:
    d = os.path.join(out, s)
    res = {}
    for t in ["tcp", "tcpP", "tcpR", "udp"]:
        vals = {"gbps": [], "retr": [], "sent_pps": [], "recv_pps": [], "loss": [],
                "dcpu": [], "busy": [], "sirq": [], "cli_cpu": [], "srv_cpu": []}
        for p in sorted(glob.glob(os.path.join(d, f"{t}-*.json"))):
            j = load(p)
            c = load(p + ".cpu") or {}
            if not j or "end" not in j or "error" in j:
                continue
            e = j["end"]
            sr, ss = e.get("sum_received", {}), e.get("sum_sent", {})
            vals["gbps"].append(sr.get("bits_per_second", 0) / 1e9)
            if t != "udp":
                vals["retr"].append(ss.get("retransmits"))
            else:
                secs = sr.get("seconds") or 1
                vals["sent_pps"].append(ss.get("packets", 0) / (ss.get("seconds") or 1))
                vals["recv_pps"].append((sr.get("packets", 0) - sr.get("lost_packets", 0)) / secs)
                vals["loss"].append(sr.get("lost_percent"))
            vals["dcpu"].append(c.get("daemon_cpu_pct"))
            vals["busy"].append(c.get("sys_busy_pct"))
            vals["sirq"].append(c.get("softirq_pct"))
            cu = e.get("cpu_utilization_percent", {})
            vals["cli_cpu"].append(cu.get("host_total"))
            vals["srv_cpu"].append(cu.get("remote_total"))
        res[t] = vals
    ping = None
    try:
        txt = open(os.path.join(d, "ping.txt")).read()
        m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", txt)
        if m:
            ping = tuple(float(x) for x in m.groups())
    except OSError:
        pass
    failed = os.path.exists(os.path.join(d, "FAILED"))
    try:
        ulen = open(os.path.join(d, "udp_len")).read().strip()
    except OSError:
        ulen = "?"
    res["ulen"] = ulen
    rows.append((s, res, ping, failed))

print(f"# peers.sh summary: {out}\n")
try:
    print("```\n" + open(os.path.join(out, "versions.txt")).read() + "```\n")
except OSError:
    pass
print("Medians over reps. TCP = receiver goodput. UDP: -b 0, payload per versions.txt; pps = datagrams/s.")
print("CPU: daemon% = VPN daemons (gw+vpc) together, 100 = one core; busy% = whole machine, of 200 (2 cores).\n")
print("| setup | TCP 1 Gbit/s | TCP -P4 Gbit/s | TCP -R Gbit/s | UDP -l | UDP sent kpps | UDP recv kpps | UDP recv Gbit/s | UDP loss % | ping avg/mdev ms | daemon CPU% tcp / udp | busy% tcp / udp |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for s, r, ping, failed in rows:
    if failed:
        print(f"| {s} | FAILED | | | | | | | | | | |")
        continue
    u = r["udp"]
    print("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |".format(
        s, f(med(r["tcp"]["gbps"])), f(med(r["tcpP"]["gbps"])), f(med(r["tcpR"]["gbps"])), r["ulen"],
        f(med([x / 1e3 for x in u["sent_pps"]]), "{:.0f}"), f(med([x / 1e3 for x in u["recv_pps"]]), "{:.0f}"),
        f(med(u["gbps"])), f(med(u["loss"]), "{:.1f}"),
        "n/a" if not ping else f"{ping[1]:.3f}/{ping[3]:.3f}",
        f(med(r["tcp"]["dcpu"]), "{:.0f}"), f(med(u["dcpu"]), "{:.0f}"),
        f(med(r["tcp"]["busy"]), "{:.0f}"), f(med(u["busy"]), "{:.0f}")))

print("\n## spread (min..max over reps) and extra counters\n")
print("| setup | test | n | Gbit/s min..max | retrans (median) | daemon CPU% | busy% | softirq% | iperf client/server CPU% |")
print("|---|---|---|---|---|---|---|---|---|")
for s, r, ping, failed in rows:
    if failed:
        continue
    for t in ["tcp", "tcpP", "tcpR", "udp"]:
        v = r[t]
        lo, hi = rng(v["gbps"])
        print("| {} | {} | {} | {}..{} | {} | {} | {} | {} | {}/{} |".format(
            s, t, len(v["gbps"]), f(lo), f(hi), f(med(v["retr"]), "{:.0f}"),
            f(med(v["dcpu"]), "{:.0f}"), f(med(v["busy"]), "{:.0f}"), f(med(v["sirq"]), "{:.0f}"),
            f(med(v["cli_cpu"]), "{:.0f}"), f(med(v["srv_cpu"]), "{:.0f}")))
