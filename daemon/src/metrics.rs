//! Counters for `/metrics` in the Prometheus text format. Cheap atomics on the hot paths; the
//! per-route HTTP table is a small mutex-guarded map whose labels come from fixed lists only
//! (route templates, methods, statuses), so nothing a client sends becomes a label value.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
};

#[derive(Clone, Default)]
pub struct Metrics(Arc<Counters>);

/// A Prometheus histogram over fixed upper bounds (the last one is +Inf).
pub struct Histogram<const N: usize> {
    bounds: [u64; N],
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [u64; N]) -> Self {
        Self {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: u64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(N - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// Renders with bounds divided by `scale` (e.g. microseconds shown as seconds).
    fn render(&self, out: &mut String, name: &str, help: &str, scale: f64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = if i == N - 1 {
                "+Inf".to_string()
            } else {
                (self.bounds[i] as f64 / scale).to_string()
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum.load(Relaxed) as f64 / scale;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

impl Default for Histogram<11> {
    /// Batch sizes.
    fn default() -> Self {
        Self::new([1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, u64::MAX])
    }
}

impl Default for Histogram<13> {
    /// Latencies in microseconds.
    fn default() -> Self {
        Self::new([
            500,
            1_000,
            2_000,
            5_000,
            10_000,
            20_000,
            50_000,
            100_000,
            250_000,
            500_000,
            1_000_000,
            2_500_000,
            u64::MAX,
        ])
    }
}

/// The labels of one HTTP request counter: method, route template, status.
type HttpSeries = (&'static str, Arc<str>, &'static str);

#[derive(Default)]
pub struct Counters {
    pub connections_open: AtomicI64,
    pub subscriptions: AtomicI64,
    pub messages_published: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub gap_frames: AtomicU64,
    pub batches_committed: AtomicU64,
    pub batch_messages: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub commit_micros_max: AtomicU64,
    /// Event frames not queued because the socket was behind (it gets a gap frame instead).
    pub events_dropped: AtomicU64,
    /// Events sent from the table to resuming sockets.
    pub events_replayed: AtomicU64,
    /// Messages refused by the per-user rate limit.
    pub rate_limited: AtomicU64,
    /// Client frames answered with an error frame.
    pub frame_errors: AtomicU64,
    /// Times the LISTEN connection was lost and re-established.
    pub listener_reconnects: AtomicU64,
    pub batch_sizes: Histogram<11>,
    pub commit_latency: Histogram<13>,
    /// Time from a request's headers to its reply's headers (upgrades not counted).
    pub http_latency: Histogram<13>,
    /// Bytes of large replies waiting for their clients to read them (`web::held`).
    pub held_reply_bytes: AtomicI64,
    http: Mutex<BTreeMap<HttpSeries, u64>>,
    /// The route templates requests are counted under, by shape (see [`shape_of`]).
    routes: OnceLock<BTreeMap<String, Arc<str>>>,
}

impl std::ops::Deref for Metrics {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        &self.0
    }
}

/// Prometheus label values escape `\`, `"` and newlines.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The route label of requests that matched no registered route template.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Statuses core4d answers with; any other is counted as `other`.
const STATUSES: &[&str] = &[
    "101", "200", "201", "204", "301", "302", "304", "400", "401", "403", "404", "405", "406",
    "408", "409", "411", "413", "414", "415", "429", "431", "500", "503",
];

/// A route with its parameters unnamed and no trailing `/`, so that a router pattern
/// (`/roles/:param0`, as poem-openapi registers it) meets its OpenAPI template (`/roles/{id}`).
fn shape_of(route: &str) -> String {
    let path = route
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(route);
    path.split('/')
        .map(|seg| {
            if seg.starts_with(':') || (seg.starts_with('{') && seg.ends_with('}')) {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl Metrics {
    /// Sets the route templates (`/core4/api/v1/roles/{id}`) requests may be counted under;
    /// called once when the HTTP surface is built.
    pub fn register_routes(&self, templates: impl IntoIterator<Item = String>) {
        let _ = self.0.routes.set(
            templates
                .into_iter()
                .map(|t| (shape_of(&t), Arc::from(t)))
                .collect(),
        );
    }

    /// Counts a request under the route template the router matched (`pattern`, in poem's
    /// syntax), which must be a registered one; anything else counts as [`UNMATCHED_ROUTE`].
    pub fn record_http(&self, method: &str, pattern: Option<&str>, status: u16) {
        let method = match method {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "POST" => "POST",
            "PUT" => "PUT",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            "OPTIONS" => "OPTIONS",
            _ => "OTHER",
        };
        let status = status.to_string();
        let status = STATUSES
            .iter()
            .find(|s| **s == status)
            .copied()
            .unwrap_or("other");
        let routes = self.0.routes.get();
        let route = pattern
            .map(shape_of)
            .and_then(|shape| routes.and_then(|r| r.get(&shape)).cloned())
            .unwrap_or_else(|| Arc::from(UNMATCHED_ROUTE));
        if let Ok(mut map) = self.0.http.lock() {
            *map.entry((method, route, status)).or_default() += 1;
        }
    }

    pub fn record_commit(&self, messages: u64, micros: u64) {
        self.batches_committed.fetch_add(1, Relaxed);
        self.batch_messages.fetch_add(messages, Relaxed);
        self.commit_micros_total.fetch_add(micros, Relaxed);
        self.commit_micros_max.fetch_max(micros, Relaxed);
        self.batch_sizes.observe(messages);
        self.commit_latency.observe(micros);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "core4d_event_connections",
            "Open event WebSockets.",
            self.connections_open.load(Relaxed),
        );
        gauge(
            &mut out,
            "core4d_event_subscriptions",
            "Channel interests over all open sockets.",
            self.subscriptions.load(Relaxed),
        );
        counter(
            &mut out,
            "core4d_event_messages_published_total",
            "Messages committed by this instance.",
            self.messages_published.load(Relaxed),
        );
        counter(
            &mut out,
            "core4d_event_messages_delivered_total",
            "Event frames written to sockets.",
            self.messages_delivered.load(Relaxed),
        );
        counter(
            &mut out,
            "core4d_event_gap_frames_total",
            "Gap frames sent to slow subscribers.",
            self.gap_frames.load(Relaxed),
        );
        counter(
            &mut out,
            "core4d_event_batches_total",
            "Writer transactions committed.",
            self.batches_committed.load(Relaxed),
        );
        counter(
            &mut out,
            "core4d_event_batch_messages_total",
            "Messages in committed writer batches (divide by batches for the mean size).",
            self.batch_messages.load(Relaxed),
        );
        counter(
            &mut out,
            "core4d_event_commit_microseconds_total",
            "Time spent committing writer batches.",
            self.commit_micros_total.load(Relaxed),
        );
        gauge(
            &mut out,
            "core4d_event_commit_microseconds_max",
            "Slowest writer commit since start.",
            self.commit_micros_max.load(Relaxed) as i64,
        );
        for (name, help, v) in [
            (
                "core4d_event_frames_dropped_total",
                "Event frames not queued because the socket was behind (it gets a gap frame).",
                &self.events_dropped,
            ),
            (
                "core4d_event_replayed_total",
                "Stored events replayed to resuming sockets.",
                &self.events_replayed,
            ),
            (
                "core4d_event_rate_limited_total",
                "Messages refused by the per-user rate limit.",
                &self.rate_limited,
            ),
            (
                "core4d_event_frame_errors_total",
                "Client frames answered with an error frame.",
                &self.frame_errors,
            ),
            (
                "core4d_event_listener_reconnects_total",
                "Times the LISTEN connection was lost and re-established.",
                &self.listener_reconnects,
            ),
        ] {
            counter(&mut out, name, help, v.load(Relaxed));
        }
        self.batch_sizes.render(
            &mut out,
            "core4d_event_batch_size",
            "Messages per committed writer batch.",
            1.0,
        );
        self.commit_latency.render(
            &mut out,
            "core4d_event_commit_seconds",
            "Time from taking a batch to its commit.",
            1e6,
        );
        self.http_latency.render(
            &mut out,
            "core4d_http_request_duration_seconds",
            "Time from a request's headers to its reply's headers (WebSocket upgrades not counted; an event stream counts until its first byte).",
            1e6,
        );
        gauge(
            &mut out,
            "core4d_http_held_reply_bytes",
            "Bytes of large replies waiting in memory for their clients to read them (see http.max_held_reply_bytes).",
            self.held_reply_bytes.load(Relaxed),
        );
        render_process(&mut out);
        let _ = writeln!(
            out,
            "# HELP core4d_http_requests_total HTTP requests by method, route and status (failed logins: route login, status 401; refused for rate: 429; busy: 503).\n# TYPE core4d_http_requests_total counter"
        );
        if let Ok(map) = self.0.http.lock() {
            for ((method, route, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "core4d_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape_label(route)
                );
            }
        }
        out
    }
}

/// The standard `process_*` metrics of this process, from `/proc/self` (Linux; elsewhere none).
fn render_process(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // After the command name (in parentheses, which may hold spaces): state is field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    // Clock ticks (USER_HZ) are 100 on every Linux architecture; sysconf would need libc.
    let ticks = 100.0;
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time spent, in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
            (utime + stime) as f64 / ticks
        );
    }
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    if let Some(kib) = rss_kib {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
            kib * 1024
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}",
            fds.count()
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds Start time of the process since the Unix epoch, in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}",
            boot as f64 + start as f64 / ticks
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_registered_templates_and_render_as_prometheus_text() {
        let m = Metrics::default();
        m.register_routes([
            "/core4/api/v1/roles/{id}".to_string(),
            "/core4/api/v1/docs".to_string(),
        ]);
        m.record_http("GET", Some("/core4/api/v1/roles/:param0"), 200);
        m.record_http("GET", Some("/core4/api/v1/roles/:param0"), 200);
        m.record_http("GET", Some("/core4/api/v1/docs/"), 200);
        let text = m.render();
        assert!(text.contains("core4d_http_requests_total{method=\"GET\",route=\"/core4/api/v1/roles/{id}\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("route=\"/core4/api/v1/docs\""), "{text}");
        m.record_http("FOO1", Some("/core4/api/v1/roles/:id"), 401);
        m.record_http("GET", Some("/core4/api/v1/a\"b"), 401);
        m.record_http("GET", None, 404);
        m.record_http("GET", Some("/core4/api/v1/roles/:id"), 418);
        let text = m.render();
        assert!(text.contains("method=\"OTHER\""), "{text}");
        assert!(!text.contains("a\\\"b") && !text.contains("FOO1"), "{text}");
        assert!(
            text.contains(
                "core4d_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"401\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("route=\"unmatched\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("route=\"/core4/api/v1/roles/{id}\",status=\"other\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE core4d_event_connections gauge"));
        m.record_commit(3, 1500);
        let text = m.render();
        assert!(
            text.contains("core4d_event_batch_size_bucket{le=\"5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("core4d_event_commit_seconds_bucket{le=\"0.002\"} 1"),
            "{text}"
        );
        assert!(text.contains("core4d_event_commit_seconds_bucket{le=\"+Inf\"} 1"));
    }
}
