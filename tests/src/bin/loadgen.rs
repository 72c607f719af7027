//! Load generator for core4d's event channels (benchmarks, not tests).
//!
//! ```text
//! loadgen fanout  --subscribers 1000 --rate 100 --size 100 --duration 20
//! loadgen publish --publishers 100 --window 4 --duration 20
//! loadgen idle    --connections 15000 --pid $(pgrep -x core4d)
//! loadgen fanout  --sub-url http://127.0.0.1:5002 --subscribers 1 --rate 1000   # cross-instance
//! loadgen fanout  --nats ws://127.0.0.1:9222 --subscribers 1000 --rate 100      # the same load on nats-server
//! loadgen revoke  --rounds 50                                                   # revocation reaching a busy socket
//! ```
//! It logs in as the admin and creates two users once: `loadgen-writer` (write-only on `bench*`,
//! so its own messages do not come back to it) and `loadgen-reader` (read-only on `bench*`).
//! Every subscriber socket is `loadgen-reader`'s, so core4d must allow that many sockets per user:
//! start it with `CORE4_EVENTS__MAX_CONNECTIONS_PER_USER` above `--subscribers`/`--connections`
//! (the default is 1,000). Publish-to-receive latency is measured inside this process: each
//! message carries its send time.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use core4_proto::{ClientFrame, InterestRequestFrame, MessageRequestFrame, paths};
use futures_util::{SinkExt, StreamExt, stream};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Parser)]
#[command(about = "Load generator for core4d's event channels")]
struct Cli {
    /// core4d's address.
    #[arg(long, default_value = "http://127.0.0.1:5001", global = true)]
    url: String,
    #[arg(long, default_value = "admin", global = true)]
    admin: String,
    #[arg(long, env = "CORE4_ADMIN_PASSWORD", global = true, default_value = "")]
    admin_password: String,
    /// The server's process ids (repeat for several), to report their CPU time and memory.
    #[arg(long, global = true)]
    pid: Vec<u32>,
    /// Also print the figures as one `RESULT <scenario> <system> metric=value ...` line.
    #[arg(long, global = true)]
    scenario: Option<String>,
    /// The system named in `RESULT` lines (default: core4d, or nats with `--nats`).
    #[arg(long, global = true)]
    system: Option<String>,
    /// Write the latency distribution here, one `<percentile> <ms>` line per percentile.
    #[arg(long, global = true)]
    latency_out: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Many subscribers on one channel, publishers at a fixed rate: deliveries/s and latency.
    Fanout(FanoutArgs),
    /// Concurrent publishers as fast as acks come back: acknowledged messages/s.
    Publish(PublishArgs),
    /// Many idle authenticated sockets: memory per socket.
    Idle(IdleArgs),
    /// Deactivation and logout against a socket that publishes all the time: how long until it
    /// is closed, and how many messages were still accepted after the change was acknowledged.
    Revoke(RevokeArgs),
}

#[derive(Args)]
struct RevokeArgs {
    /// Rounds; odd rounds deactivate the user, even rounds log its session out.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    #[arg(long, default_value = "bench")]
    channel: String,
}

#[derive(Args)]
struct FanoutArgs {
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages per second, over all publishers.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Bytes of each message's text.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds measured (after a 2 s warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Subscribers connect here instead of `--url` (a second core4d on the same database).
    #[arg(long)]
    sub_url: Option<String>,
    /// Run the same load against nats-server instead: its WebSocket listener
    /// (ws://127.0.0.1:9222) or plain TCP (nats://127.0.0.1:4222).
    #[arg(long)]
    nats: Option<String>,
    /// Also open this many Server-Sent Events subscribers (`/event/stream`), measured apart
    /// from the WebSocket ones in the same run.
    #[arg(long, default_value_t = 0)]
    sse: usize,
}

#[derive(Args)]
struct PublishArgs {
    #[arg(long, default_value_t = 100)]
    publishers: usize,
    /// Unacknowledged messages each publisher keeps in flight.
    #[arg(long, default_value_t = 1)]
    window: usize,
    #[arg(long, default_value_t = 100)]
    size: usize,
    #[arg(long, default_value_t = 20)]
    duration: u64,
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Send every message with a unique idempotency key (measures the key check).
    #[arg(long)]
    keys: bool,
}

#[derive(Args)]
struct IdleArgs {
    #[arg(long, default_value_t = 15000)]
    connections: usize,
    /// Sockets opened at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Seconds to hold the sockets after the measurement.
    #[arg(long, default_value_t = 0)]
    hold: u64,
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn micros_now() -> u64 {
    start().elapsed().as_micros() as u64
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    start();
    let cli = Cli::parse();
    println!("{}", machine());
    match &cli.cmd {
        Cmd::Fanout(args) => fanout(&cli, args).await,
        Cmd::Publish(args) => publish(&cli, args).await,
        Cmd::Idle(args) => idle(&cli, args).await,
        Cmd::Revoke(args) => revoke(&cli, args).await,
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    format!("machine: {cpus} CPUs ({model})")
}

// ---- setup ----

struct Tokens {
    writer: String,
    reader: String,
}

async fn login(http: &reqwest::Client, url: &str, user: &str, password: &str) -> Result<String> {
    let resp = http
        .get(format!("{url}/core4/api/v1/login"))
        .query(&[("username", user), ("password", password)])
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("login of {user} failed: {}", resp.status());
    }
    let body: Value = resp.json().await?;
    Ok(body["data"]["token"]
        .as_str()
        .context("no token")?
        .to_string())
}

async fn prepare(cli: &Cli) -> Result<Tokens> {
    let http = reqwest::Client::new();
    let admin = login(&http, &cli.url, &cli.admin, &cli.admin_password)
        .await
        .context("set --admin-password or CORE4_ADMIN_PASSWORD")?;
    let password = "loadgen-password";
    for (name, perm) in [
        ("loadgen-writer", "event://bench*/w"),
        ("loadgen-reader", "event://bench*/r"),
    ] {
        let resp = http
            .post(format!("{}/core4/api/v1/roles", cli.url))
            .bearer_auth(&admin)
            .json(&json!({
                "name": name,
                "email": format!("{name}@example.com"),
                "password": password,
                "perm": ["api://core4.api.v1.request.standard.*", perm],
            }))
            .send()
            .await?;
        if !(resp.status().is_success() || resp.status() == 409) {
            bail!("creating {name}: {}", resp.text().await?);
        }
    }
    Ok(Tokens {
        writer: login(&http, &cli.url, "loadgen-writer", password).await?,
        reader: login(&http, &cli.url, "loadgen-reader", password).await?,
    })
}

fn ws_url(http_url: &str, token: &str) -> String {
    let base = http_url
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    format!("{base}{}?token={token}", paths::EVENT)
}

/// Client sockets with small buffers (tungstenite's default 128 KiB read buffer is zero-filled
/// on every read).
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

async fn connect(url: &str) -> Result<Ws> {
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true).await?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        }
    }
}

/// Opens a socket and subscribes it; returns once the interest reply arrived.
async fn subscriber(url: &str, channel: &str) -> Result<Ws> {
    let mut ws = connect(url).await?;
    ws.send(Message::text(
        ClientFrame::Interest(InterestRequestFrame {
            data: Some(vec![channel.to_owned()]),
            ..Default::default()
        })
        .to_text(),
    ))
    .await?;
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await?)?;
    if reply["data"] != json!([channel]) {
        bail!("interest refused: {reply}");
    }
    Ok(ws)
}

// ---- measurement ----

#[derive(Default)]
struct Stats {
    /// One sample vector per receiving task, collected after the window.
    samples: std::sync::Mutex<Vec<Arc<std::sync::Mutex<Vec<u32>>>>>,
    received: AtomicU64,
    gaps: AtomicU64,
    errors: AtomicU64,
}

impl Stats {
    fn sink(&self) -> Arc<std::sync::Mutex<Vec<u32>>> {
        let sink = Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Ok(mut all) = self.samples.lock() {
            all.push(sink.clone());
        }
        sink
    }

    fn record(sink: &std::sync::Mutex<Vec<u32>>, micros: u64) {
        if let Ok(mut v) = sink.lock() {
            v.push(micros.min(u32::MAX as u64) as u32);
        }
    }

    fn latencies(&self) -> Vec<u32> {
        let all = self.samples.lock().map(|a| a.clone()).unwrap_or_default();
        all.iter()
            .flat_map(|s| s.lock().map(|v| v.clone()).unwrap_or_default())
            .collect()
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn latency_line(label: &str, mut v: Vec<u32>) -> String {
    v.sort_unstable();
    format!(
        "{label}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms p99.9={:.2} ms max={:.2} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
        percentile(&v, 0.999),
        percentile(&v, 1.0)
    )
}

/// CPU seconds (user + system) and RSS (KiB) of a process.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, rss))
}

/// CPU seconds and RSS (KiB) summed over every given process.
fn usage(pids: &[u32]) -> Option<(f64, u64)> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|p| proc_usage(*p))
        .try_fold((0.0, 0), |(c, r), u| u.map(|(c1, r1)| (c + c1, r + r1)))
}

/// Server CPU over a window, in percent of one core.
fn cpu_pct(before: Option<(f64, u64)>, after: Option<(f64, u64)>, secs: f64) -> Option<f64> {
    Some((after?.0 - before?.0) / secs * 100.0)
}

/// The percentiles written by `--latency-out` (shared with the Socket.IO client).
const CURVE: [f64; 18] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.9,
    99.99, 100.0,
];

/// Prints the `RESULT` line (with `--scenario`) and writes the latency curve (with
/// `--latency-out`); `latencies` must be sorted.
fn report(cli: &Cli, default_system: &str, latencies: &[u32], metrics: &[(&str, String)]) {
    let system = cli.system.as_deref().unwrap_or(default_system);
    if let Some(scenario) = &cli.scenario {
        let mut line = format!("RESULT {scenario} {system}");
        for (k, v) in metrics {
            line.push_str(&format!(" {k}={v}"));
        }
        println!("{line}");
    }
    if let Some(path) = &cli.latency_out {
        let mut out = format!(
            "# {} {system}\n",
            cli.scenario.as_deref().unwrap_or("latency")
        );
        for p in CURVE {
            out.push_str(&format!("{p} {:.3}\n", percentile(latencies, p / 100.0)));
        }
        if let Err(e) = std::fs::write(path, out) {
            eprintln!("writing {}: {e}", path.display());
        }
    }
}

/// The `RESULT` figures of a fan-out window; `latencies` sorted.
fn fanout_metrics(
    received: u64,
    expected: u64,
    secs: f64,
    latencies: &[u32],
    cpu: Option<f64>,
) -> Vec<(&'static str, String)> {
    vec![
        ("deliveries_per_s", format!("{:.0}", received as f64 / secs)),
        ("p50_ms", f1(percentile(latencies, 0.5))),
        ("p99_ms", f1(percentile(latencies, 0.99))),
        ("p999_ms", f1(percentile(latencies, 0.999))),
        ("cpu_pct", cpu_text(cpu)),
        ("expected", expected.to_string()),
        ("received", received.to_string()),
    ]
}

/// A CPU percentage for a `RESULT` line (`na` without `--pid`).
fn cpu_text(cpu: Option<f64>) -> String {
    cpu.map_or("na".into(), |c| format!("{c:.0}"))
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

/// The measured window of a fan-out, fixed before it starts: a message counts when its send time
/// (carried in its text) falls inside, whenever it arrives, so late deliveries are not lost from
/// the count.
static WINDOW: [AtomicU64; 2] = [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)];

fn in_window(sent: u64) -> bool {
    sent >= WINDOW[0].load(Relaxed) && sent < WINDOW[1].load(Relaxed)
}

/// Sets the window `warmup` from now for `secs`, sleeps through it and returns the server usage
/// at its start and end.
async fn run_window(
    pids: &[u32],
    warmup: Duration,
    secs: u64,
) -> (Option<(f64, u64)>, Option<(f64, u64)>) {
    let w0 = micros_now() + warmup.as_micros() as u64;
    WINDOW[1].store(w0 + secs * 1_000_000, Relaxed);
    WINDOW[0].store(w0, Relaxed);
    tokio::time::sleep(warmup).await;
    let before = usage(pids);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (before, usage(pids))
}

/// Waits until no delivery arrived for half a second (at most 5 s): the stragglers of the window.
async fn drain(received: &AtomicU64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = received.load(Relaxed);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = received.load(Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

async fn scrape(url: &str) -> String {
    match reqwest::get(format!("{url}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn writer_summary(before: &str, after: &str) -> String {
    let d = |n: &str| metric(after, n) - metric(before, n);
    let batches = d("core4d_event_batches_total");
    let msgs = d("core4d_event_batch_messages_total");
    let micros = d("core4d_event_commit_microseconds_total");
    if batches == 0.0 {
        return "writer: no batches".into();
    }
    format!(
        "writer: {batches} batches, mean {:.1} messages/batch, mean commit {:.2} ms, max commit {:.2} ms",
        msgs / batches,
        micros / batches / 1000.0,
        metric(after, "core4d_event_commit_microseconds_max") / 1000.0
    )
}

/// The send time (micros since start) at the front of a message's text.
fn sent_at(frame: &[u8], marker: &[u8]) -> Option<u64> {
    let pos = frame.windows(marker.len()).position(|w| w == marker)? + marker.len();
    leading_time(&frame[pos..])
}

/// The send time a payload starts with (12 digits, see `payload_at`).
fn leading_time(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.get(..12)?).ok()?.parse().ok()
}

fn payload(size: usize) -> String {
    payload_at(micros_now(), size)
}

fn payload_at(t: u64, size: usize) -> String {
    let mut s = format!("{t:012}|");
    while s.len() < size {
        s.push('x');
    }
    s
}

// ---- fanout ----

async fn fanout(cli: &Cli, args: &FanoutArgs) -> Result<()> {
    if let Some(nats) = &args.nats {
        return nats_fanout(cli, nats, args).await;
    }
    let tokens = prepare(cli).await?;
    let sub_base = args.sub_url.clone().unwrap_or_else(|| cli.url.clone());
    let sub_url = ws_url(&sub_base, &tokens.reader);
    let stats = Arc::new(Stats::default());
    let opened = Instant::now();
    let subs: Vec<Ws> = stream::iter(0..args.subscribers)
        .map(|_| subscriber(&sub_url, &args.channel))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()
        .context("opening the subscribers, all loadgen-reader's (a 429 means core4d needs a higher CORE4_EVENTS__MAX_CONNECTIONS_PER_USER)")?;
    println!(
        "{} subscribers on {} ({}) in {:.1} s",
        subs.len(),
        args.channel,
        sub_base,
        opened.elapsed().as_secs_f64()
    );
    for mut ws in subs {
        let stats = stats.clone();
        let sink = stats.sink();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(t) = msg else { continue };
                let bytes = t.as_bytes();
                if let Some(sent) = sent_at(bytes, b"\"data\":\"") {
                    if in_window(sent) {
                        Stats::record(&sink, micros_now().saturating_sub(sent));
                        stats.received.fetch_add(1, Relaxed);
                    }
                } else if bytes.starts_with(b"{\"type\":\"gap\"") {
                    stats.gaps.fetch_add(1, Relaxed);
                }
            }
        });
    }

    let sse_stats = Arc::new(Stats::default());
    if args.sse > 0 {
        let opened = Instant::now();
        let http = reqwest::Client::new();
        let url = format!("{sub_base}{}?channel={}", paths::EVENT_STREAM, args.channel);
        let streams: Vec<reqwest::Response> = stream::iter(0..args.sse)
            .map(|_| sse_subscriber(&http, &url, &tokens.reader))
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()
            .context("opening the SSE subscribers")?;
        println!(
            "{} SSE subscribers in {:.1} s",
            streams.len(),
            opened.elapsed().as_secs_f64()
        );
        for resp in streams {
            tokio::spawn(read_sse(resp, sse_stats.clone()));
        }
    }

    let pub_url = ws_url(&cli.url, &tokens.writer);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let per_pub = args.rate as f64 / args.publishers as f64;
    for _ in 0..args.publishers {
        let ws = connect(&pub_url).await?;
        let (mut tx, mut rx) = ws.split();
        let (stop, sent, stats) = (stop.clone(), sent.clone(), stats.clone());
        let (channel, size) = (args.channel.clone(), args.size);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                if let Message::Text(t) = msg
                    && t.starts_with("{\"type\":\"error\"")
                {
                    stats.errors.fetch_add(1, Relaxed);
                }
            }
        });
        tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / per_pub);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Relaxed) {
                tick.tick().await;
                let t = micros_now();
                let frame = message(&channel, payload_at(t, size), None);
                if tx.send(Message::text(frame.to_text())).await.is_err() {
                    break;
                }
                if in_window(t) {
                    sent.fetch_add(1, Relaxed);
                }
            }
        });
    }
    let metrics_before = scrape(&cli.url).await;
    let (usage_before, usage_after) =
        run_window(&cli.pid, Duration::from_secs(2), args.duration).await;
    let secs = args.duration as f64;
    let metrics_after = scrape(&cli.url).await;
    drain(&stats.received).await;
    drain(&sse_stats.received).await;
    stop.store(true, Relaxed);
    let received = stats.received.load(Relaxed);
    let sent_n = sent.load(Relaxed);
    let mut latencies = stats.latencies();
    latencies.sort_unstable();
    println!(
        "fanout: {} msg/s sent x {} subscribers: {:.0} deliveries/s ({:.0} expected), gaps {}, send errors {}",
        (sent_n as f64 / secs).round(),
        args.subscribers,
        received as f64 / secs,
        sent_n as f64 * args.subscribers as f64 / secs,
        stats.gaps.load(Relaxed),
        stats.errors.load(Relaxed),
    );
    println!("{}", latency_line("publish-to-receive", latencies.clone()));
    let cpu = cpu_pct(usage_before, usage_after, secs);
    report(
        cli,
        "core4d",
        &latencies,
        &[
            fanout_metrics(
                received,
                sent_n * args.subscribers as u64,
                secs,
                &latencies,
                cpu,
            ),
            vec![("gaps", stats.gaps.load(Relaxed).to_string())],
        ]
        .concat(),
    );
    if args.sse > 0 {
        println!(
            "sse: {} subscribers: {:.0} deliveries/s ({:.0} expected), gaps {}",
            args.sse,
            sse_stats.received.load(Relaxed) as f64 / secs,
            sent_n as f64 * args.sse as f64 / secs,
            sse_stats.gaps.load(Relaxed),
        );
        println!(
            "{}",
            latency_line("sse publish-to-receive", sse_stats.latencies())
        );
    }
    println!("{}", writer_summary(&metrics_before, &metrics_after));
    if let (Some(c), Some((_, rss))) = (cpu, usage_after) {
        println!("core4d: {c:.0}% CPU, RSS {} MiB", rss / 1024);
    }
    Ok(())
}

/// A message frame, built with the shared wire types.
fn message(channel: &str, text: String, key: Option<String>) -> ClientFrame {
    ClientFrame::Message(MessageRequestFrame {
        channel: channel.to_owned(),
        text: Value::String(text),
        key,
        id: None,
    })
}

/// Opens an event stream; returns once its headers arrived.
async fn sse_subscriber(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<reqwest::Response> {
    let resp = http.get(url).bearer_auth(token).send().await?;
    if !resp.status().is_success() {
        bail!("event stream refused: {}", resp.status());
    }
    Ok(resp)
}

/// Reads an event stream, recording each event's publish-to-receive time.
async fn read_sse(mut resp: reqwest::Response, stats: Arc<Stats>) {
    let sink = stats.sink();
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        let Some(end) = buf.windows(2).rposition(|w| w == b"\n\n") else {
            continue;
        };
        for line in buf[..end].split(|b| *b == b'\n') {
            if let Some(data) = line.strip_prefix(b"data: ") {
                if let Some(sent) = sent_at(data, b"\"data\":\"") {
                    if in_window(sent) {
                        Stats::record(&sink, micros_now().saturating_sub(sent));
                        stats.received.fetch_add(1, Relaxed);
                    }
                } else if data.starts_with(b"{\"type\":\"gap\"") {
                    stats.gaps.fetch_add(1, Relaxed);
                }
            }
        }
        buf.drain(..end + 2);
    }
}

// ---- publish ----

async fn publish(cli: &Cli, args: &PublishArgs) -> Result<()> {
    let tokens = prepare(cli).await?;
    let url = ws_url(&cli.url, &tokens.writer);
    let stats = Arc::new(Stats::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sockets: Vec<Ws> = stream::iter(0..args.publishers)
        .map(|_| connect(&url))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    // Keys are unique per run, publisher and message: every keyed message takes the full check.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    for (publisher, ws) in sockets.into_iter().enumerate() {
        let (stats, measuring, stop) = (stats.clone(), measuring.clone(), stop.clone());
        let (channel, size, window) = (args.channel.clone(), args.size, args.window.max(1));
        let keys = args.keys;
        let sink = stats.sink();
        tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let mut in_flight = std::collections::VecDeque::with_capacity(window);
            let mut seq = 0u64;
            loop {
                while in_flight.len() < window && !stop.load(Relaxed) {
                    seq += 1;
                    let key = keys.then(|| format!("{run}-{publisher}-{seq}"));
                    let frame = message(&channel, payload(size), key);
                    if tx.send(Message::text(frame.to_text())).await.is_err() {
                        return;
                    }
                    in_flight.push_back(micros_now());
                }
                if in_flight.is_empty() {
                    break;
                }
                // The server's pings (every 30 s) are answered by the library: skip them.
                let t = match rx.next().await {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let Some(sent) = in_flight.pop_front() else {
                    continue;
                };
                if t.contains("\"message_id\"") {
                    if measuring.load(Relaxed) {
                        stats.received.fetch_add(1, Relaxed);
                        Stats::record(&sink, micros_now().saturating_sub(sent));
                    }
                } else {
                    stats.errors.fetch_add(1, Relaxed);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics_before = scrape(&cli.url).await;
    let usage_before = usage(&cli.pid);
    measuring.store(true, Relaxed);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Relaxed);
    let secs = window.elapsed().as_secs_f64();
    let acked = stats.received.load(Relaxed);
    let usage_after = usage(&cli.pid);
    let metrics_after = scrape(&cli.url).await;
    stop.store(true, Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latencies = stats.latencies();
    latencies.sort_unstable();
    let cpu = cpu_pct(usage_before, usage_after, secs);
    report(
        cli,
        "core4d",
        &latencies,
        &[
            ("acked_per_s", format!("{:.0}", acked as f64 / secs)),
            ("p50_ms", f1(percentile(&latencies, 0.5))),
            ("p99_ms", f1(percentile(&latencies, 0.99))),
            ("cpu_pct", cpu_text(cpu)),
            ("errors", stats.errors.load(Relaxed).to_string()),
        ],
    );
    println!(
        "publish: {} publishers, window {}, keys {}: {:.0} acknowledged messages/s, errors {}",
        args.publishers,
        args.window,
        if args.keys { "on" } else { "off" },
        acked as f64 / secs,
        stats.errors.load(Relaxed)
    );
    println!("{}", latency_line("send-to-ack", latencies));
    println!("{}", writer_summary(&metrics_before, &metrics_after));
    if let (Some(c), Some((_, rss))) = (cpu, usage_after) {
        println!("core4d: {c:.0}% CPU, RSS {} MiB", rss / 1024);
    }
    Ok(())
}

// ---- idle ----

async fn idle(cli: &Cli, args: &IdleArgs) -> Result<()> {
    let tokens = prepare(cli).await?;
    let url = ws_url(&cli.url, &tokens.reader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = usage(&cli.pid);
    let opened = Instant::now();
    let results: Vec<Result<Ws>> = stream::iter(0..args.connections)
        .map(|i| {
            let url = url.clone();
            async move {
                // Spread the sockets over a few channels, as real clients would be.
                subscriber(&url, &format!("bench-idle-{}", i % 16)).await
            }
        })
        .buffer_unordered(args.parallel)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        println!("first failure: {e:#}");
        if format!("{e:#}").contains("429") {
            println!(
                "(all sockets are loadgen-reader's: start core4d with CORE4_EVENTS__MAX_CONNECTIONS_PER_USER={})",
                args.connections
            );
        }
    }
    // Idle clients still read: that answers the server's pings (a socket that answers none for
    // two ping intervals is closed), and it is what a real client does.
    let sockets: Vec<_> = results
        .into_iter()
        .filter_map(Result::ok)
        .map(|mut ws| tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} }))
        .collect();
    println!(
        "idle: {} authenticated, subscribed sockets open ({} failed) in {:.1} s",
        sockets.len(),
        failed,
        opened.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let (Some((_, rss0)), Some((_, rss1))) = (before, usage(&cli.pid)) {
        let per = (rss1.saturating_sub(rss0)) as f64 / sockets.len().max(1) as f64;
        println!(
            "core4d RSS: {} MiB before, {} MiB with the sockets: {per:.2} KiB per socket",
            rss0 / 1024,
            rss1 / 1024,
        );
        report(
            cli,
            "core4d",
            &[],
            &[
                ("kib_per_conn", f1(per)),
                ("connections", sockets.len().to_string()),
                ("failed", failed.to_string()),
            ],
        );
    }
    let metrics = scrape(&cli.url).await;
    println!(
        "core4d_event_connections {}",
        metric(&metrics, "core4d_event_connections")
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    for task in sockets {
        task.abort();
    }
    Ok(())
}

// ---- the same fan-out on nats-server (core NATS over its WebSocket listener) ----

async fn nats_connect(url: &str) -> Result<Ws> {
    let mut ws = connect(url).await?;
    // INFO first; then CONNECT without verbose acks, and a PING to know we are through.
    let _info = next_nats(&mut ws).await?;
    ws.send(Message::binary(
        b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n".to_vec(),
    ))
    .await?;
    loop {
        if next_nats(&mut ws).await?.contains("PONG") {
            return Ok(ws);
        }
    }
}

async fn next_nats(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(String::from_utf8_lossy(&b).into_owned()),
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        }
    }
}

/// Parses the NATS protocol stream in `buf` (WebSocket frames need not end at a protocol line:
/// the server may split a `MSG` across frames), calls `each` with the publish time of every
/// complete `MSG`, answers nothing, and returns whether a `PING` came; consumed bytes are removed.
fn nats_stream(buf: &mut Vec<u8>, mut each: impl FnMut(u64)) -> bool {
    let mut ping = false;
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let line = &rest[..nl];
        if line.starts_with(b"MSG ") {
            let len = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split_whitespace().last())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            if rest.len() < nl + 2 + len + 2 {
                break;
            }
            let body = &rest[nl + 2..nl + 2 + len];
            if let Some(sent) = leading_time(body) {
                each(sent);
            }
            at += nl + 2 + len + 2;
        } else {
            ping |= line.starts_with(b"PING");
            at += nl + 2;
        }
    }
    buf.drain(..at);
    ping
}

/// A core NATS connection over plain TCP: CONNECT, then PING until PONG.
async fn nats_tcp_connect(
    addr: &str,
) -> Result<(
    tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
)> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = tokio::io::BufReader::with_capacity(16 * 1024, r);
    let mut line = String::new();
    r.read_line(&mut line).await?; // INFO
    w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .await?;
    until_pong(&mut r).await?;
    Ok((r, w))
}

/// Reads lines until the server's PONG (the answer to our PING: everything before it is done).
async fn until_pong(r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("nats closed the connection");
        }
        if line.starts_with("PONG") {
            return Ok(());
        }
    }
}

/// Reads a TCP subscription: each `MSG` line is followed by its payload and CRLF.
async fn nats_tcp_read(
    mut r: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    stats: Arc<Stats>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let sink = stats.sink();
    let mut line = Vec::new();
    let mut body = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.starts_with(b"PING") {
            if w.write_all(b"PONG\r\n").await.is_err() {
                return;
            }
            continue;
        }
        if !line.starts_with(b"MSG ") {
            continue;
        }
        let len = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        body.resize(len + 2, 0);
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        if let Some(sent) = leading_time(&body)
            && in_window(sent)
        {
            Stats::record(&sink, micros_now().saturating_sub(sent));
            stats.received.fetch_add(1, Relaxed);
        }
    }
}

/// The same fan-out against nats-server (core NATS, no persistence), over its WebSocket listener
/// (`ws://`) or plain TCP (`nats://host:port`).
async fn nats_fanout(cli: &Cli, url: &str, args: &FanoutArgs) -> Result<()> {
    let tcp = url.strip_prefix("nats://");
    let stats = Arc::new(Stats::default());
    let subject = args.channel.clone();
    let opened: Vec<()> = stream::iter(0..args.subscribers)
        .map(|_| {
            let (subject, stats) = (subject.clone(), stats.clone());
            async move {
                if let Some(addr) = tcp {
                    use tokio::io::AsyncWriteExt;
                    let (mut r, mut w) = nats_tcp_connect(addr).await?;
                    w.write_all(format!("SUB {subject} 1\r\nPING\r\n").as_bytes())
                        .await?;
                    until_pong(&mut r).await?;
                    tokio::spawn(nats_tcp_read(r, w, stats));
                    return Ok::<_, anyhow::Error>(());
                }
                let mut ws = nats_connect(url).await?;
                ws.send(Message::binary(
                    format!("SUB {subject} 1\r\nPING\r\n").into_bytes(),
                ))
                .await?;
                while !next_nats(&mut ws).await?.contains("PONG") {}
                let sink = stats.sink();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(Ok(msg)) = ws.next().await {
                        match &msg {
                            Message::Binary(b) => buf.extend_from_slice(b),
                            Message::Text(t) => buf.extend_from_slice(t.as_bytes()),
                            _ => continue,
                        }
                        let ping = nats_stream(&mut buf, |sent| {
                            if in_window(sent) {
                                Stats::record(&sink, micros_now().saturating_sub(sent));
                                stats.received.fetch_add(1, Relaxed);
                            }
                        });
                        if ping {
                            let _ = ws.send(Message::binary(b"PONG\r\n".to_vec())).await;
                        }
                    }
                });
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    println!("{} nats subscribers on {subject} ({url})", opened.len());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let per_pub = args.rate as f64 / args.publishers as f64;
    for _ in 0..args.publishers {
        let (stop, sent, subject, size) = (stop.clone(), sent.clone(), subject.clone(), args.size);
        let mut ws = None;
        let mut tcp_w = None;
        if let Some(addr) = tcp {
            let (mut r, w) = nats_tcp_connect(addr).await?;
            // Nothing comes back without verbose acks but the server's PINGs: read and drop.
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
            tcp_w = Some(w);
        } else {
            ws = Some(nats_connect(url).await?);
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_pub));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Relaxed) {
                tick.tick().await;
                let t = micros_now();
                let body = payload_at(t, size);
                let frame = format!("PUB {subject} {}\r\n{body}\r\n", body.len()).into_bytes();
                let ok = if let Some(w) = tcp_w.as_mut() {
                    tokio::io::AsyncWriteExt::write_all(w, &frame).await.is_ok()
                } else if let Some(ws) = ws.as_mut() {
                    ws.send(Message::binary(frame)).await.is_ok()
                } else {
                    false
                };
                if !ok {
                    break;
                }
                if in_window(t) {
                    sent.fetch_add(1, Relaxed);
                }
            }
        });
    }
    let (usage_before, usage_after) =
        run_window(&cli.pid, Duration::from_secs(2), args.duration).await;
    let secs = args.duration as f64;
    drain(&stats.received).await;
    stop.store(true, Relaxed);
    let received = stats.received.load(Relaxed);
    let sent_n = sent.load(Relaxed);
    let mut latencies = stats.latencies();
    latencies.sort_unstable();
    println!(
        "nats fanout: {} msg/s sent x {} subscribers: {:.0} deliveries/s ({:.0} expected)",
        (sent_n as f64 / secs).round(),
        args.subscribers,
        received as f64 / secs,
        sent_n as f64 * args.subscribers as f64 / secs,
    );
    println!("{}", latency_line("publish-to-receive", latencies.clone()));
    let cpu = cpu_pct(usage_before, usage_after, secs);
    report(
        cli,
        "nats",
        &latencies,
        &fanout_metrics(
            received,
            sent_n * args.subscribers as u64,
            secs,
            &latencies,
            cpu,
        ),
    );
    if let (Some(c), Some((_, rss))) = (cpu, usage_after) {
        println!("nats-server: {c:.0}% CPU, RSS {} MiB", rss / 1024);
    }
    Ok(())
}

// ---- revocation ----

async fn revoke(cli: &Cli, args: &RevokeArgs) -> Result<()> {
    let http = reqwest::Client::new();
    let admin = login(&http, &cli.url, &cli.admin, &cli.admin_password)
        .await
        .context("set --admin-password or CORE4_ADMIN_PASSWORD")?;
    let api = format!("{}/core4/api/v1", cli.url);
    let mut delays: [Vec<u32>; 2] = Default::default();
    let mut accepted_after: [Vec<u32>; 2] = Default::default();
    for round in 0..args.rounds {
        let deactivate = round % 2 == 1;
        let name = format!("loadgen-revoke-{}-{round}", std::process::id());
        let created: Value = http
            .post(format!("{api}/roles"))
            .bearer_auth(&admin)
            .json(&json!({
                "name": name, "email": format!("{name}@example.com"), "password": "loadgen-password",
                "perm": ["api://core4.api.v1.request.standard.*", format!("event://{}/rw", args.channel)],
            }))
            .send()
            .await?
            .json()
            .await?;
        let id = created["data"]["_id"]
            .as_str()
            .context("create user")?
            .to_string();
        let token = login(&http, &cli.url, &name, "loadgen-password").await?;
        let mut ws = connect(&ws_url(&cli.url, &token)).await?;
        // Publish with one message in flight; every ack is stamped with its arrival.
        let acks = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
        let closed_at = Arc::new(AtomicU64::new(0));
        let frame = message(&args.channel, "x".into(), None).to_text();
        let publisher = {
            let (acks, closed_at) = (acks.clone(), closed_at.clone());
            tokio::spawn(async move {
                loop {
                    if ws.send(Message::text(frame.clone())).await.is_err() {
                        break;
                    }
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains("\"send\"") => {
                            if let Ok(mut a) = acks.lock() {
                                a.push(micros_now());
                            }
                        }
                        Some(Ok(Message::Text(_))) | Some(Ok(Message::Ping(_))) => {}
                        _ => {
                            closed_at.store(micros_now(), Relaxed);
                            break;
                        }
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let changed_at = if deactivate {
            let etag = http
                .get(format!("{api}/roles/{id}"))
                .bearer_auth(&admin)
                .send()
                .await?
                .json::<Value>()
                .await?["data"]["etag"]
                .clone();
            let resp = http
                .put(format!("{api}/roles/{id}"))
                .bearer_auth(&admin)
                .json(&json!({"is_active": false, "etag": etag}))
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("deactivation failed: {}", resp.text().await?);
            }
            micros_now()
        } else {
            let resp = http
                .get(format!("{api}/logout"))
                .bearer_auth(&token)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("logout failed: {}", resp.text().await?);
            }
            micros_now()
        };
        tokio::time::timeout(Duration::from_secs(30), publisher)
            .await
            .context("the socket was not closed within 30 s")??;
        let closed = closed_at.load(Relaxed);
        let after = acks
            .lock()
            .map(|a| a.iter().filter(|t| **t > changed_at).count())
            .unwrap_or(0);
        let kind = usize::from(deactivate);
        delays[kind].push(closed.saturating_sub(changed_at) as u32);
        accepted_after[kind].push(after as u32);
    }
    for (kind, label) in [(0, "logout"), (1, "deactivation")] {
        println!(
            "{}",
            latency_line(
                &format!("{label}: acknowledged -> socket closed"),
                delays[kind].clone()
            )
        );
        let mut counts = accepted_after[kind].clone();
        counts.sort_unstable();
        println!(
            "{label}: messages acked after the change was acknowledged: median {} max {} (per round: {:?})",
            counts.get(counts.len() / 2).copied().unwrap_or(0),
            counts.last().copied().unwrap_or(0),
            accepted_after[kind]
        );
    }
    Ok(())
}
