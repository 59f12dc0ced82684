#!/usr/bin/env python3
"""Soak test: dastra-proxy under well-behaved and hostile load at once.

Against a scaled quota (20 calls per 500 ms), for --seconds (default 300):
  * a burst of --burst (5000) calls queued at once, one connection each;
  * --clients (1000) keep-alive connections calling back to back;
  * 200 idle sockets that send nothing (re-opened when the proxy closes them);
  * 50 stalled uploads (Content-Length: 100, 11 bytes sent, then silence).
Everything is on 127.0.0.0/8; every loop ends by itself.

Judged on the upstream's own arrival log: no 500 ms interval may hold more
than 20 calls; every well-behaved call must be answered 200; the proxy's RSS
and open fds are sampled (start / peak / end) and must come back down.
"""
import argparse, asyncio, os, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "dastra-proxy")
N, PER = 20, 0.5


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


class Upstream:
    """A tiny HTTP/1.1 server that logs when each call arrives."""

    def __init__(self):
        self.arrivals = []
        self.writers = set()

    async def handle(self, reader, writer):
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                self.arrivals.append(time.monotonic())
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


async def open_from(local, port):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))


async def call(reader, writer, path):
    writer.write(f"GET {path} HTTP/1.1\r\nhost: soak\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def one_shot(stats, port, i, limit):
    try:
        r, w = await open_from(f"127.0.1.{i % 200 + 1}", port)
        stats["burst"].append(await asyncio.wait_for(call(r, w, f"/v1/burst/{i}"), limit))
        w.close()
    except Exception as e:  # noqa: BLE001 - counted, reported
        stats["errors"].append(repr(e))


async def keep_alive(stats, port, i, end, limit):
    try:
        r, w = await open_from(f"127.0.2.{i % 200 + 1}", port)
        while time.monotonic() < end:
            stats["steady"].append(await asyncio.wait_for(call(r, w, f"/v1/steady/{i}"), limit))
        w.close()
    except Exception as e:  # noqa: BLE001
        stats["errors"].append(repr(e))


async def idle_socket(stats, port, end):
    while time.monotonic() < end:
        try:
            r, w = await open_from("127.0.3.1", port)
            while time.monotonic() < end:
                if not await asyncio.wait_for(r.read(1024), max(end - time.monotonic(), 0.1)):
                    stats["idle_closed"] += 1
                    break
            w.close()
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass


async def stalled_upload(stats, port, end):
    while time.monotonic() < end:
        try:
            r, w = await open_from("127.0.4.1", port)
            w.write(b"POST /v1/upload HTTP/1.1\r\nhost: soak\r\ncontent-length: 100\r\n\r\n0123456789a")
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 60)
            stats["stalled_answers"].append(int(head.split(b" ", 2)[1]))
            w.close()
        except Exception:  # noqa: BLE001
            await asyncio.sleep(0.5)


def proc_sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def sampler(pid, samples, end):
    while time.monotonic() < end:
        samples.append(proc_sample(pid))
        await asyncio.sleep(5)


def violations(arrivals):
    arrivals = sorted(arrivals)
    bad, j = 0, 0
    for i, t in enumerate(arrivals):
        while arrivals[j] <= t - PER:
            j += 1
        if i - j + 1 > N:
            bad += 1
    return bad


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--burst", type=int, default=5000)
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--stalled", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the load this many times against the same proxy: RSS that keeps "
                         "growing round after round is a leak, RSS that stays at the first "
                         "peak is the allocator keeping freed memory")
    a = ap.parse_args()

    up = Upstream()
    up_port = free_port()
    server = await asyncio.start_server(up.handle, "127.0.0.1", up_port, backlog=4096)
    port, admin = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="dastra-soak-")
    conf = os.path.join(tmp, "config.toml")
    with open(conf, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
header_read_timeout = "2s"
idle_timeout = "5s"
body_read_timeout = "3s"
[upstream]
url = "http://127.0.0.1:{up_port}"
[credential]
api_key_env = "SOAK_KEY"
[[limits]]
requests = {N}
per = "{int(PER * 1000)}ms"
[admission]
max_queue = {a.burst + a.clients + 100}
max_wait = "30m"
margin = "50ms"
[log]
level = "warn"
""")
    proxy = subprocess.Popen([BIN, "--config", conf], env=dict(os.environ, SOAK_KEY="k"),
                             stderr=open(os.path.join(tmp, "proxy.log"), "w"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); break
        except OSError:
            await asyncio.sleep(0.1)
    stats = {"burst": [], "steady": [], "errors": [], "idle_closed": 0, "stalled_answers": []}
    samples = [proc_sample(proxy.pid)]
    start = time.monotonic()
    after_round = []
    for _ in range(a.rounds):
        end = time.monotonic() + a.seconds
        # Each call may wait for the whole queue ahead of it: the burst alone
        # is burst / N * PER seconds of quota.
        limit = a.seconds + (a.burst + a.clients) / N * PER + 60
        tasks = [asyncio.create_task(sampler(proxy.pid, samples, end))]
        tasks += [asyncio.create_task(idle_socket(stats, port, end)) for _ in range(a.idle)]
        tasks += [asyncio.create_task(stalled_upload(stats, port, end)) for _ in range(a.stalled)]
        tasks += [asyncio.create_task(one_shot(stats, port, i, limit)) for i in range(a.burst)]
        tasks += [asyncio.create_task(keep_alive(stats, port, i, end, limit)) for i in range(a.clients)]
        await asyncio.gather(*tasks)
        await asyncio.sleep(6)  # past idle_timeout: what is left open now is a leak
        samples.append(proc_sample(proxy.pid))
        after_round.append(samples[-1])
    proxy.terminate(); proxy.wait(30)
    server.close()
    for w in list(up.writers):
        w.close()
    await asyncio.sleep(0.2)

    took = time.monotonic() - start
    well = stats["burst"] + stats["steady"]
    bad_status = [s for s in well if s != 200]
    rss = [s[0] for s in samples]; fds = [s[1] for s in samples]
    span = (max(up.arrivals) - min(up.arrivals)) if up.arrivals else 0
    possible = span / (PER + 0.05) * N + N
    print(f"\nsoak: {took:.0f} s, quota {N} per {PER * 1000:.0f} ms (+50 ms margin)")
    print(f"  upstream calls        {len(up.arrivals)}  ({len(up.arrivals) / possible:.0%} of what the windows allow)")
    print(f"  window violations     {violations(up.arrivals)}")
    print(f"  well-behaved answered {len(well)}: {len(well) - len(bad_status)} x 200, {len(bad_status)} other, {len(stats['errors'])} errors")
    print(f"  burst calls answered  {len(stats['burst'])} of {a.burst * a.rounds}")
    print(f"  idle sockets closed   {stats['idle_closed']} times")
    print(f"  stalled uploads       {len(stats['stalled_answers'])} answered, statuses {sorted(set(stats['stalled_answers']))}")
    print(f"  proxy RSS KiB         start {rss[0]}  peak {max(rss)}  end {rss[-1]}")
    print(f"  proxy open fds        start {fds[0]}  peak {max(fds)}  end {fds[-1]} (the upstream pool stays)")
    if a.rounds > 1:
        print("  after each round      " + ", ".join(f"RSS {r} KiB / {f} fds" for r, f in after_round))
    if stats["errors"]:
        print("  first errors:", stats["errors"][:3])
    # What may stay open: the pool of kept-alive upstream connections, at
    # most one per send in flight at once (bounded by the window's N).
    ok = (violations(up.arrivals) == 0 and not bad_status and not stats["errors"]
          and len(stats["burst"]) == a.burst * a.rounds and fds[-1] <= fds[0] + 2 * N)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
