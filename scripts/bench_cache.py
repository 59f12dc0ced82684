#!/usr/bin/env python3
"""Memory per cached KiB, through the release binary.

An nginx upstream answers every /v1/ws/<i>/Actors with a 1 KiB body; the proxy
caches that path for an hour. N distinct paths are fetched once each (every one
a miss that is stored); the proxy's RSS growth is divided by the bytes its
`cache_bytes` gauge reports. Run with scripts/bench-cache. Loopback only.
"""
import http.client, os, re, subprocess, sys, tempfile, urllib.request

from benchlib import BIN, free_port, rss, stop, wait_port

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000


def main():
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            up = free_port()
            conf = os.path.join(tmp, "nginx.conf")
            body = "x" * 1024
            open(conf, "w").write(f"""daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{}} http {{ access_log off; server {{ listen 127.0.0.1:{up}; location / {{ return 200 "{body}"; }} }} }}""")
            procs.append(subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stderr=subprocess.DEVNULL))
            wait_port(up)
            port, admin = free_port(), free_port()
            cfg = os.path.join(tmp, "config.toml")
            open(cfg, "w").write(f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
public_url = "http://127.0.0.1:{port}"
[upstream]
url = "http://127.0.0.1:{up}"
[credential]
kind = "api_key"
api_key_env = "BENCH_KEY"
[[limits]]
requests = 10000000
per = "1s"
[store]
state_file = ""
[cache]
max_bytes = "1GiB"
[[cache.rules]]
path = "/v1/ws/*/Actors"
ttl = "1h"
""")
            env = dict(os.environ, BENCH_KEY="bench-key-0123456789", RUST_LOG="error")
            p = subprocess.Popen([BIN, "--config", cfg], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port)
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/v1/ws/warm/Actors"); conn.getresponse().read()
            before = rss(p.pid)
            for i in range(N):
                conn.request("GET", f"/v1/ws/{i}/Actors")
                r = conn.getresponse(); r.read()
                assert r.status == 200 and "stored" in r.getheader("cache-status", ""), r.getheader("cache-status")
            after = rss(p.pid)
            m = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
            cached = int(re.search(r"^dastra_proxy_cache_bytes (\d+)", m, re.M).group(1))
            body_kib = N * 1024 / 1024
            print(f"{N} answers of 1 KiB cached: cache_bytes {cached / 1024:.0f} KiB (bodies {body_kib:.0f} KiB)")
            print(f"RSS {before} KiB -> {after} KiB: {(after - before) / body_kib:.2f} KiB of RSS per cached KiB of body, "
                  f"{(after - before) * 1024 / N:.0f} bytes per entry")
        finally:
            stop(procs)


if __name__ == "__main__":
    main()
