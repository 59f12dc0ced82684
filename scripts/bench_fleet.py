#!/usr/bin/env python3
"""A gateway fleet under a flood: N Redis-mode replicas sharing one quota,
some of them flooded by wrk with the window already full, next to the same
flood against one memory-mode proxy in the same run.

Reported per replica: refusals/s, CPU; for the replicas not flooded, the
latency of a light prober's calls (p50/p99) during the flood and before it;
for Redis: commands/s and commands per refused call (a script's inner calls
count, from INFO stats); and window violations judged on the upstream's own
arrival log (nginx, $msec per request). Also what one admitted and one
refused decision cost in Redis commands and round trips, measured on an
idle fleet.

Layout: proxies, Redis and the upstream on CPU 0, wrk and the prober on
CPU 1. Everything on 127.0.0.1.
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, threading, time, urllib.error, urllib.request

from benchlib import BIN, free_port, stop, wait_port
from bench_load import nginx, dastra, wrk

LIMIT, PER = 20, 10  # a small window a flood fills at once: 20 per 10 s


def redis_server(tmp):
    port = free_port()
    p = subprocess.Popen(["taskset", "-c", "0", "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", tmp],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, port


def scripts_and_commands(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "all"], capture_output=True, text=True, check=True).stdout
    runs = sum(int(m) for m in re.findall(r"^cmdstat_eval(?:sha)?:calls=(\d+)", out, re.M))
    return runs, int(re.search(r"^total_commands_processed:(\d+)", out, re.M).group(1))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def call(port, path):
    """One GET; (status, seconds)."""
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            r.read(); code = r.status
    except urllib.error.HTTPError as e:
        e.read(); code = e.code
    return code, time.perf_counter() - t


def probe(ports, secs, rate=50):
    """Calls round the given replicas at `rate` a second; their latencies (ms)."""
    lat, end, i = [], time.time() + secs, 0
    while time.time() < end:
        _, s = call(ports[i % len(ports)], f"/v1/probe/{i}")
        lat.append(s * 1000); i += 1
        time.sleep(max(0, 1 / rate - s))
    return lat


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] if xs else float("nan")


def violations(log, limit, per):
    """Arrivals beyond `limit` in any `per`-second window of the upstream's log."""
    times = sorted(float(l.split()[0]) for l in open(log) if " /v1/" in l)
    worst, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - per:
            j += 1
        worst = max(worst, i - j + 1)
    return max(0, worst - limit), worst, len(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--flooded", type=int, default=1, help="how many replicas wrk floods (one wrk each)")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--binary", default=BIN, help="the dastra-proxy under test (e.g. an older build, for before/after)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dastra-fleet-")
    procs = []
    try:
        # One upstream for the fleet, one for the memory-mode proxy: each log
        # judges only its own quota.
        up_port, mem_up_port = free_port(), free_port()
        up_dir = os.path.join(tmp, "upstream")
        procs.append(nginx(tmp, "upstream", f"""log_format arrivals '$msec $request_uri';
server {{ listen 127.0.0.1:{up_port}; access_log {up_dir}/fleet.log arrivals; location / {{ return 200 "ok"; }} }}
server {{ listen 127.0.0.1:{mem_up_port}; access_log {up_dir}/memory.log arrivals; location / {{ return 200 "ok"; }} }}"""))
        wait_port(up_port); wait_port(mem_up_port)
        rp, r_port = redis_server(tmp)
        procs.append(rp)
        own = '[cache]\ncoalesce = false\n'
        limits = f'[[limits]]\nrequests = {LIMIT}\nper = "{PER}s"\n[admission]\non_limit = "reject"\nmargin = "0ms"\n'
        store = f'[store]\nkind = "redis"\nurl = "redis://127.0.0.1:{r_port}"\nkey_prefix = "fleet"\nreplicas = {a.replicas}\nstate_file = ""\n'
        fleet = []
        for i in range(a.replicas):
            p, port = dastra(tmp, f"replica{i}", up_port, limits + own + store, a.binary)
            procs.append(p); fleet.append((p, port))
        mem, mem_port = dastra(tmp, "memory", mem_up_port, limits + own, a.binary)
        procs.append(mem)

        # What one decision costs Redis on an idle fleet: the first replica
        # first learns the key's epoch, then LIMIT admitted calls, then refusals.
        call(fleet[0][1], "/v1/warm")
        time.sleep(0.3)
        runs0, cmds0 = scripts_and_commands(r_port)
        for i in range(LIMIT - 1):
            assert call(fleet[0][1], f"/v1/fill/{i}")[0] == 200
        time.sleep(0.25)  # the lands are sent in the background
        runs1, cmds1 = scripts_and_commands(r_port)
        # Every other replica's first refusal (its first contact with the key).
        for _, port in fleet[1:]:
            call(port, "/v1/first")
        runs2, cmds2 = scripts_and_commands(r_port)
        refused = 200
        for i in range(refused):
            assert call(fleet[i % len(fleet)][1], f"/v1/refused/{i}")[0] == 429
        runs3, cmds3 = scripts_and_commands(r_port)
        admitted = LIMIT - 1
        print(f"binary {a.binary}", file=sys.stderr)
        print(f"\nper admitted call (reserve + land, heartbeats included): {(runs1 - runs0) / admitted:.2f} round trips, "
              f"{(cmds1 - cmds0 - 1) / admitted:.1f} Redis commands")
        print(f"per refused call, window known full: {(runs3 - runs2) / refused:.3f} round trips, "
              f"{(cmds3 - cmds2 - 1) / refused:.2f} Redis commands   (target <= 0.1)")
        print(f"first contact of {len(fleet) - 1} replicas: {runs2 - runs1} round trips, {cmds2 - cmds1 - 1} commands")
        urllib.request.urlopen(f"http://127.0.0.1:{mem_port}/v1/fill-memory").read()
        for i in range(LIMIT - 1):
            call(mem_port, f"/v1/fill-memory/{i}")

        # Before the flood: the prober alone.
        others = [port for _, port in fleet[a.flooded:]] or [fleet[0][1]]
        quiet = probe(others, 2)
        # Rounds, interleaved: wrk floods the first `flooded` replicas while
        # the prober calls the others; then the same flood against the
        # memory-mode proxy, the prober still calling the fleet, so both
        # floods share CPU 0 with the same other work.
        flooded = fleet[:a.flooded]
        runs4, cmds4 = scripts_and_commands(r_port)
        cpu0 = {p.pid: cpu_seconds(p.pid) for p, _ in fleet + [(rp, r_port)]}
        per_round, mem_rounds, loud = [], [], []
        for r in range(a.rounds):
            results, threads = {}, []
            for p, port in flooded:
                t = threading.Thread(target=lambda port=port: results.__setitem__(port, wrk(port, a.seconds, a.connections)))
                t.start(); threads.append(t)
            loud += probe(others, a.seconds)
            for t in threads:
                t.join()
            per_round.append(results)
            t = threading.Thread(target=lambda: mem_rounds.append(wrk(mem_port, a.seconds, a.connections)))
            t.start(); probe(others, a.seconds); t.join()
            print(f"round {r + 1}: fleet {[round(x['rps']) for x in results.values()]}, memory {round(mem_rounds[-1]['rps'])}", file=sys.stderr)
        flood_secs = a.seconds * a.rounds
        runs5, cmds5 = scripts_and_commands(r_port)
        cpu = {pid: (cpu_seconds(pid) - c) / (2 * flood_secs) for pid, c in cpu0.items()}
        results = {port: {"rps": statistics.median(rr[port]["rps"] for rr in per_round),
                          "non2xx": sum(rr[port]["non2xx"] for rr in per_round)} for _, port in flooded}
        mem_flood = {"rps": statistics.median(x["rps"] for x in mem_rounds)}

        print(f"\n{a.replicas} replicas, {a.flooded} flooded by wrk -c{a.connections}, {a.seconds}s x {a.rounds} rounds (medians); window {LIMIT}/{PER}s already full")
        print(f"{'replica':<10}{'refusals/s':>12}{'CPU':>8}   (CPU: mean over the fleet and memory floods)")
        total = 0
        for i, (p, port) in enumerate(fleet):
            r = results.get(port)
            rps = r["rps"] if r else 0
            total += r["non2xx"] if r else 0
            print(f"replica{i:<3}{rps:>12.0f}{cpu[p.pid] * 100:>7.0f}%")
        print(f"{'redis':<10}{'':>12}{cpu[rp.pid] * 100:>7.0f}%")
        print(f"{'memory':<10}{mem_flood['rps']:>12.0f}   (one memory-mode proxy, same flood, same run)")
        # Every flooded replica shares CPU 0 with the rest, as the memory-mode
        # proxy has it alone: compare the fleet's sum with it.
        flood_rps = sum(results[port]["rps"] for _, port in flooded)
        print(f"\nredis-mode (sum of flooded replicas) / memory-mode refusals per second on the same core: "
              f"{flood_rps / mem_flood['rps']:.2f}   (target >= 0.8)")
        print(f"Redis during the floods: {(cmds5 - cmds4) / (2 * flood_secs):.0f} commands/s, {(runs5 - runs4) / (2 * flood_secs):.1f} script runs/s, "
              f"{(cmds5 - cmds4) / max(1, total):.4f} commands per refused call")
        print(f"prober on the other replicas: p50 {pct(quiet, 50):.2f} ms, p99 {pct(quiet, 99):.2f} ms before the flood; "
              f"p50 {pct(loud, 50):.2f} ms, p99 {pct(loud, 99):.2f} ms during it")
        for name in ("fleet", "memory"):
            over, worst, n = violations(os.path.join(up_dir, f"{name}.log"), LIMIT, PER)
            print(f"{name} upstream: {n} arrivals, most in any {PER}s {worst} of {LIMIT}: {over} window violations")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
