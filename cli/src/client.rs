//! The one way core4ctl talks to core4d: [`ApiClient`] over its public HTTP API (envelope
//! parsing, error mapping, saving refreshed tokens) and [`EventSocket`] over its WebSocket.

use std::{
    sync::{Arc, Mutex, Once},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, RequestBuilder, StatusCode, Url, header::HeaderMap};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};

use core4_proto::{
    ClientFrame, ErrorKind, InterestReplyFrame, InterestRequestFrame, MessageRequestFrame,
    ServerFrame, ServerReply, TokenRequestFrame,
};

use crate::{
    error::{CliError, Result},
    sanitize::sanitize,
};

/// Where core4d serves its API, below the server URL.
pub const API_PREFIX: &str = "/core4/api/v1";

/// One page of a paged listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// 0-based, as the server counts.
    pub page: u64,
    pub per_page: u64,
    pub page_count: u64,
    pub total_count: u64,
    /// History only: retention deleted this channel's messages before this id.
    pub truncated_before: Option<String>,
}

/// Where a client hands a token the server refreshed, with the token it replaces: the caller
/// decides where it goes (core4ctl's config file). A failure is reported as a warning; the
/// client keeps using the new token.
pub type TokenSink = Box<dyn Fn(Option<&str>, &str) -> Result<()> + Send + Sync>;

pub struct ApiClient {
    http: reqwest::Client,
    server: String,
    api: String,
    token: Mutex<Option<String>>,
    /// Where refreshed tokens go; `None` for login, which saves explicitly.
    sink: Option<TokenSink>,
    /// TLS for `wss://` when `--cacert` replaced the system's roots; `None`: the system's.
    ws_tls: Option<tokio_tungstenite::Connector>,
}

/// Never prints the token.
impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn http_client(roots: Option<Vec<reqwest::Certificate>>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("core4ctl/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        // A 307/308 would re-send the body (the login password) wherever it points.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(roots) = roots {
        builder = builder.tls_certs_only(roots);
    }
    builder
        .build()
        .map_err(|e| CliError::other("cannot set up the HTTP client", e))
}

impl ApiClient {
    pub fn new(server: &str, token: Option<String>, sink: Option<TokenSink>) -> Result<Self> {
        install_crypto_provider();
        Ok(Self {
            http: http_client(None)?,
            server: server.to_owned(),
            api: format!("{server}{API_PREFIX}"),
            token: Mutex::new(token),
            sink,
            ws_tls: None,
        })
    }

    /// Trusts only the certificates in `cacert` (PEM) for `https://` and `wss://`, as curl's
    /// `--cacert` does: a self-signed certificate or a private CA.
    pub fn with_cacert(mut self, cacert: &std::path::Path) -> Result<Self> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let unusable = |detail: String| {
            CliError::Usage(format!(
                "cannot use --cacert {}: {detail} — pass a PEM file of the certificate(s) to trust",
                cacert.display()
            ))
        };
        let pem = std::fs::read(cacert).map_err(|e| unusable(e.to_string()))?;
        let ders = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| unusable(e.to_string()))?;
        if ders.is_empty() {
            return Err(unusable("no CERTIFICATE block in it".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        let mut certs = Vec::new();
        for der in ders {
            certs.push(
                reqwest::Certificate::from_der(der.as_ref())
                    .map_err(|e| unusable(e.to_string()))?,
            );
            roots.add(der).map_err(|e| unusable(e.to_string()))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::other("cannot set up TLS", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        self.http = http_client(Some(certs))?;
        self.ws_tls = Some(tokio_tungstenite::Connector::Rustls(Arc::new(config)));
        Ok(self)
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn token(&self) -> Option<String> {
        self.token.lock().expect("token lock").clone()
    }

    /// Adopts a token the server refreshed (the `token` header or a `token` frame) and hands it
    /// to the sink with the one it replaces.
    pub fn remember_token(&self, token: &str) {
        let previous = {
            let mut current = self.token.lock().expect("token lock");
            if current.as_deref() == Some(token) {
                return;
            }
            current.replace(token.to_owned())
        };
        if let Some(sink) = &self.sink
            && let Err(e) = sink(previous.as_deref(), token)
        {
            eprintln!("warning: could not save the refreshed token: {e}");
        }
    }

    fn request(&self, method: Method, path: &str, query: &[(&str, String)]) -> RequestBuilder {
        let mut url = format!("{}{path}", self.api);
        if !query.is_empty() {
            let pairs = query.iter().map(|(k, v)| (*k, v.as_str()));
            let encoded = reqwest::Url::parse("q:")
                .map(|mut u| {
                    u.query_pairs_mut()
                        .extend_pairs(pairs)
                        .finish()
                        .query()
                        .unwrap_or_default()
                        .to_owned()
                })
                .unwrap_or_default();
            url = format!("{url}?{encoded}");
        }
        let builder = self.http.request(method, url);
        match self.token() {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends, captures a refreshed token, and returns the envelope of a 2xx reply.
    async fn send(&self, builder: RequestBuilder) -> Result<serde_json::Map<String, Value>> {
        let response = builder.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| response.url().join(l).ok());
            return Err(redirected(&self.server, status, location));
        }
        let path = response.url().path().to_owned();
        if let Some(token) = refreshed_token(response.headers()) {
            self.remember_token(&token);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        let envelope = match serde_json::from_slice::<Value>(&body) {
            // Every core4d error reply says what went wrong in `error`.
            Ok(Value::Object(map)) if status.is_success() || map.contains_key("error") => map,
            // A proxy's own page while core4d behind it is away or busy.
            _ if proxy_may_answer(status) => {
                return Err(map_error(
                    &self.server,
                    status,
                    None,
                    None,
                    retry_after.as_deref(),
                ));
            }
            _ => return Err(not_core4d(&self.server, status, &path)),
        };
        if status.is_success() {
            return Ok(envelope);
        }
        let message = envelope.get("error").and_then(Value::as_str);
        let request_id = envelope.get("_id").and_then(Value::as_str);
        Err(map_error(
            &self.server,
            status,
            message,
            request_id,
            retry_after.as_deref(),
        ))
    }

    fn transport_error(&self, err: reqwest::Error) -> CliError {
        if let Some(hint) = wrong_scheme(&self.server, &err) {
            return hint;
        }
        let cause = root_cause(&err);
        if cause.contains("certificate") {
            return untrusted(&self.server, &cause);
        }
        if err.is_connect() || err.is_timeout() {
            CliError::Unreachable {
                server: self.server.clone(),
                detail: root_cause(&err),
            }
        } else {
            CliError::Other(format!(
                "request to {} failed: {}",
                self.server,
                root_cause(&err)
            ))
        }
    }

    fn data<T: DeserializeOwned>(&self, mut envelope: serde_json::Map<String, Value>) -> Result<T> {
        let data = envelope.remove("data").unwrap_or(Value::Null);
        serde_json::from_value(data).map_err(|e| {
            CliError::Other(format!(
                "unexpected data in the reply from {} ({e}): is core4ctl too old for this server?",
                self.server
            ))
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        let envelope = self.send(self.request(Method::GET, path, query)).await?;
        self.data(envelope)
    }

    pub async fn get_page<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Page<T>> {
        let envelope = self.send(self.request(Method::GET, path, query)).await?;
        let number = |key: &str| {
            envelope
                .get(key)
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
                .max(0.0) as u64
        };
        let (page, per_page, page_count, total_count) = (
            number("page"),
            number("per_page"),
            number("page_count"),
            number("total_count"),
        );
        let truncated_before = envelope
            .get("truncated")
            .and_then(|t| t.get("first"))
            .and_then(Value::as_str)
            .map(|s| sanitize(s).into_owned());
        Ok(Page {
            data: self.data(envelope)?,
            page,
            per_page,
            page_count,
            total_count,
            truncated_before,
        })
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let envelope = self
            .send(self.request(Method::POST, path, &[]).json(body))
            .await?;
        self.data(envelope)
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let envelope = self
            .send(self.request(Method::PUT, path, &[]).json(body))
            .await?;
        self.data(envelope)
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        let envelope = self.send(self.request(Method::DELETE, path, query)).await?;
        self.data(envelope)
    }

    /// `ws[s]://HOST/core4/api/v1/event?token=..[&since=..]`
    fn event_url(&self, since: Option<&str>) -> Result<Url> {
        let mut url = Url::parse(&format!("{}/event", self.api))
            .map_err(|e| CliError::Usage(format!("invalid server URL {}: {e}", self.server)))?;
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .expect("ws and wss are valid schemes");
        let token = self.token();
        let pairs = token
            .as_deref()
            .map(|t| ("token", t))
            .into_iter()
            .chain(since.map(|s| ("since", s)));
        let pairs: Vec<_> = pairs.collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        Ok(url)
    }

    /// Opens the event WebSocket with the current token.
    pub async fn connect_events(&self) -> Result<EventSocket<'_>> {
        let url = self.event_url(None)?;
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            None,
            false,
            self.ws_tls.clone(),
        );
        let (ws, response) = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Err(_) => {
                return Err(CliError::Unreachable {
                    server: self.server.clone(),
                    detail: "timed out".into(),
                });
            }
            Ok(Err(e)) => return Err(self.handshake_error(e)),
            Ok(Ok(ok)) => ok,
        };
        if let Some(token) = refreshed_token(response.headers()) {
            self.remember_token(&token);
        }
        Ok(EventSocket { client: self, ws })
    }

    fn handshake_error(&self, err: tungstenite::Error) -> CliError {
        match err {
            tungstenite::Error::Http(response) => {
                let envelope = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok());
                let message = envelope
                    .as_ref()
                    .and_then(|e| e.get("error"))
                    .and_then(Value::as_str);
                let request_id = envelope
                    .as_ref()
                    .and_then(|e| e.get("_id"))
                    .and_then(Value::as_str);
                let status = StatusCode::from_u16(response.status().as_u16())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                if status.is_redirection() {
                    let location = response
                        .headers()
                        .get("location")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|l| self.event_url(None).ok()?.join(l).ok());
                    return redirected(&self.server, status, location);
                }
                if envelope.as_ref().is_none_or(|e| e.get("error").is_none())
                    && !proxy_may_answer(status)
                {
                    return not_core4d(&self.server, status, &format!("{API_PREFIX}/event"));
                }
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok());
                match map_error(&self.server, status, message, request_id, retry_after) {
                    CliError::Auth(text) if status == StatusCode::TOO_MANY_REQUESTS => {
                        CliError::Busy(text)
                    }
                    other => other,
                }
            }
            tungstenite::Error::Io(e) if wrong_scheme(&self.server, &e).is_some() => {
                wrong_scheme(&self.server, &e).expect("checked")
            }
            // A TLS server's alert read as an HTTP reply.
            tungstenite::Error::Protocol(tungstenite::error::ProtocolError::HttparseError(_))
                if self.server.starts_with("http://") =>
            {
                expects_tls(&self.server)
            }
            tungstenite::Error::Io(e) if e.to_string().contains("certificate") => {
                untrusted(&self.server, &root_cause(&e))
            }
            tungstenite::Error::Io(e) => CliError::Unreachable {
                server: self.server.clone(),
                detail: e.to_string(),
            },
            tungstenite::Error::Tls(e) => untrusted(&self.server, &root_cause(&e)),
            other => CliError::Other(format!(
                "cannot open the event channel at {}: {other}",
                self.server
            )),
        }
    }
}

fn refreshed_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get("token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A server whose certificate core4ctl cannot verify: say how to trust it.
fn untrusted(server: &str, detail: &str) -> CliError {
    CliError::Other(format!(
        "cannot verify the TLS certificate of {server} ({detail}): pass the certificate or its \
         CA with --cacert FILE (or CORE4_CACERT)"
    ))
}

/// A TLS client meeting a plain-HTTP server, or a plain one meeting a TLS server: found by the
/// error types in the chain (rustls read an HTTP reply as a TLS record; hyper read a TLS alert
/// as an HTTP reply).
fn wrong_scheme(server: &str, err: &(dyn std::error::Error + 'static)) -> Option<CliError> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) =
            tls_error(err)
        {
            let http = server.replacen("https://", "http://", 1);
            return Some(CliError::Other(format!(
                "{server} does not speak TLS: it answered in plain HTTP — use --server {http}"
            )));
        }
        if let Some(e) = err.downcast_ref::<hyper::Error>()
            && e.is_parse()
            && server.starts_with("http://")
        {
            return Some(expects_tls(server));
        }
        cause = err.source();
    }
    None
}

/// The rustls error `err` is or wraps: `io::Error::source` skips the error an `io::Error`
/// wraps, so look inside (io errors may wrap io errors).
fn tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = err.downcast_ref::<std::io::Error>()?.get_ref()?;
    tls_error(inner)
}

fn expects_tls(server: &str) -> CliError {
    let https = server.replacen("http://", "https://", 1);
    CliError::Other(format!(
        "{server} does not answer plain HTTP; it seems to expect TLS — use --server {https}"
    ))
}

/// core4d never redirects; a proxy or another server at that address does. Its `Location`,
/// cut before the API path, is the server to use.
fn redirected(server: &str, status: StatusCode, location: Option<Url>) -> CliError {
    let Some(mut url) = location else {
        return CliError::Other(format!(
            "{server} answered HTTP {status} without saying where to: check --server"
        ));
    };
    let shown = sanitize(url.as_str()).into_owned();
    url.set_query(None);
    url.set_fragment(None);
    if let Some(at) = url.path().find(API_PREFIX) {
        let base = url.path()[..at].to_owned();
        url.set_path(&base);
    }
    let suggestion = sanitize(url.as_str().trim_end_matches('/')).into_owned();
    CliError::Other(format!(
        "{server} redirects (HTTP {status}) to {shown} — use --server {suggestion}"
    ))
}

/// A proxy in front of core4d may answer these itself: 429, and 502–504 while core4d is away.
fn proxy_may_answer(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502..=504)
}

/// An answer without core4d's JSON envelope: another server listens at that address.
fn not_core4d(server: &str, status: StatusCode, path: &str) -> CliError {
    CliError::Other(format!(
        "{server} does not look like core4d: {} answered HTTP {status} without core4d's JSON \
         reply — check --server",
        sanitize(path)
    ))
}

/// The innermost cause ("Connection refused (os error 111)") instead of reqwest's outer layers.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Turns a core4d error reply into a message that says what to do next, and its exit code.
pub fn map_error(
    server: &str,
    status: StatusCode,
    message: Option<&str>,
    request_id: Option<&str>,
    retry_after: Option<&str>,
) -> CliError {
    let message = message
        .map(|m| sanitize(m.trim()).into_owned())
        .filter(|m| !m.is_empty());
    let text = message
        .as_deref()
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"));
    match status.as_u16() {
        401 => CliError::Auth(match text {
            "token expired" => "the token has expired — run `core4ctl login`".to_owned(),
            // core4d gives one reason for all of these; say which they can be.
            "token revoked" => "the token was revoked: by a logout, a password change, or the \
                                account's deactivation or deletion — run `core4ctl login`"
                .to_owned(),
            "invalid token" => {
                format!("the saved token is not valid for {server} — run `core4ctl login`")
            }
            "invalid username or password" => {
                format!(
                    "wrong username or password for {server} — check them and run `core4ctl login` again"
                )
            }
            "authentication required" => {
                format!("not logged in to {server} — run `core4ctl login`")
            }
            other => format!("{server} refused the credentials ({other}) — run `core4ctl login`"),
        }),
        403 => CliError::Auth(format!(
            "forbidden: your account lacks the permission for this ({text}) — ask an administrator"
        )),
        404 => CliError::NotFound(text.to_owned()),
        409 => CliError::Conflict(match text {
            "name or email exists" => "name or email exists — choose another one".to_owned(),
            other => other.to_owned(),
        }),
        429 => {
            // "too many failed logins; try again later": we say when.
            let what = text.split(';').next().unwrap_or(text).trim();
            CliError::Auth(
                match retry_after.and_then(|s| s.trim().parse::<u64>().ok()) {
                    Some(secs) => format!("{what} — wait {secs} s before trying again"),
                    None => format!("{what} — wait a while before trying again"),
                },
            )
        }
        400 | 422 => CliError::Usage(if text.starts_with("invalid permission protocol") {
            format!(
                "{text} — permissions look like cop, api://<regex>[/crud], event://<channel glob>/r|w|rw, job://<regex>/x|r, app://<key> or mongodb://<db>"
            )
        } else {
            text.to_owned()
        }),
        code if code >= 500 => CliError::Other(format!(
            "core4d at {server} failed (HTTP {code}{}); check its log",
            request_id
                .map(|id| format!(", request id {}", sanitize(id)))
                .unwrap_or_default()
        )),
        code => CliError::Other(format!("core4d at {server} answered HTTP {code}: {text}")),
    }
}

/// A stored message, as events and history items carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "_id", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    pub channel: String,
    #[serde(default)]
    pub data: Value,
}

impl Event {
    /// Ids are decimal strings of an increasing sequence; `None` for pseudo-events.
    pub fn seq(&self) -> Option<u64> {
        self.id.as_deref().and_then(parse_seq)
    }
}

pub fn parse_seq(id: &str) -> Option<u64> {
    id.trim().parse().ok()
}

/// A frame from the event socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Event(Event),
    /// The channels the server granted, and those it left out with the reason.
    Interest {
        granted: Vec<String>,
        denied: Vec<(String, String)>,
    },
    /// A sent message is durably stored under this id (or was before, for a duplicate key).
    Ack(String),
    /// The server skipped messages after this id (slow consumer): fill from history.
    Gap(String),
    /// Retention deleted the messages of `channel` before `first`: they are gone, not missed.
    Truncated {
        channel: String,
        first: String,
    },
    /// A refused frame: decide on `kind` (absent from servers that predate it), show `message`.
    Error {
        kind: Option<ErrorKind>,
        message: String,
    },
    Other(Value),
}

impl Frame {
    /// Parses a server frame with the shared wire types; frames they do not describe (an error
    /// without `kind` from an older server) are read leniently.
    pub fn parse(text: &str) -> Frame {
        let clean = |s: &str| sanitize(s).into_owned();
        match ServerFrame::parse(text) {
            Ok(ServerFrame::Event(e)) => Frame::Event(Event {
                id: Some(e.id),
                created: Some(e.created),
                name: Some(e.name),
                author: Some(e.author),
                channel: e.channel,
                data: e.data,
            }),
            Ok(ServerFrame::Reply(reply)) => match reply {
                ServerReply::Send(ack) => Frame::Ack(ack.message_id),
                ServerReply::Interest(InterestReplyFrame {
                    message_id: Some(id),
                    ..
                }) => Frame::Ack(id),
                ServerReply::Interest(i) => Frame::Interest {
                    granted: i.data.unwrap_or_default(),
                    denied: i
                        .denied
                        .unwrap_or_default()
                        .iter()
                        .map(|(ch, why)| (clean(ch), clean(why)))
                        .collect(),
                },
                ServerReply::Error(e) => Frame::Error {
                    kind: Some(e.kind),
                    message: clean(&e.message),
                },
                ServerReply::Gap(g) => Frame::Gap(g.after),
                ServerReply::Truncated(t) => Frame::Truncated {
                    channel: clean(&t.channel),
                    first: clean(&t.first),
                },
                ServerReply::Token(t) => Frame::Other(serde_json::to_value(t).unwrap_or_default()),
            },
            Err(_) => match serde_json::from_str::<Value>(text) {
                Ok(value) if value.get("type").and_then(Value::as_str) == Some("error") => {
                    Frame::Error {
                        kind: None,
                        message: clean(
                            value
                                .get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("error"),
                        ),
                    }
                }
                Ok(value) if value.get("channel").is_some() => {
                    match serde_json::from_value(value.clone()) {
                        Ok(event) => Frame::Event(event),
                        Err(_) => Frame::Other(value),
                    }
                }
                Ok(value) => Frame::Other(value),
                Err(_) => Frame::Error {
                    kind: None,
                    message: clean(text),
                },
            },
        }
    }
}

/// WebSocket close code core4d uses when the token expired or was revoked, or the user was
/// deactivated: reconnecting with the same token cannot help.
const CLOSE_POLICY: u16 = core4_proto::close::POLICY;

/// An open event WebSocket; `token` frames are handled here and never surface.
pub struct EventSocket<'a> {
    client: &'a ApiClient,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl EventSocket<'_> {
    async fn send_frame(&mut self, frame: &ClientFrame) -> Result<()> {
        self.ws
            .send(tungstenite::Message::text(frame.to_text()))
            .await
            .map_err(|e| self.lost(e))
    }

    /// Replaces this socket's interests; with `since`, stored messages after that id come first.
    pub async fn interest(&mut self, channels: &[String], since: Option<&str>) -> Result<()> {
        self.send_frame(&ClientFrame::Interest(InterestRequestFrame {
            data: Some(channels.to_vec()),
            since: since.map(str::to_owned),
            id: None,
        }))
        .await
    }

    /// Hands the socket a fresh token before the old one expires (the server closes it then).
    pub async fn send_token(&mut self, token: &str) -> Result<()> {
        self.send_frame(&ClientFrame::Token(TokenRequestFrame {
            token: token.to_owned(),
            id: None,
        }))
        .await
    }

    /// Sends a message with its idempotency `key`: sent again with the same key (after a
    /// reconnect, say) it is stored once.
    pub async fn send_message(&mut self, channel: &str, text: &Value, key: &str) -> Result<()> {
        self.send_frame(&ClientFrame::Message(MessageRequestFrame {
            channel: channel.to_owned(),
            text: text.clone(),
            key: Some(key.to_owned()),
            id: None,
        }))
        .await
    }

    /// The next frame; `Ok(None)` when the server closed the connection.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            let message = match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(self.lost(e)),
                Some(Ok(m)) => m,
            };
            let text = match message {
                tungstenite::Message::Text(t) => t,
                tungstenite::Message::Close(Some(frame))
                    if u16::from(frame.code) == CLOSE_POLICY =>
                {
                    // "token expired: reconnect with a fresh token, ..." -> "token expired"
                    let reason = frame.reason.split(':').next().unwrap_or_default().trim();
                    let reason = if reason.is_empty() {
                        "token revoked"
                    } else {
                        reason
                    };
                    return Err(map_error(
                        &self.client.server,
                        StatusCode::UNAUTHORIZED,
                        Some(reason),
                        None,
                        None,
                    ));
                }
                tungstenite::Message::Close(_) => return Ok(None),
                _ => continue,
            };
            // The reply to a token frame ("token accepted"); a pushed token is adopted.
            if let Ok(value) = serde_json::from_str::<Value>(&text)
                && value.get("type").and_then(Value::as_str) == Some("token")
                && value.get("channel").is_none()
            {
                if let Some(token) = value.get("token").and_then(Value::as_str) {
                    self.client.remember_token(token);
                }
                continue;
            }
            return Ok(Some(Frame::parse(&text)));
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    fn lost(&self, err: tungstenite::Error) -> CliError {
        CliError::Unreachable {
            server: self.client.server.clone(),
            detail: format!("event connection lost: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "http://127.0.0.1:5001";

    fn mapped(status: u16, message: Option<&str>) -> CliError {
        map_error(
            SERVER,
            StatusCode::from_u16(status).unwrap(),
            message,
            Some("abc"),
            None,
        )
    }

    #[test]
    fn token_problems_say_to_log_in_with_exit_code_3() {
        for message in [
            "token expired",
            "invalid token",
            "token revoked",
            "authentication required",
        ] {
            let err = mapped(401, Some(message));
            assert_eq!(err.exit_code().code(), 3);
            assert!(err.to_string().contains("run `core4ctl login`"), "{err}");
        }
        assert_eq!(
            mapped(401, Some("token expired")).to_string(),
            "the token has expired — run `core4ctl login`"
        );
        assert!(
            mapped(401, Some("invalid username or password"))
                .to_string()
                .contains("wrong username or password")
        );
        assert_eq!(mapped(403, Some("forbidden")).exit_code().code(), 3);
    }

    #[test]
    fn rate_limits_say_how_long_to_wait() {
        let err = map_error(
            SERVER,
            StatusCode::TOO_MANY_REQUESTS,
            Some("too many failed logins; try again later"),
            None,
            Some("30"),
        );
        assert_eq!(err.exit_code().code(), 3);
        assert_eq!(
            err.to_string(),
            "too many failed logins — wait 30 s before trying again"
        );
    }

    #[test]
    fn not_found_conflict_and_bad_input_have_their_codes() {
        assert_eq!(
            mapped(404, Some("role [x] not found")).exit_code().code(),
            4
        );
        assert_eq!(
            mapped(404, Some("role [x] not found")).to_string(),
            "role [x] not found"
        );
        assert_eq!(
            mapped(409, Some("update [1] with etag [2] failed"))
                .exit_code()
                .code(),
            5
        );
        assert_eq!(
            mapped(409, Some("name or email exists")).exit_code().code(),
            5
        );
        let err = mapped(400, Some("invalid permission protocol [bla]"));
        assert_eq!(err.exit_code().code(), 2);
        assert!(
            err.to_string()
                .starts_with("invalid permission protocol [bla]")
        );
    }

    #[test]
    fn server_failures_show_the_request_id_not_details() {
        let err = mapped(500, Some("secret stack trace"));
        assert_eq!(err.exit_code().code(), 1);
        assert!(err.to_string().contains("request id abc"), "{err}");
        assert!(!err.to_string().contains("stack trace"));
    }

    #[test]
    fn server_messages_are_sanitised() {
        let err = mapped(404, Some("role [\x1b[31mx] not found"));
        assert!(!err.to_string().contains('\x1b'));
    }

    #[test]
    fn frames_are_told_apart() {
        let event = Frame::parse(
            r#"{"_id":"7","created":"2026-11-27T12:00:00","name":"message","author":"a","channel":"message","data":"hi"}"#,
        );
        let Frame::Event(event) = event else {
            panic!("{event:?}")
        };
        assert_eq!(event.seq(), Some(7));
        assert_eq!(event.data, Value::String("hi".into()));
        assert_eq!(
            Frame::parse(r#"{"type":"send","message_id":"8","message":"OK"}"#),
            Frame::Ack("8".into())
        );
        assert_eq!(
            Frame::parse(
                r#"{"type":"interest","message_id":"9","message":"OK, added interest in channel"}"#
            ),
            Frame::Ack("9".into())
        );
        assert_eq!(
            Frame::parse(r#"{"type":"interest","data":["message"],"message":"processed"}"#),
            Frame::Interest {
                granted: vec!["message".into()],
                denied: vec![]
            }
        );
        assert_eq!(
            Frame::parse(r#"{"type":"gap","after":"41"}"#),
            Frame::Gap("41".into())
        );
        assert_eq!(
            Frame::parse(r#"{"type":"truncated","channel":"logs","first":"42"}"#),
            Frame::Truncated {
                channel: "logs".into(),
                first: "42".into()
            }
        );
        assert_eq!(
            Frame::parse(r#"{"type":"error","kind":"rate_limited","message":"slow\u001b down"}"#),
            Frame::Error {
                kind: Some(ErrorKind::RateLimited),
                message: "slow\\u{1b} down".into()
            }
        );
        // Servers before error kinds, and text that is not JSON.
        assert_eq!(
            Frame::parse(r#"{"type":"error","message":"malformed message"}"#),
            Frame::Error {
                kind: None,
                message: "malformed message".into()
            }
        );
        assert_eq!(
            Frame::parse("error parsing json data"),
            Frame::Error {
                kind: None,
                message: "error parsing json data".into()
            }
        );
        // An event with fields missing is still an event.
        assert!(matches!(
            Frame::parse(r#"{"channel":"message","data":"x"}"#),
            Frame::Event(_)
        ));
    }

    #[test]
    fn event_urls_carry_the_token_and_switch_scheme() {
        let client = ApiClient::new("https://h:1", Some("a.b.c".into()), None).unwrap();
        assert_eq!(
            client.event_url(Some("5")).unwrap().as_str(),
            "wss://h:1/core4/api/v1/event?token=a.b.c&since=5"
        );
        let client = ApiClient::new("http://h:1", None, None).unwrap();
        assert_eq!(
            client.event_url(None).unwrap().as_str(),
            "ws://h:1/core4/api/v1/event"
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = elsewhere.local_addr().unwrap();
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{target}/login\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        });
        let client = ApiClient::new(&format!("http://{addr}"), None, None).unwrap();
        let body = serde_json::json!({"password": "secret"});
        tokio::select! {
            result = client.post::<_, Value>("/login", &body) => assert!(result.is_err()),
            _ = elsewhere.accept() => panic!("the redirect was followed"),
        }
    }

    #[test]
    fn refreshed_tokens_go_to_the_sink_with_the_one_they_replace() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let sink: TokenSink = Box::new(move |previous, token| {
            log.lock()
                .unwrap()
                .push((previous.map(str::to_owned), token.to_owned()));
            Ok(())
        });
        let client = ApiClient::new(SERVER, Some("old".into()), Some(sink)).unwrap();
        client.remember_token("new");
        client.remember_token("new");
        assert_eq!(client.token().as_deref(), Some("new"));
        assert_eq!(
            *seen.lock().unwrap(),
            [(Some("old".to_owned()), "new".to_owned())]
        );
    }
}
