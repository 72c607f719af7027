"""How regularly core4d pings event sockets, and how soon it closes one that never answers.

    CORE4_EVENTS__PING_INTERVAL_SECS=1 core4d ...      # the interval under test
    python3 tests/bench/ping_interval.py SERVER_URL ADMIN_PASSWORD [N]

Opens two event sockets as admin over raw TCP (no WebSocket library, so nothing answers a ping
behind the script's back): one answers every ping with a pong, the other answers nothing. Reports
the intervals between the N pings the first one gets, and when the second one got its close
frame (code and reason; core4d's rule is two intervals without a pong). The end-to-end tests
only check that the pings and the close come; their timing is measured here. Loopback only;
bounded by N pings and a 120 s guard.
"""

import base64
import json
import os
import select
import socket
import statistics
import struct
import sys
import time
import urllib.parse
import urllib.request

server, password = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 10
url = urllib.parse.urlparse(server)
query = urllib.parse.urlencode({"username": "admin", "password": password})
with urllib.request.urlopen(f"{server}/core4/api/v1/login?{query}") as resp:
    token = json.load(resp)["data"]["token"]


def connect():
    sock = socket.create_connection((url.hostname, url.port or 80))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /core4/api/v1/event?token={token} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frames(buf):
    """Complete server frames (unmasked) at the start of buf: ([(opcode, payload)], rest)."""
    out = []
    while len(buf) >= 2:
        opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                break
            length, at = struct.unpack(">H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                break
            length, at = struct.unpack(">Q", buf[2:10])[0], 10
        if len(buf) < at + length:
            break
        out.append((opcode, buf[at : at + length]))
        buf = buf[at + length :]
    return out, buf


def pong(sock, payload):
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)


answering, silent = connect(), connect()
start = time.perf_counter()
bufs = {answering: b"", silent: b""}
pings, silent_pings, closed = [], 0, None
while (len(pings) < n or closed is None) and time.perf_counter() - start < 120:
    ready, _, _ = select.select([s for s in bufs if s is answering or closed is None], [], [], 1)
    for sock in ready:
        data = sock.recv(65536)
        if not data:
            if sock is silent and closed is None:
                closed = (time.perf_counter() - start, None, "connection closed without a frame")
            continue
        parsed, bufs[sock] = frames(bufs[sock] + data)
        for opcode, payload in parsed:
            now = time.perf_counter() - start
            if sock is answering and opcode == 0x9:
                pings.append(now)
                pong(sock, payload)
            elif sock is silent and opcode == 0x9:
                silent_pings += 1
            elif sock is silent and opcode == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                closed = (now, code, payload[2:].decode(errors="replace"))

gaps = [b - a for a, b in zip(pings, pings[1:])]
print(f"answering socket: {len(pings)} pings, first after {pings[0]:.3f} s" if pings else "no pings")
if gaps:
    print(
        f"  intervals: min {min(gaps):.3f} s, median {statistics.median(gaps):.3f} s, "
        f"max {max(gaps):.3f} s"
    )
if closed:
    print(
        f"silent socket: closed after {closed[0]:.3f} s with {closed[1]} {closed[2]!r} "
        f"({silent_pings} pings unanswered)"
    )
else:
    print("silent socket: not closed within the guard")
