#!/usr/bin/env python3
"""Password-login benchmark of a release core4d: memory after many logins, and the latency of a
real login with and without a flood of bogus logins in flight.

    tests/bench/login.py [--core4d target/release/core4d] [--logins 1000] [--concurrency 32]
                         [--flood 400] [--samples 100] [--flood-samples 50]

Starts core4d with its embedded PostgreSQL in a temporary directory and prints a Markdown report.
Only the standard library; loopback only. Clients are spread over 127.0.0.0/8 source addresses
(Linux routes all of it to lo), so per-address rules see distinct clients.

Phases:
1. idle RSS of core4d (after start, which already hashed twice: the dummy and the admin seed);
2. `--logins` successful logins, `--concurrency` at a time, each worker from its own address;
   RSS afterwards, checked against idle + slots x m_cost + 30 MiB (issue 7, item 10);
3. `--samples` sequential real logins from 127.0.0.2: p50/p99 without a flood (the first one
   makes 127.0.0.2 an address that logged in before);
4. `--flood-samples` of them while `--flood` bogus logins are kept in flight from one address
   (127.0.0.1);
5. the same while they come from `--flood` addresses (127.0.1.x ...), one login in flight each.
In 4 and 5, ten first logins from addresses never seen before are tried too.
The flooders resend as soon as an answer arrives, as an attacker would (503 included).

The login limiter is lifted (CORE4_LOGIN_LIMIT__MAX_FAILURES) so that phases 4 and 5 measure the
hasher's queue. With the default limit (10 failures per address and window) the limiter answers
429 to both floods before they reach the hasher: after 10 failures for phase 4, and after 10 per
address for phase 5. Only an attacker with more addresses than that meets the queue alone.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ADMIN_PASSWORD = "bench-admin-pw"
PORT = 5311


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Client:
    """One keep-alive connection from a fixed source address."""

    def __init__(self, source):
        self.source = source
        self.conn = None

    def login(self, user, password):
        query = urllib.parse.urlencode({"username": user, "password": password})
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    "127.0.0.1", PORT, timeout=120, source_address=(self.source, 0)
                )
            try:
                self.conn.request("GET", f"/core4/api/v1/login?{query}")
                resp = self.conn.getresponse()
                resp.read()
                return resp.status
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def real_logins(samples):
    """Sequential admin logins from 127.0.0.2: (latencies of 200s in ms, count of each status)."""
    client = Client("127.0.0.2")
    latencies, statuses = [], {}
    for _ in range(samples):
        t0 = time.perf_counter()
        status = client.login("admin", ADMIN_PASSWORD)
        elapsed = (time.perf_counter() - t0) * 1000
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            latencies.append(elapsed)
    return latencies, statuses


def newcomers(n, subnet):
    """One admin login from each of `n` addresses never seen before: how many got in."""
    return sum(Client(f"127.0.{subnet}.{i + 1}").login("admin", ADMIN_PASSWORD) == 200 for i in range(n))


def flood(sources, stop, counts, lock):
    """Keeps one bogus login in flight per entry of `sources` until `stop` is set."""

    def worker(source, n):
        client = Client(source)
        local = {}
        i = 0
        while not stop.is_set():
            i += 1
            try:
                status = client.login(f"nobody{n}", f"guess {i}")
            except OSError:
                status = "error"
            local[status] = local.get(status, 0) + 1
        with lock:
            for k, v in local.items():
                counts[k] = counts.get(k, 0) + v

    threads = [
        threading.Thread(target=worker, args=(s, n), daemon=True) for n, s in enumerate(sources)
    ]
    for t in threads:
        t.start()
    return threads


def describe(latencies, statuses):
    ok = len(latencies)
    tries = sum(statuses.values())
    refused = ", ".join(f"{v}x {k}" for k, v in sorted(statuses.items(), key=str) if k != 200)
    return (
        f"p50 {statistics.median(latencies):.0f} ms, p99 {percentile(latencies, 99):.0f} ms, "
        f"max {max(latencies):.0f} ms ({ok} of {tries} succeeded{'; ' + refused if refused else ''})"
        if latencies
        else f"no login succeeded ({refused})"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--core4d", default="target/release/core4d")
    ap.add_argument("--logins", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--flood", type=int, default=400)
    ap.add_argument("--samples", type=int, default=100, help="real logins without a flood")
    ap.add_argument("--flood-samples", type=int, default=50, help="real logins per flood")
    ap.add_argument("--flood-seconds", type=float, default=3, help="flood time before sampling")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="core4-login-bench.", dir="/dev/shm")
    # As root the embedded cluster runs as `postgres`, which must reach it.
    os.chmod(work, 0o755)
    env = dict(
        os.environ,
        CORE4_ADMIN_PASSWORD=ADMIN_PASSWORD,
        CORE4_LOGIN_LIMIT__MAX_FAILURES="100000000",
    )
    log = open(f"{work}/core4d.log", "w")
    server = subprocess.Popen(
        [args.core4d, "--data-dir", f"{work}/data", "--listen", f"127.0.0.1:{PORT}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        while "core4d is ready" not in open(f"{work}/core4d.log").read():
            if server.poll() is not None or time.time() > deadline:
                sys.exit(f"core4d did not start:\n{open(f'{work}/core4d.log').read()}")
            time.sleep(0.1)
        time.sleep(2)
        run(args, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def run(args, pid):
    print(f"## Password login ({time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, {os.path.basename(args.core4d)})\n")
    idle = rss_mib(pid)

    # Phase 2: memory after many logins.
    per_worker = [args.logins // args.concurrency + (i < args.logins % args.concurrency)
                  for i in range(args.concurrency)]
    statuses, lock = {}, threading.Lock()

    def login_worker(i, n):
        client = Client(f"127.0.0.{10 + i}")
        local = {}
        for _ in range(n):
            status = client.login("admin", ADMIN_PASSWORD)
            local[status] = local.get(status, 0) + 1
        with lock:
            for k, v in local.items():
                statuses[k] = statuses.get(k, 0) + v

    t0 = time.perf_counter()
    workers = [threading.Thread(target=login_worker, args=(i, n)) for i, n in enumerate(per_worker)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    time.sleep(1)
    after = rss_mib(pid)
    print("| measure | result |")
    print("|---|---|")
    print(f"| RSS idle (after start) | {idle:.0f} MiB |")
    print(f"| {args.logins} logins, {args.concurrency} concurrent | "
          f"{args.logins / elapsed:.0f} logins/s, replies {json.dumps(statuses)} |")
    print(f"| RSS after them | {after:.0f} MiB (+{after - idle:.0f} MiB; bound with N slots: "
          f"idle + N x 19 + 30 = {idle + 30:.0f} + N x 19 MiB) |")

    # Phase 3: no flood.
    lat, st = real_logins(args.samples)
    print(f"| real login, no flood | {describe(lat, st)} |")

    # Phases 4 and 5: floods.
    flood_rows = []
    for label, sources in [
        (f"{args.flood} bogus logins in flight from one address", ["127.0.0.1"] * args.flood),
        (f"{args.flood} bogus logins in flight from {args.flood} addresses",
         [f"127.0.{1 + n // 250}.{1 + n % 250}" for n in range(args.flood)]),
    ]:
        stop, counts = threading.Event(), {}
        threads = flood(sources, stop, counts, lock)
        time.sleep(args.flood_seconds)
        t0 = time.perf_counter()
        lat, st = real_logins(args.flood_samples)
        new = newcomers(10, 200 + len(flood_rows))
        window = time.perf_counter() - t0
        stop.set()
        for t in threads:
            t.join(timeout=180)
        flood_rate = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str))
        flood_rows.append(label)
        print(f"| real login, {label} | {describe(lat, st)}; first logins from 10 new "
              f"addresses: {new} let in; flood replies over {args.flood_seconds + window:.0f} s: "
              f"{flood_rate} |")
    print(f"| RSS at the end | {rss_mib(pid):.0f} MiB |")


if __name__ == "__main__":
    main()
