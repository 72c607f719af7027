"""Delay from `core4ctl event send` to the line in a running `core4ctl event tail`.

    python3 tests/bench/cli_latency.py CORE4CTL_BINARY SERVER_URL ADMIN_PASSWORD [N]

Logs in (in a temporary XDG config dir), starts `event tail bench-cli -o json`, then N times runs
`event send bench-cli <i>` and measures from just before the send process starts until the tail
prints message <i>: the whole user-visible delay, the send process's start, login-token load,
WebSocket connect and durable commit included. Also times `roles list` and `event send` alone.
Loopback only; bounded by N.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ctl, server, password = sys.argv[1], sys.argv[2], sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 200
home = tempfile.mkdtemp(prefix="core4ctl-bench-")
env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, "config"), CORE4_SERVER=server)


def run(*args, stdin=None):
    return subprocess.run([ctl, *args], env=env, input=stdin, capture_output=True, text=True, check=True)


run("login", "--username", "admin", "--password-stdin", stdin=password + "\n")
tail = subprocess.Popen([ctl, "event", "tail", "bench-cli", "-o", "json"], env=env,
                        stdout=subprocess.PIPE, text=True)
seen = {}
ready = threading.Event()


def reader():
    for line in tail.stdout:
        now = time.perf_counter()
        try:
            seen[json.loads(line)["data"]] = now
        except (ValueError, KeyError):
            pass
        ready.set()


threading.Thread(target=reader, daemon=True).start()
time.sleep(1.0)  # the tail's socket is subscribed
delays, sends = [], []
for i in range(n):
    text = f"m{i}"
    t0 = time.perf_counter()
    run("event", "send", "bench-cli", text)
    sends.append(time.perf_counter() - t0)
    deadline = time.time() + 5
    while text not in seen and time.time() < deadline:
        time.sleep(0.0005)
    if text not in seen:
        sys.exit(f"message {text} never reached the tail")
    delays.append(seen[text] - t0)
tail.terminate()

lists = []
for _ in range(50):
    t0 = time.perf_counter()
    run("roles", "list")
    lists.append(time.perf_counter() - t0)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


for name, xs in (("send -> line in tail", delays), ("event send (whole process)", sends), ("roles list (whole process)", lists)):
    print(f"| {name} | {len(xs)} | {pct(xs, 50):.1f} ms | {pct(xs, 99):.1f} ms | {statistics.mean(xs) * 1000:.1f} ms |")
