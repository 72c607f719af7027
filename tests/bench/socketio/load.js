// Load client for the Socket.IO peer (server.js): the same three loads as core4d's loadgen.
//
//   node load.js fanout  --url http://127.0.0.1:5101 [--sub-url URL2] --subscribers 1000 --rate 100
//                        --size 100 --duration 20 [--pid P ...] --scenario fanout100 [--latency-out F]
//   node load.js publish --url URL --publishers 100 --window 1 --size 100 --duration 20 [--pid P ...]
//                        --scenario publish1 [--latency-out F]
//   node load.js idle    --url URL --connections 5000 [--pid P ...] --scenario idle
//
// Common options: --workers N (client processes; default: CPU count, at least 2), --channel bench,
// --parallel N (connections opened at once per worker, default 50), --warmup S (default 2).
//
// One Node process cannot read the frames of 1,000 subscribers at 400 msg/s (400,000 Socket.IO
// packets/s to decode), so subscribers (and publishers, idle sockets) live in forked worker
// processes; this process coordinates, runs the fan-out publisher(s) and merges the workers'
// latency histograms. Every process reads the same clock, CLOCK_MONOTONIC through
// process.hrtime.bigint(), so a send time written into a message's text by one process can be
// subtracted from the receive time read in another.
//
// Sockets use socket.io-client with `transports: ['websocket']`: a WebSocket from the start, as
// browsers that support it end up with anyway (skips the long-polling handshake and upgrade; the
// server keeps its defaults and accepts both).
//
// Output: human lines, then one `RESULT <scenario> socketio key=value ...` line.
"use strict";

const { fork, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const { io } = require("socket.io-client");
const WebSocket = require("ws");
const crypto = require("node:crypto");
const net = require("node:net");

const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- latency histogram (µs)
// Logarithmic buckets 0.5 % wide: bucket i holds values in (R^(i-1), R^i]; ample for 60 s.
const R = 1.005;
const LN_R = Math.log(R);
const NBUCKETS = 4000;

class Hist {
  constructor() {
    this.counts = new Float64Array(NBUCKETS);
    this.n = 0;
    this.max = 0;
  }
  add(us) {
    if (us < 1) us = 1;
    let i = Math.ceil(Math.log(us) / LN_R);
    if (i >= NBUCKETS) i = NBUCKETS - 1;
    this.counts[i]++;
    this.n++;
    if (us > this.max) this.max = us;
  }
  toJSON() {
    const sparse = [];
    for (let i = 0; i < NBUCKETS; i++) if (this.counts[i]) sparse.push(i, this.counts[i]);
    return { sparse, n: this.n, max: this.max };
  }
  merge(j) {
    for (let k = 0; k < j.sparse.length; k += 2) this.counts[j.sparse[k]] += j.sparse[k + 1];
    this.n += j.n;
    if (j.max > this.max) this.max = j.max;
  }
  // The upper edge of the bucket holding the sample of rank ceil(p% of n), in ms; 100 = max.
  pct(p) {
    if (this.n === 0) return NaN;
    if (p >= 100) return this.max / 1000;
    const rank = Math.max(1, Math.ceil((p / 100) * this.n));
    let seen = 0;
    for (let i = 0; i < NBUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(Math.pow(R, i), this.max) / 1000;
    }
    return this.max / 1000;
  }
}

const PERCENTILES = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9, 99.99, 100];

// ---------------------------------------------------------------- sockets
function connect(url) {
  return new Promise((resolve, reject) => {
    const s = io(url, { transports: ["websocket"], forceNew: true, reconnection: false, timeout: 20000 });
    s.once("connect", () => resolve(s));
    s.once("connect_error", (err) => {
      s.close();
      reject(new Error(`connecting to ${url}: ${err.message}`));
    });
  });
}

// A subscriber that speaks the Engine.IO 4 / Socket.IO 5 wire protocol itself over one `ws`
// WebSocket, without socket.io-client's packet decoding and event dispatch (which cost ~25 µs of
// CPU per received packet here: too much for 400,000 deliveries/s on a shared 2-core machine).
// It answers the server's pings, so the server sees an ordinary Socket.IO client; it finds the
// send time in each event frame with indexOf instead of JSON.parse.
//   server -> 0{"sid":..}   client -> 40   server -> 40{"sid":..}   (connected to namespace "/")
//   client -> 420["subscribe","bench"]  server -> 430[true]           (event with ack id 0)
//   server -> 42["event",{"id":1,"channel":"bench","text":"<send µs> <seq> xxx"}]
//   server -> 2 (ping)  client -> 3 (pong)
// The smallest WebSocket client that does the job (RFC 6455): the HTTP upgrade, text frames in
// (unmasked, as servers send them), masked text frames out, pong to ping, close. Measured against
// the `ws` package's client it takes about half the CPU per received frame.
class MiniWs {
  constructor(url, onOpen, onMessage, onError) {
    const u = new URL(url);
    const key = crypto.randomBytes(16).toString("base64");
    const expect = crypto.createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
    this.sock = net.connect(Number(u.port || 80), u.hostname);
    this.sock.setNoDelay(true);
    this.buf = null;
    this.upgraded = false;
    this.sock.on("connect", () => {
      this.sock.write(
        `GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    this.sock.on("error", onError);
    this.sock.on("close", () => onError(new Error("closed")));
    this.sock.on("data", (chunk) => {
      let b = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
      this.buf = null;
      if (!this.upgraded) {
        const end = b.indexOf("\r\n\r\n");
        if (end < 0) return void (this.buf = b);
        const head = b.toString("latin1", 0, end);
        if (!/^HTTP\/1\.1 101/.test(head) || !head.includes(expect)) {
          return onError(new Error("upgrade refused: " + head.split("\r\n")[0]));
        }
        this.upgraded = true;
        onOpen();
        b = b.subarray(end + 4);
      }
      let off = 0;
      while (b.length - off >= 2) {
        const op = b[off] & 0x0f;
        let len = b[off + 1] & 0x7f;
        let hdr = 2;
        if (len === 126) {
          if (b.length - off < 4) break;
          len = b.readUInt16BE(off + 2);
          hdr = 4;
        } else if (len === 127) {
          if (b.length - off < 10) break;
          len = Number(b.readBigUInt64BE(off + 2));
          hdr = 10;
        }
        if (b.length - off < hdr + len) break;
        const start = off + hdr;
        off = start + len;
        if (op === 1 || op === 0) onMessage(b.toString("utf8", start, off));
        else if (op === 9) this.frame(0x8a, b.subarray(start, off));
        else if (op === 8) return this.sock.end();
      }
      if (off < b.length) this.buf = b.subarray(off);
    });
  }
  frame(first, payload) {
    const len = payload.length;
    const hdr = len < 126 ? 2 : 4;
    const f = Buffer.allocUnsafe(hdr + 4 + len);
    f[0] = first;
    if (hdr === 2) f[1] = 0x80 | len;
    else {
      f[1] = 0x80 | 126;
      f.writeUInt16BE(len, 2);
    }
    crypto.randomFillSync(f, hdr, 4);
    for (let i = 0; i < len; i++) f[hdr + 4 + i] = payload[i] ^ f[hdr + (i & 3)];
    this.sock.write(f);
  }
  send(text) {
    this.frame(0x81, Buffer.from(text));
  }
  close() {
    this.sock.destroy();
  }
}

function connectRaw(url, channel, onSendTime, mini) {
  return new Promise((resolve, reject) => {
    const u = new URL("/socket.io/?EIO=4&transport=websocket", url);
    let state = "open";
    let ws;
    const fail = (err) => {
      if (state === "done") return;
      const was = state;
      state = "done";
      ws.close();
      if (was === "live") console.error(`subscriber lost: ${err.message || err}`);
      else reject(new Error(`connecting to ${url}: ${err.message || err}`));
    };
    const timer = setTimeout(() => fail(new Error("no subscription ack within 20 s")), 20000);
    const onMessage = (f) => {
      if (state === "live") {
        if (f.charCodeAt(0) === 52 /* 4 */ && f.charCodeAt(1) === 50 /* 2 */) {
          const i = f.indexOf('"text":"');
          if (i > 0) onSendTime(parseInt(f.slice(i + 8, i + 30), 10));
        } else if (f === "2") ws.send("3");
        return;
      }
      if (f === "2") return ws.send("3");
      if (state === "open" && f[0] === "0") {
        state = "connect";
        ws.send("40");
      } else if (state === "connect" && f.startsWith("40")) {
        state = "subscribe";
        ws.send("420" + JSON.stringify(["subscribe", channel]));
      } else if (state === "subscribe" && f.startsWith("430")) {
        if (f !== "430[true]") return fail(new Error("subscribe refused: " + f));
        state = "live";
        clearTimeout(timer);
        resolve({ close: () => ((state = "done"), ws.close()) });
      } else fail(new Error("unexpected frame " + f.slice(0, 80)));
    };
    if (mini) {
      u.protocol = "http:";
      ws = new MiniWs(u.href, () => {}, onMessage, fail);
    } else {
      u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
      ws = new WebSocket(u, { perMessageDeflate: false });
      ws.on("error", fail);
      ws.on("close", () => fail(new Error("closed")));
      ws.on("message", (data) => onMessage(data.toString()));
    }
  });
}

function subscribe(s, channel) {
  return new Promise((resolve, reject) => {
    s.timeout(20000).emit("subscribe", channel, (err, ok) => {
      if (err) reject(new Error("subscribe: no ack within 20 s"));
      else if (ok !== true) reject(new Error("subscribe refused: " + JSON.stringify(ok)));
      else resolve(s);
    });
  });
}

// Opens n sockets, `parallel` at a time; `each` runs on every connected socket before it counts.
async function openMany(url, n, parallel, each) {
  const out = new Array(n);
  let next = 0;
  async function lane() {
    while (next < n) {
      const i = next++;
      const s = await connect(url);
      if (each) await each(s);
      out[i] = s;
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, n) }, lane));
  return out;
}

function text(sendUs, seq, size) {
  const head = `${sendUs} ${seq} `;
  return head.length >= size ? head : head + "x".repeat(size - head.length);
}

// ---------------------------------------------------------------- worker process
function worker() {
  let sockets = [];
  let win = null; // [t0, t1) in µs, on send times (fan-out) or ack times (publish)
  let received = 0;
  let outside = 0;
  let hist = new Hist();
  let cpu0 = process.cpuUsage();
  const cpuSecsSince = () => {
    const c = process.cpuUsage(cpu0);
    return (c.user + c.system) / 1e6;
  };
  const reply = (m) => process.send(m);

  const handlers = {
    async subs(m) {
      const t = Date.now();
      const onSendTime = (sent) => {
        const at = nowUs();
        if (win && sent >= win[0] && sent < win[1]) {
          received++;
          hist.add(at - sent);
        } else outside++;
      };
      if (m.client !== "sio") {
        sockets = [];
        let next = 0;
        const lane = async () => {
          while (next < m.n) {
            next++;
            sockets.push(await connectRaw(m.url, m.channel, onSendTime, m.client === "mini"));
          }
        };
        await Promise.all(Array.from({ length: Math.min(m.parallel, m.n) }, lane));
      } else {
        sockets = await openMany(m.url, m.n, m.parallel, (s) => {
          s.on("event", (ev) => onSendTime(parseInt(ev.text, 10)));
          return subscribe(s, m.channel);
        });
      }
      reply({ ev: "ready", n: sockets.length, secs: (Date.now() - t) / 1000 });
    },
    window(m) {
      win = [m.t0, m.t1];
      cpu0 = process.cpuUsage();
    },
    count() {
      reply({ ev: "count", received });
    },
    stats() {
      reply({ ev: "stats", received, outside, cpu: cpuSecsSince(), hist: hist.toJSON() });
    },
    async pubs(m) {
      const t = Date.now();
      sockets = await openMany(m.url, m.n, m.parallel, null);
      reply({ ev: "ready", n: sockets.length, secs: (Date.now() - t) / 1000 });
    },
    run(m) {
      // Every publisher keeps m.window publishes in flight until m.t1; acks arriving in
      // [m.t0, m.t1) are counted, with their send-to-ack latency.
      let errors = 0;
      let inflight = 0;
      let seq = 0;
      cpu0 = process.cpuUsage();
      const done = () => {
        if (inflight === 0) reply({ ev: "stats", received, errors, cpu: cpuSecsSince(), hist: hist.toJSON() });
      };
      const send = (s) => {
        const sent = nowUs();
        if (sent >= m.t1) return done();
        inflight++;
        s.timeout(30000).emit("publish", { channel: m.channel, text: text(sent, seq++, m.size) }, (err, res) => {
          inflight--;
          const at = nowUs();
          if (err || !res || res.error) errors++;
          else if (at >= m.t0 && at < m.t1) {
            received++;
            hist.add(at - sent);
          }
          send(s);
        });
      };
      for (const s of sockets) for (let k = 0; k < m.window; k++) send(s);
      setTimeout(() => {
        if (inflight) reply({ ev: "stats", received, errors: errors + inflight, cpu: cpuSecsSince(), hist: hist.toJSON() });
      }, (m.t1 - nowUs()) / 1000 + 3000).unref();
    },
    async idle(m) {
      const t = Date.now();
      sockets = await openMany(m.url, m.n, m.parallel, (s) => subscribe(s, m.channel));
      reply({ ev: "ready", n: sockets.length, secs: (Date.now() - t) / 1000 });
    },
    exit() {
      for (const s of sockets) s.close();
      setTimeout(() => process.exit(0), 100);
    },
  };

  process.on("message", (m) => {
    Promise.resolve()
      .then(() => handlers[m.cmd](m))
      .catch((err) => {
        reply({ ev: "error", message: err.message });
      });
  });
  process.on("disconnect", () => process.exit(0));
}

// ---------------------------------------------------------------- coordinator
function parseArgs(argv) {
  const a = { mode: null, pid: [] };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (!k.startsWith("--")) {
      if (a.mode) throw new Error(`unexpected argument ${k}`);
      a.mode = k;
      continue;
    }
    const key = k.slice(2).replace(/-(.)/g, (_, c) => c.toUpperCase());
    const v = argv[++i];
    if (v === undefined) throw new Error(`${k} needs a value`);
    if (key === "pid") a.pid.push(Number(v));
    else a[key] = v;
  }
  return a;
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

// CPU seconds (user + system) of a process so far.
function cpuSecs(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // f[0] is field 3 (state)
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // fields 14 utime, 15 stime
}
const cpuAll = (pids) => pids.reduce((sum, p) => sum + cpuSecs(p), 0);

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : 0;
}
const rssAll = (pids) => pids.reduce((sum, p) => sum + rssKiB(p), 0);

class Workers {
  constructor(n) {
    this.list = [];
    for (let i = 0; i < n; i++) {
      const w = fork(__filename, [], { env: { ...process.env, SIO_LOAD_WORKER: "1" } });
      const state = { w, waiting: new Map() };
      w.on("message", (m) => {
        if (m.ev === "error") {
          console.error(`worker ${i}: ${m.message}`);
          process.exit(1);
        }
        const cb = state.waiting.get(m.ev);
        if (cb) {
          state.waiting.delete(m.ev);
          cb(m);
        }
      });
      w.on("exit", (code) => {
        if (code && !this.closing) {
          console.error(`worker ${i} exited with ${code}`);
          process.exit(1);
        }
      });
      this.list.push(state);
    }
  }
  // Sends msgs[i] to worker i (a function gets the index) and waits for each one's reply `ev`.
  ask(msgFor, ev) {
    return Promise.all(
      this.list.map((s, i) => {
        const p = ev ? new Promise((r) => s.waiting.set(ev, r)) : null;
        s.w.send(typeof msgFor === "function" ? msgFor(i) : msgFor);
        return p;
      }),
    );
  }
  close() {
    this.closing = true;
    for (const s of this.list) if (s.w.connected) s.w.send({ cmd: "exit" });
  }
}

// Splits n into k near-equal parts.
const split = (n, k) => Array.from({ length: k }, (_, i) => Math.floor(n / k) + (i < n % k ? 1 : 0));

const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : "nan");
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : "nan");

function report(a, hist) {
  console.log(
    `latency: n=${hist.n} p50=${f2(hist.pct(50))} ms p90=${f2(hist.pct(90))} ms p99=${f2(hist.pct(99))} ms ` +
      `p99.9=${f2(hist.pct(99.9))} ms max=${f2(hist.pct(100))} ms`,
  );
  if (a.latencyOut) {
    const lines = [`# ${a.scenario} socketio`, ...PERCENTILES.map((p) => `${p} ${hist.pct(p).toFixed(3)}`)];
    fs.writeFileSync(a.latencyOut, lines.join("\n") + "\n");
  }
}

async function fanout(a) {
  const subscribers = Number(a.subscribers ?? 1000);
  const rate = Number(a.rate ?? 100);
  const size = Number(a.size ?? 100);
  const duration = Number(a.duration ?? 20);
  const nPub = Number(a.publishers ?? 1);
  const subUrl = a.subUrl ?? a.url;
  const nw = Math.max(1, Math.min(Number(a.workers), subscribers));
  const ws = new Workers(nw);
  const shares = split(subscribers, nw);
  const ready = await ws.ask(
    (i) => ({ cmd: "subs", url: subUrl, n: shares[i], channel: a.channel, parallel: Number(a.parallel), client: a.client }),
    "ready",
  );
  console.log(
    `${subscribers} subscribers on ${subUrl} in ${Math.max(...ready.map((r) => r.secs)).toFixed(1)} s (${nw} worker processes)`,
  );
  const pubs = await openMany(a.url, nPub, nPub, null);
  let errors = 0;
  const t0 = nowUs() + Number(a.warmup) * 1e6;
  const t1 = t0 + duration * 1e6;
  await ws.ask({ cmd: "window", t0, t1 });

  // Server CPU over the measured window, read at its edges.
  const cpu = (async () => {
    await sleep((t0 - nowUs()) / 1000);
    const c0 = cpuAll(a.pid), c0t = nowUs();
    await sleep((t1 - nowUs()) / 1000);
    return ((cpuAll(a.pid) - c0) / ((nowUs() - c0t) / 1e6)) * 100;
  })();

  // Open loop at a fixed rate: every millisecond, send what is due.
  let seq = 0;
  let sentIn = 0;
  const start = nowUs();
  await new Promise((resolve) => {
    const tick = () => {
      const now = nowUs();
      if (now >= t1) return resolve();
      const due = Math.floor(((now - start) * rate) / 1e6);
      while (seq < due) {
        const sent = nowUs();
        if (sent >= t1) break;
        if (sent >= t0) sentIn++;
        pubs[seq % nPub].emit("publish", { channel: a.channel, text: text(sent, seq, size) }, (res) => {
          if (!res || res.error) errors++;
        });
        seq++;
      }
      setTimeout(tick, 1);
    };
    tick();
  });
  const expected = sentIn * subscribers;
  // Drain: up to 3 s for the deliveries of messages sent inside the window.
  const drainEnd = Date.now() + 3000;
  let received = 0;
  while (Date.now() < drainEnd) {
    received = (await ws.ask({ cmd: "count" }, "count")).reduce((s, r) => s + r.received, 0);
    if (received >= expected) break;
    await sleep(100);
  }
  const stats = await ws.ask({ cmd: "stats" }, "stats");
  const hist = new Hist();
  received = 0;
  for (const s of stats) {
    hist.merge(s.hist);
    received += s.received;
  }
  ws.close();
  for (const p of pubs) p.close();

  const perS = received / duration;
  console.log(
    `fanout: ${rate} msg/s x ${subscribers} subscribers: ${sentIn} sent in ${duration} s, ` +
      `${received} of ${expected} deliveries (${f1(perS)}/s), publish errors ${errors}`,
  );
  report(a, hist);
  console.log(
    `client workers' CPU from the window's start to the end of the drain, % of one core each: ` +
      stats.map((s) => f1((s.cpu / duration) * 100)).join(" "),
  );
  const cpuField = a.pid.length ? ` cpu_pct=${Math.round(await cpu)}` : "";
  console.log(
    `RESULT ${a.scenario} socketio deliveries_per_s=${f1(perS)} p50_ms=${f1(hist.pct(50))} p99_ms=${f1(hist.pct(99))} ` +
      `p999_ms=${f1(hist.pct(99.9))}${cpuField} expected=${expected} received=${received}`,
  );
}

async function publish(a) {
  const publishers = Number(a.publishers ?? 100);
  const window = Number(a.window ?? 1);
  const size = Number(a.size ?? 100);
  const duration = Number(a.duration ?? 20);
  const nw = Math.max(1, Math.min(Number(a.workers), publishers));
  const ws = new Workers(nw);
  const shares = split(publishers, nw);
  const ready = await ws.ask(
    (i) => ({ cmd: "pubs", url: a.url, n: shares[i], parallel: Number(a.parallel) }),
    "ready",
  );
  console.log(`${publishers} publishers in ${Math.max(...ready.map((r) => r.secs)).toFixed(1)} s (${nw} worker processes)`);
  const t0 = nowUs() + Number(a.warmup) * 1e6;
  const t1 = t0 + duration * 1e6;
  const done = ws.ask({ cmd: "run", t0, t1, window, size, channel: a.channel }, "stats");
  await sleep((t0 - nowUs()) / 1000);
  const c0 = cpuAll(a.pid), c0t = nowUs();
  await sleep((t1 - nowUs()) / 1000);
  const cpu = ((cpuAll(a.pid) - c0) / ((nowUs() - c0t) / 1e6)) * 100;
  const stats = await done;
  ws.close();
  const hist = new Hist();
  let acked = 0, errors = 0;
  for (const s of stats) {
    hist.merge(s.hist);
    acked += s.received;
    errors += s.errors;
  }
  const perS = acked / duration;
  console.log(`publish: ${publishers} publishers x window ${window}: ${acked} acked in ${duration} s (${f1(perS)}/s), errors ${errors}`);
  report(a, hist);
  console.log(`client workers' CPU, % of one core each: ` + stats.map((s) => f1((s.cpu / (duration + Number(a.warmup))) * 100)).join(" "));
  const cpuField = a.pid.length ? ` cpu_pct=${Math.round(cpu)}` : "";
  console.log(
    `RESULT ${a.scenario} socketio acked_per_s=${f1(perS)} p50_ms=${f1(hist.pct(50))} p99_ms=${f1(hist.pct(99))}` +
      `${cpuField}`,
  );
}

async function idle(a) {
  const n = Number(a.connections ?? 5000);
  if (!a.pid.length) throw new Error("idle needs --pid (the server processes) to measure their memory");
  const nw = Math.max(1, Math.min(Number(a.workers), n));
  const ws = new Workers(nw);
  await sleep(500); // the workers start, connect nothing yet
  const before = rssAll(a.pid);
  const shares = split(n, nw);
  const ready = await ws.ask(
    (i) => ({ cmd: "idle", url: a.url, n: shares[i], channel: a.channel, parallel: Number(a.parallel) }),
    "ready",
  );
  const opened = ready.reduce((s, r) => s + r.n, 0);
  console.log(`${opened} sockets open and subscribed in ${Math.max(...ready.map((r) => r.secs)).toFixed(1)} s`);
  await sleep(Number(a.settle ?? 2) * 1000);
  const after = rssAll(a.pid);
  ws.close();
  const per = (after - before) / opened;
  console.log(`server RSS ${(before / 1024).toFixed(1)} MiB -> ${(after / 1024).toFixed(1)} MiB: +${f1(per)} KiB per socket`);
  console.log(`RESULT ${a.scenario} socketio kib_per_conn=${f1(per)} connections=${opened}`);
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  a.url ??= "http://127.0.0.1:5101";
  a.channel ??= "bench";
  a.scenario ??= a.mode;
  a.workers ??= String(Math.max(2, os.availableParallelism ? os.availableParallelism() : os.cpus().length));
  a.parallel ??= "50";
  a.warmup ??= "2";
  a.client ??= "mini";
  if (!["raw", "mini", "sio"].includes(a.client)) throw new Error("--client is raw, mini or sio");
  const modes = { fanout, publish, idle };
  if (!modes[a.mode]) {
    console.error("usage: node load.js fanout|publish|idle --url URL [options] (see the top of load.js)");
    process.exit(2);
  }
  await modes[a.mode](a);
  setTimeout(() => process.exit(0), 300);
}

if (process.env.SIO_LOAD_WORKER) worker();
else
  main().catch((err) => {
    console.error("load.js:", err.message);
    process.exit(1);
  });
