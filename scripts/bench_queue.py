#!/usr/bin/env python3
"""10,000 calls waiting in the queue at once, through the release binary.

The window (2,000 per 20 s) is filled first, then 10,000 client connections
each send one call, so all of them wait: 20 s is longer than opening 10,000
connections takes here, so none is released before all have queued (with
10 s, a release on this VM sometimes began at ~8,000, and RSS then held calls
already served or still connecting). The proxy's RSS is read when all 10,000
wait, against its idle RSS; then every call must be served (200), in the order
it was queued, with zero window violations in the upstream's arrival log
(nginx access log, $msec). Run with scripts/bench-queue. Loopback only.
"""
import asyncio, json, os, resource, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# DASTRA_BIN runs another build (e.g. an earlier commit's) for comparison.
BIN = os.environ.get("DASTRA_BIN") or os.path.join(ROOT, "target", "release", "dastra-proxy")
N, LIMIT, PER = 10_000, 2000, 20.0


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing on {port}")


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def raise_nofile():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def call(port, path):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await w.drain()
    data = await r.read()
    w.close()
    return int(data.split(b" ", 2)[1])


async def main():
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="dastra-queue-")
    up, port, admin = free_port(), free_port(), free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/err.log warn;
worker_rlimit_nofile 16000; events {{ worker_connections 8000; }}
http {{ log_format t '$msec $http_x_request_id $request_uri'; access_log {tmp}/access.log t;
 client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
 server {{ listen 127.0.0.1:{up}; location / {{ return 200 "ok"; }} }} }}
""")
    ng = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(up)
    cfg = os.path.join(tmp, "config.toml")
    with open(cfg, "w") as f:
        # Every caller is 127.0.0.1: the per-address cap must hold them all.
        f.write(f"""[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\nmax_connections = 20000\nmax_connections_per_ip = 20000\n
[upstream]\nurl = "http://127.0.0.1:{up}"\n[credential]\napi_key_env = "BENCH_KEY"\n
[[limits]]\nrequests = {LIMIT}\nper = "{PER:.0f}s"\n[admission]\nmax_queue = 20000\nmax_wait = "10m"\nmargin = "20ms"\n[log]\nlevel = "warn,dastra_proxy::proxy::observe=info,dastra_proxy::queue=debug"\nformat = "json"\n""")
    dp = subprocess.Popen([BIN, "--config", cfg], env=dict(os.environ, BENCH_KEY="k"), preexec_fn=raise_nofile,
                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "proxy.log"), "w"))
    try:
        wait_port(port)
        await asyncio.gather(*(call(port, f"/warm/{i}") for i in range(50)))
        time.sleep(1.2)
        idle = rss(dp.pid)
        fill = await asyncio.gather(*(call(port, f"/fill/{i}") for i in range(LIMIT)))
        assert all(s == 200 for s in fill)
        tasks = []
        for i in range(N):
            tasks.append(asyncio.create_task(call(port, f"/q/{i:05d}")))
            if i % 200 == 199:
                await asyncio.sleep(0.01)
        peak_waiting, rss_at_peak = 0, 0
        for _ in range(1200):
            q = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/quota"))
            if q["queue_total"] >= peak_waiting:
                peak_waiting, rss_at_peak = q["queue_total"], rss(dp.pid)
            if peak_waiting >= N or (tasks and all(t.done() for t in tasks)):
                break
            await asyncio.sleep(0.05)
        statuses = await asyncio.gather(*tasks)
        assert all(s == 200 for s in statuses), {s: statuses.count(s) for s in set(statuses)}
    finally:
        dp.send_signal(signal.SIGTERM); dp.wait(30)
        ng.send_signal(signal.SIGQUIT); ng.wait(10)

    log = [l.split() for l in open(os.path.join(tmp, "access.log"))]
    # Each call's place in the queue, from the proxy's own debug line as it
    # joined (request ids are taken earlier, and on two worker threads a call
    # can be overtaken between the two), keyed like the upstream's log by the
    # request id's counter: the request span (observe, info) carries the id.
    position = {}
    for line in open(os.path.join(tmp, "proxy.log")):
        if '"queued"' in line:
            e = json.loads(line)
            position[int(e["span"]["request_id"][-16:], 16)] = e["position"]
    sent = [(float(t), int(rid[-16:], 16), u) for t, rid, u in log if not u.startswith("/warm/")]
    times = sorted(t for t, _, _ in sent)
    worst, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= PER:
            j += 1
        worst = max(worst, i - j + 1)
    # Calls released together travel over different upstream connections, so
    # arrivals within a few ms may swap; a call that arrives more than 10 ms
    # after one queued behind it was released out of order.
    # A call that found a free slot at once never queued: it has no place to compare.
    by_queue = sorted((position[rid], t) for t, rid, u in sent if u.startswith("/q/") and rid in position)
    q_order = [t for _, t in by_queue]
    latest, inversions, worst_late = 0.0, 0, 0.0
    for t in q_order:
        if t < latest - 0.010:
            inversions += 1
            worst_late = max(worst_late, latest - t)
        latest = max(latest, t)
    grown = rss_at_peak - idle
    print(f"calls waiting at once: {peak_waiting} (target {N})")
    print(f"proxy RSS: idle {idle} KiB, with {peak_waiting} waiting {rss_at_peak} KiB -> "
          f"{grown * 1024 / max(peak_waiting, 1):.0f} bytes per waiting call (target <= 16384)")
    print(f"served: {len(statuses)} x 200; upstream arrivals: {len(sent)}; most in any {PER:.0f} s: {worst} (limit {LIMIT})")
    print(f"queue order: {len(q_order)} arrivals upstream, {inversions} more than 10 ms out of the order they were queued in"
          f" (at most {worst_late * 1000:.0f} ms)")
    ok = peak_waiting >= N * 0.99 and worst <= LIMIT and inversions == 0 and grown * 1024 / max(peak_waiting, 1) <= 16384
    sys.exit(0 if ok else 1)


asyncio.run(main())
