#!/usr/bin/env python3
"""Instructions per call, counted by valgrind's callgrind: a figure that does
not move with this VM's noise, so a change of 1% shows.

For each binary (this build, hyper_floor, and any --baseline NAME=BIN):
  forwarding     GET through the proxy to a local nginx answering 200 "ok"
  429            GET refused in reject mode with the window full
  cache-hit      GET answered from the cache (a [[cache.rules]] on its path)
  coalesce-lead  GET that leads a coalesced call (coalescing on; each
                 connection has its own URL, so no call has followers)
After a warm-up of --warmup calls, the counts are zeroed (callgrind_control
-z), --calls keep-alive GETs are sent over 8 connections, and the counts are
dumped: the total over the calls, divided by them. User-space instructions
only (the kernel's share is not counted). The proxy runs under callgrind on
one CPU (so on tokio's current-thread runtime, as in bench-load).
"""
import argparse, os, re, socket, subprocess, sys, tempfile, time, urllib.request

from bench_load import nginx
from benchlib import BIN, free_port, stop, wait_port

REQUEST = b"GET /v1/bench HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def request(i, distinct):
    """Connection i's request: the one URL, or one of its own."""
    if not distinct:
        return REQUEST
    return f"GET /v1/bench/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def drive(port, calls, conns=8, distinct=False):
    """`calls` GETs, one in flight per connection at a time; the statuses seen."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    bufs, seen, done = [b""] * conns, {}, 0
    while done < calls:
        k = min(conns, calls - done)
        for i in range(k):
            socks[i].sendall(request(i, distinct))
        for i in range(k):
            buf = bufs[i]
            while b"\r\n\r\n" not in buf:
                chunk = socks[i].recv(65536)
                if not chunk:
                    raise SystemExit("the proxy closed a connection")
                buf += chunk
            head, rest = buf.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
            while len(rest) < length:
                rest += socks[i].recv(65536)
            bufs[i] = rest[length:]
            status = head.split(b" ", 2)[1].decode()
            seen[status] = seen.get(status, 0) + 1
        done += k
    for s in socks:
        s.close()
    return seen


def counted(cmd, port, calls, warmup, out, env=None, fill=False, distinct=False):
    """Runs `cmd` under callgrind; instructions per call over `calls` GETs."""
    p = subprocess.Popen(["taskset", "-c", "0", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"] + cmd,
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60)
        if fill:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/fill", timeout=30).read()
        drive(port, warmup, distinct=distinct)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
        seen = drive(port, calls, distinct=distinct)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
    finally:
        stop([p])
    dump = f"{out}.{p.pid}.1"
    with open(dump) as f:
        total = next(int(l.split()[1]) for l in f if l.startswith(("summary:", "totals:")))
    return total / calls, seen


def config(tmp, name, port, up_port, extra, coalesce=False):
    path = os.path.join(tmp, name + ".toml")
    with open(path, "w") as f:
        f.write(f"""[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{free_port()}"\n
[upstream]\nurl = "http://127.0.0.1:{up_port}"\n[credential]\nkind = "api_key"\napi_key_env = "BENCH_KEY"\n
[store]\nstate_file = ""\n[cache]\ncoalesce = {str(coalesce).lower()}\n[log]\nlevel = "warn"\n{extra}""")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--baseline", metavar="NAME=BIN", action="append", default=[],
                    help="another dastra-proxy binary counted the same way; repeatable")
    ap.add_argument("--paths", default="forwarding,429,cache-hit,coalesce-lead",
                    help="which paths to count, comma-separated")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dastra-instr-")
    env = dict(os.environ, BENCH_KEY="bench-key")
    up_port = free_port()
    upstream = nginx(tmp, "upstream", f'server {{ listen 127.0.0.1:{up_port}; location / {{ return 200 "ok"; }} }}', cpu="1")
    try:
        wait_port(up_port)
        open_limits = '[[limits]]\nrequests = 10000000\nper = "1s"\n[admission]\nmargin = "0ms"\n'
        full = '[[limits]]\nrequests = 1\nper = "1h"\n[admission]\non_limit = "reject"\n'
        cached = open_limits + '[[cache.rules]]\npath = "/v1/bench"\nttl = "1h"\n'
        # (path, config, answer expected, coalescing on, a URL per connection)
        every = [("forwarding", open_limits, "200", False, False), ("429", full, "429", False, False),
                 ("cache-hit", cached, "200", False, False), ("coalesce-lead", open_limits, "200", True, True)]
        chosen = a.paths.split(",")
        paths = [p for p in every if p[0] in chosen]
        rows = []
        for name, binary in [("dastra", BIN)] + [b.split("=", 1) for b in a.baseline]:
            for path, extra, want, coalesce, distinct in paths:
                port = free_port()
                conf = config(tmp, f"{name}-{path}", port, up_port, extra, coalesce)
                per, seen = counted([binary, "--config", conf], port, a.calls, a.warmup,
                                    os.path.join(tmp, f"cg-{name}-{path}"), env, fill=(want == "429"),
                                    distinct=distinct)
                if set(seen) != {want}:
                    raise SystemExit(f"{name} {path}: answers {seen}, expected only {want}")
                rows.append((name, path, per))
                print(f"{name:<12}{path:<12}{per:>10.0f}", file=sys.stderr)
        port = free_port()
        floor = os.path.join(os.path.dirname(BIN), "examples", "hyper_floor")
        per, _ = counted([floor, f"127.0.0.1:{port}", f"127.0.0.1:{up_port}"], port, a.calls, a.warmup,
                         os.path.join(tmp, "cg-floor"))
        rows.append(("hyper-floor", "forwarding", per))
    finally:
        stop([upstream])
    print(f"\ninstructions per call (callgrind, user space), {a.calls} calls after {a.warmup}\n")
    print(f"{'binary':<12}{'path':<15}{'instr/call':>11}")
    for name, path, per in rows:
        print(f"{name:<12}{path:<15}{per:>11.0f}")
    base = {(n, p): v for n, p, v in rows}
    fl = base[("hyper-floor", "forwarding")]
    if ("dastra", "forwarding") in base:
        print(f"\n  dastra / hyper-floor, forwarding   {base[('dastra', 'forwarding')] / fl:.2f}")
    for spec in a.baseline:
        name = spec.split("=", 1)[0]
        for path in [p[0] for p in paths]:
            label = f"dastra / {name}, {path}"
            print(f"  {label:<34}{base[('dastra', path)] / base[(name, path)]:.3f}")


if __name__ == "__main__":
    main()
