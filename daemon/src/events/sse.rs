//! Server-Sent Events: a subscriber of the hub exactly like a socket (the same interest index,
//! bounded queue, gap rule, replay and re-checks), whose queue is written as an event stream
//! instead of WebSocket frames. Events are `id: <message id>` + `data: <event frame>`; the other
//! frames go out as events of their `type` (`interest`, `gap`, `truncated`, `error`), the
//! server's pings (and keepalives during silence) as comments, and a close as `event: close` with its code and reason, after
//! which the stream ends.

use std::{collections::VecDeque, fmt::Write, time::Duration};

use futures_util::Stream;
use serde_json::Value;

use super::{Admission, protocol, subscriber::Out};

/// A chunk of the stream is cut after the frame that takes it past this size.
const CHUNK_BYTES: usize = 256 * 1024;

/// The event stream of an admitted subscriber: subscribes to `channels` (replaying after
/// `since`), then yields chunks of the stream until the hub closes it or the client leaves
/// (dropping the stream drops the admission).
pub async fn stream(
    admission: Admission,
    channels: Vec<String>,
    since: Option<i64>,
    keepalive: Duration,
) -> impl Stream<Item = Result<String, std::io::Error>> + Send + 'static {
    let (shared, sub) = (admission.shared.clone(), admission.sub.clone());
    let since = shared.clamp_since(since).await;
    let granted = shared.set_interest(&sub, &channels, since);
    sub.push_notice(protocol::interest_frame(
        &granted.channels,
        &granted.denied,
        granted.since,
        "processed interest in",
    ));
    // The replay waits for room as the stream drains, so it runs beside it.
    tokio::spawn(async move { shared.replay(&sub, granted).await });
    let sender = Sender {
        admission,
        queue: VecDeque::new(),
        unaccounted: 0,
        done: false,
        keepalive: keepalive.max(Duration::from_secs(1)),
    };
    futures_util::stream::unfold(sender, |mut sender| async move {
        let chunk = sender.next_chunk().await?;
        Some((Ok(chunk), sender))
    })
}

/// The sender of an event stream: drains the subscriber's queue into chunks of the stream.
struct Sender {
    admission: Admission,
    queue: VecDeque<Out>,
    /// Events of the last chunk, freed from the queue limit once the next one is asked for.
    unaccounted: usize,
    done: bool,
    /// A comment goes out after this much silence, so that the server's own idle timeout (and
    /// proxies') never takes a quiet stream for a dead connection.
    keepalive: Duration,
}

impl Sender {
    async fn next_chunk(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let (shared, sub) = (&self.admission.shared, &self.admission.sub);
        if self.unaccounted > 0 {
            shared.metrics().messages_delivered.fetch_add(
                self.unaccounted as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            sub.written(std::mem::take(&mut self.unaccounted), shared.metrics());
        }
        loop {
            // What the last chunk left over goes first.
            if self.queue.is_empty() {
                sub.take(&mut self.queue);
            }
            if !self.queue.is_empty() {
                break;
            }
            if sub.is_closed() {
                return None;
            }
            if tokio::time::timeout(self.keepalive, sub.wait_for_frames())
                .await
                .is_err()
            {
                sub.seen(shared.now_ms());
                return Some(": keepalive\n\n".into());
            }
        }
        // The client takes what we write: that is its sign of life (it sends nothing else).
        sub.seen(shared.now_ms());
        let mut out = String::new();
        // One chunk is a copy of its frames: at most about CHUNK_BYTES of them, so that a stream
        // whose client does not read holds no more than that beside its (shared) queue.
        while out.len() < CHUNK_BYTES {
            let Some(frame) = self.queue.pop_front() else {
                break;
            };
            match frame {
                Out::Event(id, data) => {
                    self.unaccounted += 1;
                    let _ = write!(out, "id: {id}\ndata: {data}\n\n");
                }
                Out::Reply(data) | Out::Notice(data) => {
                    let _ = write!(out, "event: {}\ndata: {data}\n\n", frame_type(&data));
                }
                Out::Ping => out.push_str(": ping\n\n"),
                Out::Close(code, reason) => {
                    let data = serde_json::json!({"code": code, "reason": reason});
                    let _ = write!(out, "event: close\ndata: {data}\n\n");
                    self.done = true;
                    break;
                }
            }
        }
        Some(out)
    }
}

/// The `type` of a server frame (replies are rare here: parsing them is cheap enough).
fn frame_type(frame: &str) -> String {
    serde_json::from_str::<Value>(frame)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "message".into())
}
