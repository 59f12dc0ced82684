#!/usr/bin/env python3
"""Load benchmark for dastra-proxy against a direct baseline, in one run.

Three paths to the same local upstream (nginx answering 200 "ok"):
  direct      wrk -> upstream
  dastra      wrk -> dastra-proxy -> upstream
  nginx       wrk -> nginx (1 worker, reverse proxy) -> upstream     (the peer)
  hyper-floor wrk -> examples/hyper_floor.rs -> upstream: hyper and tokio with
              nothing of ours, so the report splits what hyper costs from what
              our stack costs
and the rejection path at saturation:
  dastra-429  wrk -> dastra-proxy in reject mode with the window full
  nginx-429   wrk -> nginx limit_req (limit_req_status 429)
and quota savings:
  dastra-hit  wrk -> dastra-proxy answering from its cache ([[cache.rules]] on the path)

The proxy under test and the upstream share CPU 0; wrk runs on CPU 1, so each
proxy gets the same single core. Rounds are interleaved and repeated; the
median of each is reported, with ratios. Everything is on 127.0.0.1.
"""
import argparse, os, re, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

from benchlib import BIN, free_port, rss, stop, wait_port


def nginx(tmp, name, body, cpu="0"):
    """Starts an nginx (one worker) with `body` inside its http block."""
    d = os.path.join(tmp, name); os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
 uwsgi_temp_path {d}; scgi_temp_path {d}; keepalive_requests 1000000;
{body}
}}
""")
    return subprocess.Popen(["taskset", "-c", cpu, "nginx", "-c", conf, "-p", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dastra(tmp, name, up_port, extra, binary=BIN):
    port, admin = free_port(), free_port()
    d = os.path.join(tmp, name); os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "config.toml")
    with open(conf, "w") as f:
        f.write(f"""[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n
[upstream]\nurl = "http://127.0.0.1:{up_port}"\n
[credential]\nkind = "api_key"\napi_key_env = "BENCH_KEY"\n
[log]\nlevel = "warn"\n{extra}""")
    env = dict(os.environ, BENCH_KEY="bench-key")
    if "[cache]" in extra and subprocess.run([binary, "check", "--config", conf], env=env, capture_output=True).returncode != 0:
        # A build from before [cache] existed: it has no coalescing to turn off.
        return dastra(tmp, name, up_port, extra.replace("[cache]\ncoalesce = false\n", ""), binary)
    p = subprocess.Popen(["taskset", "-c", "0", binary, "--config", conf], env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "w"))
    wait_port(port); wait_port(admin)
    return p, port


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(port, secs, conns):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency", f"http://127.0.0.1:{port}/v1/bench"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[pct] = float(m.group(1)) * UNIT[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": int(non2xx.group(1)) if non2xx else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--baseline", metavar="NAME=BIN", action="append", default=[],
                    help="another dastra-proxy binary (e.g. the previous commit's) run interleaved under NAME; repeatable")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dastra-bench-")
    procs = []
    try:
        up_port = free_port()
        procs.append(nginx(tmp, "upstream", f'server {{ listen 127.0.0.1:{up_port}; location / {{ return 200 "ok"; }} }}'))
        wait_port(up_port)
        ng_port, ng429_port = free_port(), free_port()
        procs.append(nginx(tmp, "peer", f"""
upstream backend {{ server 127.0.0.1:{up_port}; keepalive 64; }}
limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;
server {{ listen 127.0.0.1:{ng_port}; location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
server {{ listen 127.0.0.1:{ng429_port}; location / {{ limit_req zone=one burst=1 nodelay; limit_req_status 429; proxy_pass http://backend; }} }}"""))
        wait_port(ng_port); wait_port(ng429_port)
        # Windows far above what one core can send: admission runs on every call but never binds.
        open_limits = '[[limits]]\nrequests = 10000000\nper = "1s"\n[admission]\nmargin = "0ms"\n'
        # wrk sends one URL over every connection: with coalescing on, identical
        # GETs in flight would share calls and this would not measure forwarding.
        own = '[cache]\ncoalesce = false\n'
        dp, dp_port = dastra(tmp, "dastra", up_port, open_limits + own)
        procs.append(dp)
        full = '[[limits]]\nrequests = 1\nper = "1h"\n[admission]\non_limit = "reject"\n'
        dr, dr_port = dastra(tmp, "dastra429", up_port, full + own)
        procs.append(dr)
        urllib.request.urlopen(f"http://127.0.0.1:{dr_port}/v1/fill").read()
        hit = open_limits + '[cache]\ncoalesce = false\n[[cache.rules]]\npath = "/v1/bench"\nttl = "1h"\n'
        dh, dh_port = dastra(tmp, "dastrahit", up_port, hit)
        procs.append(dh)
        urllib.request.urlopen(f"http://127.0.0.1:{dh_port}/v1/bench").read()
        idle_rss = rss(dp.pid)
        floor_port = free_port()
        floor = os.path.join(os.path.dirname(BIN), "examples", "hyper_floor")
        procs.append(subprocess.Popen(["taskset", "-c", "0", floor, f"127.0.0.1:{floor_port}", f"127.0.0.1:{up_port}"]))
        wait_port(floor_port)

        targets = {"direct": up_port, "dastra": dp_port, "nginx": ng_port, "dastra-429": dr_port, "nginx-429": ng429_port,
                   "dastra-hit": dh_port, "hyper-floor": floor_port}
        for spec in a.baseline:
            name, binary = spec.split("=", 1)
            bp, bp_port = dastra(tmp, name, up_port, open_limits + own, binary)
            br, br_port = dastra(tmp, name + "429", up_port, full + own, binary)
            procs += [bp, br]
            urllib.request.urlopen(f"http://127.0.0.1:{br_port}/v1/fill").read()
            targets.update({name: bp_port, name + "-429": br_port})
        results = {k: [] for k in targets}
        for r in range(a.rounds):
            for name, port in targets.items():
                results[name].append(wrk(port, a.seconds, a.connections))
                print(f"round {r + 1} {name:<11} {results[name][-1]}", file=sys.stderr)
        med = {k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50", "p99")} for k, v in results.items()}
        for k in [k for k in results if k.endswith("-429")]:
            assert all(x["non2xx"] > 0.99 * x["rps"] * a.seconds for x in results[k]), f"{k} did not answer 429"

        print(f"\n{a.connections} connections, {a.seconds}s x {a.rounds} interleaved rounds; proxy+upstream on CPU 0, wrk on CPU 1\n")
        print(f"{'path':<12}{'req/s':>10}{'min-max':>17}{'p50 ms':>9}{'p99 ms':>9}{'p99 min-max':>14}")
        for k, m in med.items():
            rps, p99 = [x["rps"] for x in results[k]], [x["p99"] for x in results[k]]
            print(f"{k:<12}{m['rps']:>10.0f}{f'{min(rps):.0f}-{max(rps):.0f}':>17}{m['p50']:>9.3f}{m['p99']:>9.3f}"
                  f"{f'{min(p99):.2f}-{max(p99):.2f}':>14}")
        d, n, x = med["dastra"], med["nginx"], med["direct"]
        # Added latency from each round's own pair (the direct p99 moves between rounds).
        added = lambda k: statistics.median(a_["p99"] - b_["p99"] for a_, b_ in zip(results[k], results["direct"]))
        print("\nratios")
        print(f"  dastra / nginx throughput       {d['rps'] / n['rps']:.2f}   (target >= 1.00)")
        print(f"  dastra / direct throughput      {d['rps'] / x['rps']:.2f}")
        print(f"  dastra added p99 vs direct      {added('dastra'):.3f} ms   (median of the rounds' own pairs; target <= 0.5 ms at c8)")
        print(f"  nginx added p99 vs direct       {added('nginx'):.3f} ms")
        print(f"  hyper-floor / nginx throughput  {med['hyper-floor']['rps'] / n['rps']:.2f}   (hyper and tokio alone)")
        print(f"  dastra / hyper-floor throughput {d['rps'] / med['hyper-floor']['rps']:.2f}   (what our stack costs)")
        print(f"  dastra-429 / nginx-429 throughput {med['dastra-429']['rps'] / med['nginx-429']['rps']:.2f}   (target >= 1.00)")
        print(f"  dastra-hit / dastra throughput  {med['dastra-hit']['rps'] / d['rps']:.2f}   (a cache hit vs a proxied call)")
        for spec in a.baseline:
            name = spec.split("=", 1)[0]
            print(f"  dastra / {name:<22}{d['rps'] / med[name]['rps']:.2f}")
            print(f"  dastra-429 / {name + '-429':<18}{med['dastra-429']['rps'] / med[name + '-429']['rps']:.2f}")
        print(f"\ndastra-proxy RSS: idle {idle_rss} KiB, peak under load {rss(dp.pid, 'VmHWM:')} KiB   (target <= 32 MiB)")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
