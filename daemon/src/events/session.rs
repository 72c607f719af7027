//! One socket's two tasks: the reader answers client frames (every frame gets exactly one reply,
//! malformed ones an `error` frame, and the socket stays open), the sender drains the socket's
//! queue, several frames per flush.
//!
//! Interest frames are bounded like messages: at most 4 × `max_channels` names each, and every
//! one after the socket's first takes a token from the user's message bucket (the first is free,
//! so a fleet of clients reconnecting under one account is not throttled by its own subscribe).

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use poem::Upgraded;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message, Utf8Bytes,
        error::CapacityError,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use super::{
    protocol::{self, ErrorKind, Request},
    shared::Shared,
    subscriber::{Out, Subscriber},
    writer::{Pending, ReplyTo},
};
use crate::{domain::Channel, envelope::format_ts, metrics::Metrics, storage::events::AccountKey};

type Sink = SplitSink<WebSocketStream<Upgraded>, Message>;
type Stream = SplitStream<WebSocketStream<Upgraded>>;

pub async fn run(
    shared: Arc<Shared>,
    sub: Arc<Subscriber>,
    ws: WebSocketStream<Upgraded>,
    since: Option<i64>,
) {
    let (sink, mut stream) = ws.split();
    let mut sender = tokio::spawn(send_loop(sub.clone(), sink, shared.metrics().clone()));
    let mut reader = Reader {
        shared: &shared,
        sub: &sub,
        since,
        subscribed: false,
        oversized: false,
        id: None,
    };
    let end = reader.read_loop(&mut stream).await;
    if end == End::Server {
        // The sender sends what is queued and the close frame; then wait briefly for the
        // client's close reply so the close handshake completes.
        let sink = match tokio::time::timeout(Duration::from_secs(5), &mut sender).await {
            Ok(Ok(sink)) => sink,
            _ => {
                sender.abort();
                None
            }
        };
        if reader.oversized {
            // The reader stopped at the header of the oversized frame; its payload is still on
            // the way. Closing the connection on unread bytes would reset it, and the client
            // could lose the close frame, so read and drop them for a moment first.
            if let Some(Ok(mut ws)) = sink.map(|sink| stream.reunite(sink)) {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::io::copy(ws.get_mut(), &mut tokio::io::sink()),
                )
                .await;
            }
        } else {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
    } else {
        sub.mark_closed();
        if end == End::PeerClose {
            // tungstenite queued the reply to the client's close frame (RFC 6455 §5.5.1); the
            // next read sends it and then reports the connection closed.
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut sender)
            .await
            .is_err()
        {
            sender.abort();
        }
    }
}

/// How the read loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed the socket (a close frame is queued).
    Server,
    /// The client sent a close frame, to be answered.
    PeerClose,
    /// The connection ended without a close frame.
    Gone,
}

struct Reader<'a> {
    shared: &'a Arc<Shared>,
    sub: &'a Arc<Subscriber>,
    /// `?since=` of the connect: applies to the first interest frame without its own.
    since: Option<i64>,
    /// An interest frame was handled already (the next ones are rate-limited).
    subscribed: bool,
    /// The socket was closed for a frame over the WebSocket layer's hard cap.
    oversized: bool,
    /// The correlation id of the frame being answered.
    id: Option<String>,
}

impl Reader<'_> {
    async fn read_loop(&mut self, stream: &mut Stream) -> End {
        loop {
            let msg = tokio::select! {
                biased;
                _ = self.sub.closed() => return End::Server,
                msg = stream.next() => msg,
            };
            if let Some(Ok(_)) = &msg {
                // Anything, a pong included, shows the client is there.
                self.sub.seen(self.shared.now_ms());
            }
            let text = match msg {
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    // Over the hard cap (16 × max_frame_bytes): tungstenite refuses to read the
                    // frame and sends nothing itself, so the close with 1009 is ours to send.
                    let reason = match e {
                        CapacityError::MessageTooLong { size, max_size } => {
                            format!("frame too large: {size} bytes (at most {max_size})")
                        }
                        other => format!("frame too large: {other}"),
                    };
                    self.oversized = true;
                    self.sub.close(super::close::TOO_BIG, reason);
                    return End::Server;
                }
                Some(Err(tungstenite::Error::Protocol(e))) => {
                    self.sub
                        .close(super::close::PROTOCOL, format!("protocol error: {e}"));
                    return End::Server;
                }
                Some(Err(tungstenite::Error::Utf8(_))) => {
                    self.sub
                        .close(super::close::INVALID_DATA, "text frame is not valid UTF-8");
                    return End::Server;
                }
                Some(Ok(Message::Close(_))) => return End::PeerClose,
                None | Some(Err(_)) => return End::Gone,
                Some(Ok(Message::Text(text))) => Some(text),
                Some(Ok(Message::Binary(_))) => None,
                Some(Ok(Message::Ping(_))) => {
                    // Each ping is answered with a pong; a flood of them (from a client that
                    // may not even read the pongs) counts against the user's frame rate.
                    let s = self.shared.settings();
                    if !self.sub.user.try_send(s.messages_per_second, s.burst) {
                        self.sub.close(
                            super::close::POLICY,
                            format!(
                                "too many pings: they count against the limit of {} frames per second per user",
                                s.messages_per_second
                            ),
                        );
                        return End::Server;
                    }
                    continue;
                }
                Some(Ok(_)) => continue,
            };
            // One reply permit per client frame: a client that does not read its replies stops
            // being read.
            tokio::select! {
                biased;
                _ = self.sub.closed() => return End::Server,
                permit = self.sub.replies.acquire() => match permit {
                    Ok(p) => p.forget(),
                    Err(_) => return End::Server,
                },
            }
            self.id = None;
            match text {
                Some(text) => self.handle(text).await,
                None => self.error(
                    ErrorKind::Malformed,
                    "binary frames are not supported: send JSON text frames",
                ),
            }
        }
    }

    /// The reply to the current frame, with its correlation id.
    fn reply(&self, frame: Utf8Bytes) {
        self.sub
            .push_reply(protocol::with_id(frame, self.id.as_deref()));
    }

    fn error(&self, kind: ErrorKind, message: &str) {
        self.shared
            .metrics()
            .frame_errors
            .fetch_add(1, Ordering::Relaxed);
        self.reply(protocol::error_frame(kind, message));
    }

    async fn handle(&mut self, text: Utf8Bytes) {
        let limit = self.shared.settings().max_frame_bytes;
        if text.len() > limit {
            self.id = protocol::frame_id(&text);
            return self.error(
                ErrorKind::TooLarge,
                &format!("frame too large: {} bytes (limit {limit})", text.len()),
            );
        }
        let parsed = protocol::parse_frame(&text);
        self.id = parsed.id;
        match parsed.request {
            Err(e) => self.error(ErrorKind::Malformed, &e.0),
            Ok(Request::Interest { data, since }) => {
                if self.interest_refused(&data) {
                    return;
                }
                let since = since.or(self.since.take());
                self.interest(&data, since).await
            }
            Ok(Request::Message { channel, text, key }) => self.message(&channel, text, key),
            Ok(Request::Token { token }) => self.token(&token).await,
        }
    }

    /// Applies the bounds of interest frames; true (and an error frame sent) when refused.
    fn interest_refused(&mut self, requested: &[String]) -> bool {
        let s = self.shared.settings();
        let free = !std::mem::replace(&mut self.subscribed, true);
        if !free && !self.sub.user.try_send(s.messages_per_second, s.burst) {
            self.shared
                .metrics()
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
            self.error(ErrorKind::RateLimited, &format!(
                "rate limit exceeded: interest frames count against the limit of {} messages per second per user (burst {}); interest unchanged",
                s.messages_per_second, s.burst
            ));
            return true;
        }
        let most = s.max_channels.saturating_mul(4).max(1);
        if requested.len() > most {
            self.error(ErrorKind::Malformed, &format!(
                "malformed interest: {} channel names, at most {most} per frame (and {} are granted); interest unchanged",
                requested.len(),
                s.max_channels
            ));
            return true;
        }
        false
    }

    async fn interest(&mut self, requested: &[String], since: Option<i64>) {
        let since = self.shared.clamp_since(since).await;
        if since.is_some() {
            // The reply goes before the replay: let the replies of earlier frames (acks waiting
            // for their commit) go out first.
            self.sub.replies_settled().await;
        }
        let granted = self.shared.set_interest(self.sub, requested, since);
        self.reply(protocol::interest_frame(
            &granted.channels,
            &granted.denied,
            granted.since,
            "processed interest in",
        ));
        self.shared.replay(self.sub, granted).await;
    }

    fn message(&mut self, raw_channel: &str, data: String, key: Option<String>) {
        let channel = match Channel::parse(raw_channel) {
            Ok(c) => c.as_str().to_string(),
            Err(e) => return self.error(ErrorKind::Malformed, &format!("malformed message: {e}")),
        };
        let (may_write, author) = self
            .sub
            .with_auth(|a| (a.perms.event(&channel, true), a.name.clone()));
        if !may_write {
            return self.error(
                ErrorKind::Forbidden,
                &format!("no write permission on channel [{channel}]"),
            );
        }
        let s = self.shared.settings();
        if !self.sub.user.try_send(s.messages_per_second, s.burst) {
            self.shared
                .metrics()
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
            return self.error(ErrorKind::RateLimited, &format!(
                "rate limit exceeded: at most {} messages per second per user (burst {}); message not stored",
                s.messages_per_second, s.burst
            ));
        }
        let added_interest = self.shared.add_interest(self.sub, &channel);
        let slot = self.sub.reserve_reply();
        let pending = Pending {
            channel,
            author,
            data,
            key: key.map(|k| AccountKey::new(&self.sub.user_id, &k)),
            reply: ReplyTo::Socket {
                sub: self.sub.clone(),
                slot,
                id: self.id.clone(),
                added_interest,
            },
        };
        if self.shared.submit(pending).is_err() {
            self.shared
                .metrics()
                .frame_errors
                .fetch_add(1, Ordering::Relaxed);
            let frame = protocol::error_frame(
                ErrorKind::Unavailable,
                "the server is shutting down; message not stored",
            );
            self.sub
                .fill_reply(slot, protocol::with_id(frame, self.id.as_deref()));
        }
    }

    async fn token(&mut self, token: &str) {
        match self.shared.auth().verify_token(token).await {
            Err(e) => self.error(ErrorKind::Unauthorized, &format!("token rejected: {e}")),
            Ok(p) if p.id != self.sub.user_id => self.error(
                ErrorKind::Unauthorized,
                "token rejected: it belongs to another user",
            ),
            Ok(p) => {
                let exp = p.claims.exp;
                self.sub.with_auth(|a| {
                    a.token = token.into();
                    a.name = p.name;
                    a.perms = Arc::new(p.perms);
                    a.exp = exp;
                });
                self.shared.refilter(self.sub);
                let expires = time::OffsetDateTime::from_unix_timestamp(exp)
                    .map(format_ts)
                    .unwrap_or_default();
                self.reply(protocol::token_frame(&expires));
            }
        }
    }
}

/// Writes queued frames until the socket closes; every frame taken in one round goes out with a
/// single flush.
/// Returns the sink after it sent a close frame.
async fn send_loop(sub: Arc<Subscriber>, mut sink: Sink, metrics: Metrics) -> Option<Sink> {
    let mut queue = VecDeque::new();
    loop {
        sub.take(&mut queue);
        if queue.is_empty() {
            if sub.is_closed() {
                return None;
            }
            sub.wait_for_frames().await;
            continue;
        }
        let (mut events, mut replies) = (0usize, 0usize);
        let mut close = None;
        for out in queue.drain(..) {
            let msg = match out {
                Out::Event(_, b) => {
                    events += 1;
                    Message::Text(b)
                }
                Out::Reply(b) => {
                    replies += 1;
                    Message::Text(b)
                }
                Out::Notice(b) => Message::Text(b),
                Out::Ping => Message::Ping(Default::default()),
                Out::Close(code, reason) => {
                    close = Some((code, reason));
                    break;
                }
            };
            if sink.feed(msg).await.is_err() {
                sub.mark_closed();
                return None;
            }
        }
        if sink.flush().await.is_err() {
            sub.mark_closed();
            return None;
        }
        sub.replies.add_permits(replies);
        metrics
            .messages_delivered
            .fetch_add(events as u64, Ordering::Relaxed);
        sub.written(events, &metrics);
        if queue.capacity() > 256 {
            queue = VecDeque::new();
        }
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
            return Some(sink);
        }
    }
}
