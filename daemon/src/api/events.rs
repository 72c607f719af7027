//! `/event` (the WebSocket of core4's event protocol) and `/event/history`.

use poem::{
    Body, IntoResponse, OnUpgrade, Request, Response,
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Header, Query},
    payload::Json,
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
};
use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role};

use super::{
    ApiTags, AppState, OptionalJson, Strict,
    spec::{
        HistoryFailures, HistoryPostFailures, PublishFailures, Reply, SocketFailures,
        StatsFailures, StreamFailures,
    },
};
use crate::{
    auth::{Method, TokenAuth, qual},
    domain::Channel,
    envelope::{Envelope, ErrorEnvelope, Page, Paged, format_ts, ok},
    error::{ApiError, ApiResult},
    events::{
        Admission, Refused,
        protocol::{
            ClientFrame, PublishRequest, Published, ServerFrame, TruncatedFrame, parse_id_str,
            valid_key,
        },
    },
    storage::{
        self,
        events::{EventRow, HistoryFilter},
    },
    web::Client,
};

#[derive(ApiResponse)]
pub enum PublishResponse {
    /// The message is committed: `message_id` names it (with `duplicate: true`, the message
    /// stored before under the same key).
    #[oai(status = 200)]
    Ok(Json<Envelope<Published>>),
}

#[derive(ApiResponse)]
pub enum HistoryResponse {
    /// One page of the channel's stored messages, newest first (`truncated` when it reaches
    /// what retention deleted).
    #[oai(status = 200)]
    Ok(Json<HistoryPage>),
}

#[derive(ApiResponse)]
pub enum StatsResponse {
    /// One row per channel the caller may read.
    #[oai(status = 200)]
    Ok(Json<Envelope<Vec<ChannelStatsOut>>>),
}

pub struct EventsApi {
    state: AppState,
}

impl EventsApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// A stored message, as history lists it (the same fields as the event frame).
#[derive(Object)]
pub struct EventOut {
    /// The message id (a decimal string of the deployment's increasing sequence).
    #[oai(rename = "_id")]
    pub id: String,
    /// Commit time, naive UTC with microseconds.
    pub created: String,
    pub name: String,
    pub author: String,
    pub channel: String,
    /// The `text` the sender sent.
    pub data: Value,
}

impl From<EventRow> for EventOut {
    fn from(r: EventRow) -> Self {
        Self {
            id: r.id.to_string(),
            created: format_ts(r.created),
            data: serde_json::from_str(&r.data).unwrap_or(Value::Null),
            name: r.name,
            author: r.author,
            channel: r.channel,
        }
    }
}

/// The answer to an upgrade request that passed authentication.
pub enum EventSocket {
    /// 101, then the socket is served by the event hub.
    Accepted(Accepted),
    /// 503: this instance is at `events.max_connections` or shutting down.
    Busy(ErrorEnvelope),
}

pub struct Accepted {
    accept: HeaderValue,
    upgrade: OnUpgrade,
    admission: Admission,
    config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    since: Option<i64>,
    /// `http.websocket_handshake_timeout_secs`.
    handshake_timeout: std::time::Duration,
}

/// The answer to an event stream request that passed authentication.
pub enum EventStream {
    /// 200, then Server-Sent Events until the hub closes the stream or the client leaves.
    Streaming(Body),
    /// 503: this instance is at `events.max_connections` or shutting down.
    Busy(ErrorEnvelope),
}

impl IntoResponse for EventStream {
    fn into_response(self) -> Response {
        match self {
            Self::Streaming(body) => Response::builder()
                .status(StatusCode::OK)
                .content_type("text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                // nginx would otherwise buffer the stream.
                .header("x-accel-buffering", "no")
                .body(body),
            Self::Busy(envelope) => busy(envelope),
        }
    }
}

const STREAM_DOC: &str = "Server-Sent Events (`text/event-stream`). Each stored message of the \
requested channels is one event: `id: <message id>` and `data: <the event frame, the same JSON \
as on the WebSocket>`. The stream starts with an `interest` event (the granted channels, and \
what was left out and why); a subscriber that falls behind gets a `gap` event (page the rest from \
history), a resume below what retention kept a `truncated` event, and a permission change an \
`interest` event. Comment lines (`: ping` every `events.ping_interval_secs`, `: keepalive` after \
half of `http.idle_timeout_secs` of silence) keep proxies from closing an idle stream. When the server ends the stream (token revoked or expired: code 1008; \
shutdown: 1001) it sends `event: close` with `{\"code\": …, \"reason\": …}` first.";

impl ApiResponse for EventStream {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: STREAM_DOC,
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "text/event-stream",
                    schema: ServerFrame::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        ServerFrame::register(registry);
    }
}

fn busy(envelope: ErrorEnvelope) -> Response {
    let mut resp = Json(envelope).into_response();
    resp.set_status(StatusCode::SERVICE_UNAVAILABLE);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, BUSY_RETRY_AFTER.into());
    resp
}

/// Seconds a client refused with 503 is asked to wait.
const BUSY_RETRY_AFTER: u32 = 5;

impl IntoResponse for EventSocket {
    fn into_response(self) -> Response {
        let accepted = match self {
            Self::Accepted(a) => a,
            Self::Busy(envelope) => return busy(envelope),
        };
        let Accepted {
            accept,
            upgrade,
            admission,
            config,
            since,
            handshake_timeout,
        } = accepted;
        tokio::spawn(async move {
            // Dropping the admission (upgrade failed or timed out) gives the user's slot back.
            let upgraded = match tokio::time::timeout(handshake_timeout, upgrade).await {
                Ok(Ok(upgraded)) => upgraded,
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!("event upgrade did not complete in time");
                    return;
                }
            };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                upgraded,
                Role::Server,
                Some(config),
            )
            .await;
            admission.serve(ws, since).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty())
    }
}

const SOCKET_DOC: &str = "Switching Protocols: the core4 event protocol over JSON text frames. \
The client sends `ClientFrame`s (`interest`, `message`, `token`); the server sends `ServerFrame`s: \
`EventFrame`s (the only frames with a `channel` key) and `ServerReply`s (`interest`, `send`, \
`error`, `gap`, `token`). The two vendor media types below carry these schemas; they are frames on \
the socket, not HTTP bodies. Every client frame gets exactly one reply; a malformed \
one an `error` frame, and the socket stays open. The server pings every \
`events.ping_interval_secs` (30 s); WebSocket clients answer pings by themselves. Close codes: \
1001 the server shuts down, or (reason `no pong`) the client sent nothing, not even a pong, for \
two ping intervals; 1008 the token was revoked or expired, or the user deactivated or deleted \
(the reason says which); 1009 a frame over the hard cap (16 times `events.max_frame_bytes`, at \
least 1 MiB); 1002 a WebSocket protocol error (e.g. reserved bits set); 1007 a text frame that is \
not valid UTF-8. A client's close frame is answered with the same code. Replies go out in the \
order of the frames they answer; any client frame may carry `id` (a string of at most 64 \
characters) that its reply echoes.";

impl ApiResponse for EventSocket {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: SOCKET_DOC,
                status: Some(101),
                status_range: None,
                content: vec![
                    MetaMediaType {
                        content_type: "application/vnd.core4.event-server-frame+json",
                        schema: ServerFrame::schema_ref(),
                    },
                    MetaMediaType {
                        content_type: "application/vnd.core4.event-client-frame+json",
                        schema: ClientFrame::schema_ref(),
                    },
                ],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        ClientFrame::register(registry);
        ServerFrame::register(registry);
    }
}

/// The WebSocket handshake headers, checked as poem's own extractor does.
fn websocket_key(req: &Request) -> ApiResult<HeaderValue> {
    let h = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(want))
            })
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(ApiError::BadRequest(
            "this endpoint is a WebSocket: send an upgrade request".into(),
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(ApiError::BadRequest(
            "unsupported WebSocket version (13 required)".into(),
        ));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::BadRequest("missing Sec-WebSocket-Key".into()))?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(ApiError::internal)
}

/// A header that may be given once: its value as text (UTF-8 is taken as such, where the typed
/// extractor sees only visible ASCII and would call anything else absent), or a 400 when it is
/// repeated or not text.
fn one_header(
    req: &poem::Request,
    name: &str,
    parsed: Option<String>,
) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(format!(
            "header [{name}] is given more than once; send it once"
        )));
    }
    match parsed {
        Some(text) => Ok(Some(text)),
        None => std::str::from_utf8(value.as_bytes())
            .map(|s| Some(s.trim().to_string()))
            .map_err(|_| ApiError::BadRequest(format!("header [{name}] is not UTF-8 text"))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn history(
    state: &AppState,
    auth: &TokenAuth,
    client: &Client,
    channel: Option<String>,
    page: Option<i64>,
    per_page: Option<u32>,
    before: Option<String>,
    after: Option<String>,
) -> ApiResult<Json<HistoryPage>> {
    let principal = state
        .auth
        .require(auth, qual::EVENT_HISTORY, Method::Read)
        .await?;
    let channel = Channel::parse(channel.as_deref().unwrap_or("message"))
        .map_err(|e| ApiError::BadRequest(format!("parameter [channel]: {e}")))?;
    if !principal.perms.event(channel.as_str(), false) {
        return Err(ApiError::Forbidden(format!(
            "no read permission on channel [{channel}]"
        )));
    }
    let cursor = |name: &str, v: Option<String>| -> ApiResult<Option<i64>> {
        v.map(|s| {
            parse_id_str(&s).ok_or_else(|| {
                ApiError::BadRequest(format!("parameter [{name}] must be a message id"))
            })
        })
        .transpose()
    };
    let filter = HistoryFilter {
        channel: channel.as_str().to_string(),
        before: cursor("before", before)?,
        after: cursor("after", after)?,
    };
    let pager = Page::new(page, per_page, state.settings.max_per_page)?;
    // A page of big messages is tens of MB while it is built: only a few at once.
    let worst = (pager.per_page as usize).saturating_mul(state.settings.events.max_frame_bytes);
    let _building = if worst > crate::web::held::PageBuilds::SMALL {
        let wait = std::time::Duration::from_secs(5);
        Some(state.page_builds.enter(client.addr, wait).await.map_err(|refused| {
            ApiError::Busy {
                message: match refused {
                    crate::web::held::Refusal::Client => {
                        "this client builds as many large pages of history at once as it may: wait for them, or use a smaller per_page"
                    }
                    crate::web::held::Refusal::Everyone => {
                        "too many large pages of history are being built: retry in a few seconds, or use a smaller per_page"
                    }
                }
                .into(),
                retry_after: 5,
            }
        })?)
    } else {
        None
    };
    // Counting stops at the window; page numbers address the newest `window` messages only.
    let window = state.settings.events.history_count_limit.max(1);
    let per_page = pager.per_page as u64;
    // A page from the front that is not full tells the total: no count needed.
    let (mut known_total, mut prefetched) = (None, None);
    if pager.page >= 0 {
        let offset = (pager.page as u64).saturating_mul(per_page);
        if offset < window {
            let rows =
                storage::events::history(&state.pool, &filter, offset, pager.per_page).await?;
            let n = rows.len() as u64;
            if n < per_page && (offset == 0 || n > 0) {
                known_total = Some(offset + n);
            }
            prefetched = Some(rows);
        }
    }
    let total = match known_total {
        Some(t) => t.min(window),
        None => storage::events::history_count(&state.pool, &filter, window).await?,
    };
    let (page, page_count, offset) = pager.resolve(total);
    let mut rows = if offset >= total {
        Vec::new()
    } else if let Some(rows) = prefetched {
        rows
    } else {
        storage::events::history(&state.pool, &filter, offset, pager.per_page).await?
    };
    rows.truncate(total.saturating_sub(offset).min(per_page) as usize);
    // Reaching the oldest retained message (or nothing) below pruned ones: say they are gone.
    let truncated = storage::events::truncated(
        &state.pool,
        std::slice::from_ref(&filter.channel),
        filter.after.unwrap_or(0),
    )
    .await?
    .into_iter()
    .next()
    .filter(|(_, first)| rows.last().is_none_or(|oldest| oldest.id <= *first))
    .map(|(channel, first)| TruncatedFrame {
        channel,
        first: first.to_string(),
    });
    let Json(page) = pager.reply(
        page,
        page_count,
        total,
        rows.into_iter().map(EventOut::from).collect(),
    );
    Ok(Json(HistoryPage { page, truncated }))
}

/// What one channel stores.
#[derive(Object)]
pub struct ChannelStatsOut {
    pub channel: String,
    /// Stored messages.
    pub count: i64,
    /// The oldest stored message id (absent when none is stored).
    #[oai(skip_serializing_if_is_none)]
    pub oldest: Option<String>,
    /// The newest stored message id.
    #[oai(skip_serializing_if_is_none)]
    pub newest: Option<String>,
    /// Bytes of the stored messages' JSON text.
    pub bytes: i64,
    /// The highest id retention deleted on this channel, if it deleted any.
    #[oai(skip_serializing_if_is_none)]
    pub pruned_through: Option<String>,
}

/// The parameters of `POST /event/history` as a JSON body: those of its query.
#[derive(Object, Deserialize, Default)]
#[oai(deny_unknown_fields, skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// The channel (default `message`).
    pub channel: Option<String>,
    /// Page (0-based; negative counts from the end).
    pub page: Option<i64>,
    /// Items per page (default 10).
    pub per_page: Option<u32>,
    /// Only messages with a smaller id.
    pub before: Option<String>,
    /// Only messages with a larger id.
    pub after: Option<String>,
}

/// A parameter given in the query, the body, or both with the same value.
fn either<T: PartialEq>(name: &str, query: Option<T>, body: Option<T>) -> ApiResult<Option<T>> {
    match (query, body) {
        (Some(q), Some(b)) if q != b => Err(ApiError::BadRequest(format!(
            "parameter [{name}] is given in the query and in the body with different values"
        ))),
        (q, b) => Ok(q.or(b)),
    }
}

/// A page of history.
#[derive(Object)]
pub struct HistoryPage {
    #[oai(flatten)]
    pub page: Paged<EventOut>,
    /// Present when this page reaches the oldest message retention kept on the channel and older
    /// ones were pruned: messages before `first` are gone, not missed.
    #[oai(skip_serializing_if_is_none)]
    pub truncated: Option<TruncatedFrame>,
}

#[OpenApi(tag = "ApiTags::Events")]
impl EventsApi {
    /// The event WebSocket
    ///
    /// Upgrade to a WebSocket speaking core4's event protocol, e.g.
    ///
    /// ```text
    /// ws://HOST:5001/core4/api/v1/event?token=<token from POST /login>
    /// ```
    ///
    /// (`wss://` behind TLS). Credentials as `?token=`, Bearer header or `token` cookie; without valid ones the upgrade is refused with a 401 envelope.
    /// An upgrade authenticated by the cookie alone from a page of another origin (`Origin`
    /// neither core4d's own nor in `trusted_origins`) is refused with 403.
    /// A user may have `events.max_connections_per_user` (1,000) sockets open per instance, more
    /// get 429; an instance accepts `events.max_connections` (50,000) in all, more (and upgrades
    /// during shutdown) get 503 with `Retry-After`.
    /// Needs `api://core4.api.v1.request.standard.event.EventHandler` (read); channels need
    /// `event://<channel>/r` to listen and `/w` to send. A session:
    ///
    /// ```text
    /// > {"type":"interest","data":["message","system"]}
    /// < {"type":"interest","data":["message","system"],"message":"processed interest in ['message', 'system']","denied":{}}
    /// > {"type":"message","channel":"message","text":"hello"}
    /// < {"type":"send","message_id":"17","message":"OK"}
    /// < {"_id":"17","created":"2026-11-27T10:00:00.123456","name":"message","author":"user1","channel":"message","data":"hello"}
    /// ```
    #[oai(path = "/event", method = "get", operation_id = "event_socket")]
    async fn socket(
        &self,
        req: &Request,
        auth: TokenAuth,
        /// Replay the stored messages after this id on the channels of the first interest frame
        /// (unless that frame has its own `since`), then continue live.
        since: Query<Option<String>>,
    ) -> Reply<EventSocket, SocketFailures> {
        let principal = self
            .state
            .auth
            .require(&auth, qual::EVENT, Method::Read)
            .await?;
        let accept = websocket_key(req)?;
        let since = match since.0 {
            None => None,
            Some(s) => Some(parse_id_str(&s).ok_or_else(|| {
                ApiError::BadRequest("parameter [since] must be a message id".into())
            })?),
        };
        let token = auth.token().unwrap_or_default().to_string();
        let hub = &self.state.hub;
        let admission = match hub.admit(principal, &token) {
            Ok(a) => a,
            Err(Refused::Api(e)) => return Err(e.into()),
            Err(Refused::Busy(message)) => {
                tracing::warn!(%message, "event upgrade refused");
                return Ok(EventSocket::Busy(ErrorEnvelope::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    message,
                )));
            }
        };
        let upgrade = req
            .take_upgrade()
            .map_err(|_| ApiError::BadRequest("the connection cannot be upgraded".into()))?;
        Ok(EventSocket::Accepted(Accepted {
            accept,
            upgrade,
            admission,
            config: hub.websocket_config(),
            since,
            handshake_timeout: std::time::Duration::from_secs(
                self.state.settings.http.websocket_handshake_timeout_secs,
            ),
        }))
    }

    /// Stream events (Server-Sent Events)
    ///
    /// The event channels for clients without a WebSocket: a browser's `EventSource`, `curl
    /// -N`, any HTTP library that reads a streamed body. Credentials as for the socket (Bearer,
    /// `?token=` or the `token` cookie, whose use from a page of another origin is refused with
    /// 403); the same permissions, per-user and per-instance connection limits, queue and gap
    /// rule, and re-checks: a revoked or expired token ends the stream. `Last-Event-ID` (which
    /// `EventSource` sends by itself when it reconnects) or `?since=` resumes after that id with
    /// no gap and no duplicate, on this or any other instance; given both, after the later one
    /// (a page's `EventSource` keeps its `?since=` on every reconnect).
    ///
    /// ```text
    /// GET /core4/api/v1/event/stream?channel=message&channel=system
    ///
    /// event: interest
    /// data: {"data":["message","system"],"denied":{},"message":"processed interest in ['message', 'system']","type":"interest"}
    ///
    /// id: 17
    /// data: {"_id":"17","created":"2026-11-27T10:00:00.123456","name":"message","author":"user1","channel":"message","data":"hello"}
    ///
    /// : ping
    /// ```
    #[oai(path = "/event/stream", method = "get", operation_id = "event_stream")]
    async fn event_stream(
        &self,
        auth: TokenAuth,
        /// A channel to receive; repeat for several (`channel=a&channel=b`).
        channel: Query<Vec<String>>,
        /// Replay the stored messages after this id first, then continue live.
        since: Query<Option<String>>,
        /// The id of the last event received (sent by `EventSource` when it reconnects). With
        /// `since` as well, the stream resumes after the later of the two.
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
        req: &poem::Request,
    ) -> Reply<EventStream, StreamFailures> {
        let last_event_id = one_header(req, "last-event-id", last_event_id.0)?;
        let principal = self
            .state
            .auth
            .require(&auth, qual::EVENT, Method::Read)
            .await?;
        let id = |raw: Option<String>, name: &str| -> Result<Option<i64>, ApiError> {
            raw.map(|s| {
                parse_id_str(&s)
                    .ok_or_else(|| ApiError::BadRequest(format!("{name} must be a message id")))
            })
            .transpose()
        };
        // An `EventSource` keeps its URL: on a reconnect its `since` is older than the
        // `Last-Event-ID` it sends, and resuming from `since` would repeat events.
        let since = match (
            id(since.0, "parameter [since]")?,
            id(last_event_id, "header [Last-Event-ID]")?,
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let hub = &self.state.hub;
        let most = hub
            .settings()
            .map_or(256, |s| s.max_channels.saturating_mul(4).max(1));
        if channel.0.len() > most {
            return Err(ApiError::BadRequest(format!(
                "parameter [channel]: {} channel names, at most {most}",
                channel.0.len()
            ))
            .into());
        }
        let token = auth.token().unwrap_or_default().to_string();
        let admission = match hub.admit(principal, &token) {
            Ok(a) => a,
            Err(Refused::Api(e)) => return Err(e.into()),
            Err(Refused::Busy(message)) => {
                tracing::warn!(%message, "event stream refused");
                return Ok(EventStream::Busy(ErrorEnvelope::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    message,
                )));
            }
        };
        // Half the idle timeout: a quiet stream must never look like a dead connection.
        let keepalive =
            std::time::Duration::from_secs(self.state.settings.http.idle_timeout_secs) / 2;
        let stream = admission
            .into_event_stream(channel.0, since, keepalive)
            .await;
        Ok(EventStream::Streaming(Body::from_bytes_stream(stream)))
    }

    /// Publish a message
    ///
    /// Stores `text` on `channel` and broadcasts it to every subscriber, as the socket's message
    /// frame does, and replies once the message is committed in PostgreSQL. The same permissions
    /// as the socket (`api://core4.api.v1.request.standard.event.EventHandler` and
    /// `event://<channel>/w`), the same per-user message rate (shared with the user's sockets)
    /// and the same error phrases. With a key (`key` in the body or the `Idempotency-Key`
    /// header), a message whose key the same account stored within
    /// `events.idempotency_window_secs` (24 h) is not stored again: the reply names the original
    /// `message_id` with `duplicate: true`, so a request that timed out can be sent again safely.
    ///
    /// ```text
    /// POST /core4/api/v1/event
    /// Idempotency-Key: nightly-report-2026-11-27
    /// {"channel": "message", "text": {"report": "done"}}
    ///
    /// 200 {"_id": "…", "code": 200, "message": "OK", …,
    ///      "data": {"message_id": "4711", "duplicate": false}}
    /// ```
    #[oai(path = "/event", method = "post", operation_id = "event_publish")]
    async fn publish(
        &self,
        auth: TokenAuth,
        body: Json<Strict<PublishRequest>>,
        /// Idempotency key (1 to 128 characters, no control characters), used when the body has
        /// no `key`; given with a different body `key`, a 400.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        req: &poem::Request,
    ) -> Reply<PublishResponse, PublishFailures> {
        let idempotency_key = one_header(req, "idempotency-key", idempotency_key.0)?;
        let principal = self
            .state
            .auth
            .require(&auth, qual::EVENT, Method::Read)
            .await?;
        let PublishRequest { channel, text, key } = body.0.0;
        let channel = channel
            .ok_or_else(|| ApiError::BadRequest("malformed message: missing `channel`".into()))?;
        let data = match text {
            None | Some(Value::Null) => {
                return Err(
                    ApiError::BadRequest("malformed message: missing `text`".into()).into(),
                );
            }
            Some(Value::String(s)) if s.is_empty() => {
                return Err(
                    ApiError::BadRequest("malformed message: `text` is empty".into()).into(),
                );
            }
            Some(v) => v.to_string(),
        };
        if let (Some(body_key), Some(header_key)) = (&key, &idempotency_key)
            && body_key != header_key
        {
            return Err(ApiError::BadRequest(
                "malformed message: `key` and the Idempotency-Key header differ; send one".into(),
            )
            .into());
        }
        let key = key.or(idempotency_key);
        if key.as_deref().is_some_and(|k| !valid_key(k)) {
            return Err(
                ApiError::BadRequest(crate::events::protocol::invalid_key_message()).into(),
            );
        }
        let stored = self
            .state
            .hub
            .publish(&principal, &channel, data, key)
            .await?;
        Ok(PublishResponse::Ok(ok(Published {
            message_id: stored.message_id.to_string(),
            duplicate: stored.duplicate,
        })))
    }

    /// Message history
    ///
    /// Stored messages of one channel, newest first, paged with the usual envelope. `before` and
    /// `after` are exclusive id cursors (page backwards with `before=<oldest id seen>`; fill a gap
    /// with `after=<gap id>`). Needs `event://<channel>/r`.
    ///
    /// Counting is bounded: `total_count` counts at most `events.history_count_limit` (100,000)
    /// matching messages, so one call reads at most that many entries of the `(channel, id)`
    /// index however long the channel is. A `total_count` equal to the limit means "at least
    /// that many", and page numbers (negative ones too) reach only the newest limit-many
    /// matches; go further back with `before=<oldest id seen>`, which costs the same at any
    /// depth. A page from the front that is not full gives the total without counting.
    #[oai(
        path = "/event/history",
        method = "get",
        operation_id = "event_history_get"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn history_get(
        &self,
        auth: TokenAuth,
        /// The channel (default `message`).
        channel: Query<Option<String>>,
        /// Page (0-based; negative counts from the end).
        page: Query<Option<i64>>,
        /// Items per page (default 10).
        per_page: Query<Option<u32>>,
        /// Only messages with a smaller id.
        before: Query<Option<String>>,
        /// Only messages with a larger id.
        after: Query<Option<String>>,
        client: Client,
    ) -> Reply<HistoryResponse, HistoryFailures> {
        let page = history(
            &self.state,
            &auth,
            &client,
            channel.0,
            page.0,
            per_page.0,
            before.0,
            after.0,
        )
        .await?;
        Ok(HistoryResponse::Ok(page))
    }

    /// Stored messages per channel
    ///
    /// For every channel: how many messages are stored, the oldest and
    /// newest id, their size, and up to which id retention (`[[events.retention]]`) deleted
    /// messages. It reads every stored message: a command for operators, so it needs `cop`.
    #[oai(path = "/event/stats", method = "get", operation_id = "event_stats")]
    async fn stats(&self, auth: TokenAuth) -> Reply<StatsResponse, StatsFailures> {
        let principal = self
            .state
            .auth
            .require(&auth, qual::EVENT_HISTORY, Method::Read)
            .await?;
        if !principal.perms.is_admin() {
            return Err(ApiError::Forbidden(
                "only a cop may read the event stats (they read every stored message)".into(),
            )
            .into());
        }
        let rows = storage::events::stats(&self.state.pool).await?;
        Ok(StatsResponse::Ok(ok(rows
            .into_iter()
            .filter(|r| principal.perms.event(&r.channel, false))
            .map(|r| ChannelStatsOut {
                channel: r.channel,
                count: r.count,
                oldest: r.oldest.map(|i| i.to_string()),
                newest: r.newest.map(|i| i.to_string()),
                bytes: r.bytes,
                pruned_through: r.pruned_through.map(|i| i.to_string()),
            })
            .collect())))
    }

    /// Message history (POST)
    ///
    /// The same as GET, with the parameters in the query, in a JSON body (as core4 read its
    /// arguments from either; core4 itself answered this POST with an empty body), or both: a
    /// parameter given in both places with different values is a 400 naming it. An empty body
    /// is no body.
    #[oai(
        path = "/event/history",
        method = "post",
        operation_id = "event_history_post"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn history_post(
        &self,
        auth: TokenAuth,
        /// The channel (default `message`).
        channel: Query<Option<String>>,
        /// Page (0-based; negative counts from the end).
        page: Query<Option<i64>>,
        /// Items per page (default 10).
        per_page: Query<Option<u32>>,
        /// Only messages with a smaller id.
        before: Query<Option<String>>,
        /// Only messages with a larger id.
        after: Query<Option<String>>,
        body: OptionalJson<Strict<HistoryParams>>,
        client: Client,
    ) -> Reply<HistoryResponse, HistoryPostFailures> {
        let b = body.0.map(|b| b.0).unwrap_or_default();
        let page = history(
            &self.state,
            &auth,
            &client,
            either("channel", channel.0, b.channel)?,
            either("page", page.0, b.page)?,
            either("per_page", per_page.0, b.per_page)?,
            either("before", before.0, b.before)?,
            either("after", after.0, b.after)?,
        )
        .await?;
        Ok(HistoryResponse::Ok(page))
    }
}
