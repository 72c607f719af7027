//! Builds the application: the HTTP listener (bound here first, so tests can use port 0 and a
//! busy port fails the start before anything is created), storage (embedded or external),
//! migrations, secret, the event hub, and last the seed data.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use anyhow::Context;
use poem::{
    Endpoint, EndpointExt, IntoResponse, PathPattern, Request, Response, Route,
    endpoint::make_sync,
    http::{HeaderValue, Method, StatusCode, Uri},
    middleware::{CatchPanic, Cors},
    web::Html,
};
use rand::{Rng, distr::Alphanumeric};
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::{
    api::{self, AppState, BASE},
    auth::{Auth, Hasher},
    embedded_pg::{EmbeddedOptions, EmbeddedPostgres},
    envelope::RequestCtx,
    error::to_envelope_response,
    events::Hub,
    metrics::Metrics,
    settings::Settings,
    storage,
    web::{self, OriginPolicy, ReplyKind, TrustedProxies, tls::Certificates},
};

/// Permissions of the seeded `standard_user` role: log in, profile, info, event socket and
/// history (core4's defaults), chat on `message`, read `system`.
pub const STANDARD_USER_PERMS: &[&str] = &[
    "api://core4.api.v1.request.standard.*",
    "api://core4.api.v1.server.*",
    "api://core4.api.v1.request.store.*/u",
    "event://message/rw",
    "event://system/r",
];

pub struct Application {
    state: AppState,
    listener: tokio::net::TcpListener,
    port: u16,
    embedded: Option<EmbeddedPostgres>,
    /// The TLS certificate, when `[tls]` is configured.
    certificates: Option<Arc<Certificates>>,
    /// Set when this start created the admin with a generated password. Seeding is the last
    /// step of [`Application::build`]: once it is set, nothing can fail before the caller
    /// shows it.
    pub generated_admin_password: Option<String>,
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub async fn connect(url: &str, max: u32) -> anyhow::Result<PgPool> {
    let options = connect_options(url)?;
    match PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.clone())
        .await
    {
        Ok(pool) => Ok(pool),
        // The pool retries until its timeout and then reports only the timeout ("pool timed
        // out while waiting for an open connection"): one direct attempt says why.
        Err(sqlx::Error::PoolTimedOut) => match connect_with(url, &options).await {
            Err(e) => Err(e),
            Ok(conn) => {
                let _ = sqlx::Connection::close(conn).await;
                Err(anyhow::anyhow!(
                    "cannot connect to PostgreSQL at {}: no connection within 5 s",
                    endpoint(url, &options)
                ))
            }
        },
        Err(e) => Err(connect_error(url, &options, e)),
    }
}

/// One connection to `url`, with the same error messages as [`connect`]: for checks that must
/// not see a second connection of their own (a pool opens one while the first is returned).
pub async fn connect_one(url: &str) -> anyhow::Result<sqlx::PgConnection> {
    connect_with(url, &connect_options(url)?).await
}

async fn connect_with(
    url: &str,
    options: &sqlx::postgres::PgConnectOptions,
) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::ConnectOptions;
    match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(connect_error(url, options, e)),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to PostgreSQL at {}: no answer within 5 s",
            endpoint(url, options)
        )),
    }
}

fn connect_options(url: &str) -> anyhow::Result<sqlx::postgres::PgConnectOptions> {
    use std::str::FromStr;
    sqlx::postgres::PgConnectOptions::from_str(url).map_err(|e| {
        let why = match e {
            sqlx::Error::Configuration(cause) => cause.to_string(),
            other => other.to_string(),
        };
        anyhow::anyhow!(
            "{} is not a valid PostgreSQL URL ({why}); e.g. postgres://core4:PASSWORD@db.example.com:5432/core4",
            crate::settings::redact_url(url)
        )
    })
}

/// `host:port` (or the socket) and the URL without its password, for connection errors.
fn endpoint(url: &str, options: &sqlx::postgres::PgConnectOptions) -> String {
    let at = match options.get_socket() {
        Some(dir) => format!("{}/.s.PGSQL.{}", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    format!("{at} ({})", crate::settings::redact_url(url))
}

fn connect_error(
    url: &str,
    options: &sqlx::postgres::PgConnectOptions,
    e: sqlx::Error,
) -> anyhow::Error {
    let why = match &e {
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    };
    anyhow::anyhow!(
        "cannot connect to PostgreSQL at {}: {why}",
        endpoint(url, options)
    )
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Before anything starts: a bad certificate is the operator's to fix first.
        let certificates = match settings.tls_files() {
            Some((cert, key)) => Some(
                Certificates::load(cert, key)
                    .map_err(|e| crate::settings::ConfigError(e.to_string()))?,
            ),
            None => None,
        };
        let listener = bind(settings.listen).map_err(|e| listen_error(settings.listen, &e))?;
        let port = listener.local_addr()?.port();
        let (url, embedded) = match &settings.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let pg = EmbeddedPostgres::start(EmbeddedOptions {
                    data_dir: settings.data_dir.clone(),
                    fsync: settings.embedded_fsync,
                    extra_settings: vec![("max_connections".into(), "200".into())],
                })
                .await?;
                tracing::info!(data_dir = %settings.data_dir.display(), first_start = pg.initialized_now(), "embedded PostgreSQL is up");
                (pg.url("postgres"), Some(pg))
            }
        };
        let pool = connect(&url, settings.db_max_connections).await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("database migration failed")?;

        let secret = match &settings.secret {
            Some(s) => s.clone(),
            None => storage::server::get_or_init(&pool, "token_secret", &random_string(64))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        storage::roles::prepare_search(&pool).await;
        storage::roles::backfill_skeletons(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let hasher = Hasher::new(&settings.argon2).await?;
        let metrics = Metrics::default();
        let auth = Auth::new(pool.clone(), secret.as_bytes(), hasher.clone(), &settings);
        auth.spawn_invalidation_listener();
        let hub = Hub::start(
            pool.clone(),
            auth.clone(),
            settings.events.clone(),
            metrics.clone(),
        )
        .await?;
        let generated_admin_password = seed(&pool, &settings, &hasher).await?;
        let state = AppState {
            pool,
            auth,
            // At most a few pages at once, as many as a quarter of the pool's connections, and
            // two per client address.
            page_builds: Arc::new(web::held::PageBuilds::new(
                (settings.db_max_connections as usize / 4).max(2),
                2,
            )),
            settings: Arc::new(settings),
            hub,
            metrics,
        };
        spawn_housekeeping(state.pool.clone());
        Ok(Self {
            state,
            listener,
            port,
            embedded,
            certificates,
            generated_admin_password,
        })
    }

    /// What SIGHUP reloads; usable while the application runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            certificates: self.certificates.clone(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves (then drains gracefully) or the embedded database dies
    /// (an error: core4d does not serve without storage).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            state,
            listener,
            embedded,
            certificates,
            ..
        } = self;
        let tls = certificates
            .map(|c| c.acceptor())
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let app = app(&state);
        let http = &state.settings.http;
        let timeouts = web::server::Timeouts {
            header_read: Duration::from_secs(http.header_read_timeout_secs),
            idle: Duration::from_secs(http.idle_timeout_secs),
            request: Duration::from_secs(http.request_timeout_secs),
        };
        let limits = web::server::Limits {
            max_connections: http.max_connections,
            max_per_address: http.max_connections_per_address,
            exempt: web::proxy::TrustedProxies::new(&state.settings.trusted_proxies),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let server = web::server::serve(
            listener,
            tls,
            app,
            timeouts,
            limits,
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = stop_rx => {}
                }
                let _ = stopping_tx.send(());
            },
            Duration::from_secs(10),
        );
        // Once no new connections are taken, the hub stops beside the server's drain: it flushes
        // the event writer, then closes sockets with 1001 and event streams with `event: close`.
        // Event streams are requests the drain waits for, so they must end first.
        let hub_stop = async {
            if stopping_rx.await.is_ok() {
                state.hub.shutdown().await;
            }
        };
        let serving = async {
            match &embedded {
                Some(pg) => {
                    tokio::pin!(server);
                    tokio::select! {
                        r = &mut server => r.map_err(anyhow::Error::from),
                        exit = pg.exited() => {
                            let _ = stop_tx.send(());
                            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
                            Err(anyhow::anyhow!("the embedded PostgreSQL stopped unexpectedly: {exit}"))
                        }
                    }
                }
                None => server.await.map_err(anyhow::Error::from),
            }
        };
        let (result, ()) = tokio::join!(serving, hub_stop);
        // A no-op when it ran above (the server can also end without a shutdown signal).
        state.hub.shutdown().await;
        state.pool.close().await;
        if let Some(pg) = embedded
            && let Err(e) = pg.stop().await
        {
            tracing::warn!(error = %e, "stopping the embedded PostgreSQL failed");
        }
        result
    }
}

/// Re-reads what can change without a restart (SIGHUP): the TLS certificate and key. New
/// handshakes get the new certificate; open connections keep theirs.
#[derive(Clone, Debug)]
pub struct Reloader {
    certificates: Option<Arc<Certificates>>,
}

impl Reloader {
    /// On error the running configuration stays as it was.
    pub fn reload(&self) -> anyhow::Result<()> {
        match &self.certificates {
            Some(certificates) => {
                certificates.reload().map_err(anyhow::Error::msg)?;
                tracing::info!("reloaded the TLS certificate");
            }
            None => tracing::info!("nothing to reload: TLS is not configured"),
        }
        Ok(())
    }
}

/// Binds the API listener with TCP_NODELAY, which accepted sockets inherit: without it, small
/// WebSocket frames wait for the peer's delayed ACK (Nagle), adding up to tens of milliseconds.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The start-up error for a listener that cannot be bound, naming the setting to change.
fn listen_error(addr: std::net::SocketAddr, e: &std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another program listens there: stop it, or choose another address with --listen \
             (CORE4_LISTEN, `listen` in the config file)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges: choose another port with --listen (CORE4_LISTEN), \
             or put a proxy in front"
        }
        _ => "choose another address with --listen (CORE4_LISTEN)",
    };
    anyhow::anyhow!("cannot listen on {addr}: {e}; {hint}")
}

/// Creates `standard_user` when missing, and the admin the first time only: when this database
/// never had one. Returns a generated admin password.
async fn seed(
    pool: &PgPool,
    settings: &Settings,
    hasher: &Hasher,
) -> anyhow::Result<Option<String>> {
    let key = crate::domain::RoleName::parse(&settings.admin_username)
        .map_err(|e| anyhow::anyhow!("admin_username: {e}"))?
        .key();
    let created_at = storage::roles::admin_created_at(pool)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut generated = None;
    let hash = match created_at {
        Some(at) => {
            if settings.admin_password.is_some() {
                let exists = storage::roles::exists_by_name(pool, &key)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let command =
                    crate::admin::reset_password_command(settings, settings.admin_username.trim());
                let url_password = settings
                    .database_url
                    .as_deref()
                    .is_some_and(|url| crate::settings::redact_url(url) != url);
                tracing::warn!(
                    "admin_password (CORE4_ADMIN_PASSWORD) is ignored: the admin is created only \
                     when the database is first initialised, which was at {at}{}; to set a \
                     password, run `{command}`{}",
                    if exists {
                        ""
                    } else {
                        " (that user has been deleted since)"
                    },
                    if url_password {
                        " with the database password in place of <redacted>"
                    } else {
                        ""
                    }
                );
            }
            None
        }
        None => {
            let password = match &settings.admin_password {
                Some(p) => p.clone(),
                None => generated.insert(random_string(20)).clone(),
            };
            let (password, short) = crate::domain::Password::configured(&password)
                .map_err(|e| anyhow::anyhow!("admin_password: {e}"))?;
            if short {
                tracing::warn!(
                    "THE ADMIN PASSWORD IS SHORTER THAN {} CHARACTERS: admin_password \
                     (CORE4_ADMIN_PASSWORD) is accepted as configured, but passwords set through \
                     the API need at least that many; change it before exposing core4d",
                    crate::domain::MIN_PASSWORD_CHARS
                );
            }
            Some(
                hasher
                    .hash(&password, None)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
    };
    let created = storage::roles::seed(
        pool,
        settings.admin_username.trim(),
        hash.as_deref(),
        STANDARD_USER_PERMS,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if created {
        tracing::info!(admin = %settings.admin_username, "created the admin user");
    }
    Ok(generated.filter(|_| created))
}

fn spawn_housekeeping(pool: PgPool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            if let Err(e) = storage::tokens::purge_expired(&pool).await {
                tracing::warn!(error = %e, "purging expired revocations failed");
            }
            if let Err(e) = storage::roles::purge_login_sources(&pool).await {
                tracing::warn!(error = %e, "purging old login addresses failed");
            }
        }
    });
}

/// The whole HTTP surface: the API, its spec and Swagger UI, `/metrics`, the legacy login
/// alias, CORS, and the envelope/request-id/logging/security middleware around all of it.
pub fn app(state: &AppState) -> impl Endpoint + use<> {
    let service = api::service(state);
    let spec = api::spec_json(state);
    // `/metrics` labels requests only with these route templates.
    let api_paths: Vec<String> = serde_json::from_str::<serde_json::Value>(&spec)
        .ok()
        .and_then(|v| v["paths"].as_object().map(|p| p.keys().cloned().collect()))
        .unwrap_or_default();
    state
        .metrics
        .register_routes(api_paths.iter().map(|p| format!("{BASE}{p}")).chain([
            "/".to_string(),
            "/metrics".to_string(),
            "/favicon.ico".to_string(),
            format!("{BASE}/openapi.json"),
            format!("{BASE}/docs"),
        ]));
    let allow = Arc::new(AllowTable::from_spec(&spec));
    let metrics = state.metrics.clone();
    let pool = state.pool.clone();
    let metrics_ep = make_sync(move |_| {
        let mut text = metrics.render();
        let (size, idle) = (pool.size(), pool.num_idle() as u32);
        let _ = write!(
            text,
            "# HELP core4d_db_pool_connections PostgreSQL connections of core4d's pool, by state.\n\
             # TYPE core4d_db_pool_connections gauge\n\
             core4d_db_pool_connections{{state=\"idle\"}} {idle}\n\
             core4d_db_pool_connections{{state=\"in_use\"}} {}\n\
             # HELP core4d_db_pool_max_connections The pool's limit (db_max_connections).\n\
             # TYPE core4d_db_pool_max_connections gauge\n\
             core4d_db_pool_max_connections {}\n",
            size.saturating_sub(idle),
            pool.options().get_max_connections()
        );
        let mut resp = text.into_response();
        resp.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        resp
    });
    let route = Route::new()
        .at(
            format!("{BASE}/openapi.json"),
            docs_endpoint(spec, "application/json"),
        )
        .at(
            format!("{BASE}/docs"),
            docs_endpoint(api::docs_page(state), "text/html; charset=utf-8"),
        )
        .nest(BASE, service)
        .at("/metrics", metrics_ep)
        .at(
            "/favicon.ico",
            make_sync(|_| {
                let mut resp = api::FAVICON_SVG.into_response();
                resp.headers_mut()
                    .insert("content-type", HeaderValue::from_static("image/svg+xml"));
                resp
            }),
        )
        .at(
            "/",
            make_sync(|_| {
                Html(format!(
                    "<p>core4d is running. API docs: <a href=\"{BASE}/docs\">{BASE}/docs</a></p>"
                ))
            }),
        );
    // Without `allow_origin`, poem's Cors allows every origin (core4's default `*`) to read
    // replies, never with credentials: the cookie is guarded by `trusted_origins` instead.
    let mut cors = Cors::new();
    if state.settings.allow_origin != "*" {
        cors = cors.allow_origin(state.settings.allow_origin.as_str());
    }
    let cors = cors
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            "authorization",
            "content-type",
            "access-control-allow-origin",
        ])
        .expose_headers(["token"]);
    let layer = Arc::new(Layer {
        metrics: state.metrics.clone(),
        held: web::held::HeldReplies::new(
            state.settings.http.max_held_reply_bytes,
            state.settings.http.max_held_reply_bytes_per_address,
            Some(state.metrics.clone()),
        ),
        origins: OriginPolicy::new(&state.settings.trusted_origins),
        proxies: TrustedProxies::new(&state.settings.trusted_proxies),
        cookie_max_age: state.settings.token_expiration,
    });
    route
        .with(cors)
        .with(CatchPanic::new().with_handler(EnvelopeOnPanic))
        .around(move |ep, req| {
            let layer = layer.clone();
            let allow = allow.clone();
            async move {
                let path = req.uri().path().to_string();
                let mut resp = layer.call(ep, req).await;
                allow.add_header(&path, &mut resp);
                Ok(resp)
            }
        })
}

/// A fixed document (the spec, the Swagger UI page), gzip- or brotli-compressed when the
/// client asks for it: the page is 1.7 MB, mostly Swagger UI's script.
fn docs_endpoint(body: String, content_type: &'static str) -> impl Endpoint + use<> {
    make_sync(move |_| {
        let mut resp = body.clone().into_response();
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static(content_type));
        resp
    })
    .with(poem::middleware::Compression::new())
}

/// The methods each API route answers, for the `Allow` header a 405 must carry (RFC 9110,
/// 15.5.6).
struct AllowTable {
    /// Route templates split into segments (`{id}` matches any one) and their `Allow` value.
    routes: Vec<(Vec<String>, String)>,
}

impl AllowTable {
    fn from_spec(spec: &str) -> Self {
        let spec: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let routes = spec["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, ops)| {
                let mut methods: Vec<String> = ops
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(m, _)| m.to_ascii_uppercase())
                    .collect();
                // poem answers HEAD wherever it answers GET.
                if methods.iter().any(|m| m == "GET") {
                    methods.push("HEAD".into());
                }
                let segments = format!("{BASE}{path}")
                    .split('/')
                    .map(str::to_string)
                    .collect();
                (segments, methods.join(", "))
            })
            .collect();
        Self { routes }
    }

    /// The `Allow` value for `path`: of the matching templates, the one with the most literal
    /// segments, as the router prefers them.
    fn allow(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.routes
            .iter()
            .filter(|(template, _)| {
                template.len() == segments.len()
                    && template
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| t.starts_with('{') || t == s)
            })
            .max_by_key(|(template, _)| template.iter().filter(|t| !t.starts_with('{')).count())
            .map(|(_, allow)| allow.as_str())
    }

    fn add_header(&self, path: &str, resp: &mut Response) {
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED
            && let Some(allow) = self.allow(path)
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            resp.headers_mut().insert(poem::http::header::ALLOW, value);
        }
    }
}

/// A panicking handler answers with the 500 envelope (its cause logged), like any other bug.
#[derive(Clone)]
struct EnvelopeOnPanic;

impl poem::middleware::PanicHandler for EnvelopeOnPanic {
    type Response = Response;

    fn get_response(&self, _panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
        crate::error::ApiError::internal(anyhow::anyhow!("a request handler panicked"))
            .into_response()
    }
}

/// Largest request body accepted (every body of the API is a small JSON object).
pub const MAX_BODY_BYTES: u64 = 256 * 1024;

/// Refuses a declared body over [`MAX_BODY_BYTES`] with 413, and caps a chunked one so that
/// reading it can never buffer more (its parse then fails with a 400).
fn limit_body(req: &mut Request) -> Result<(), crate::error::ApiError> {
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY_BYTES => Err(crate::error::ApiError::PayloadTooLarge(format!(
            "the request body is {n} bytes; the limit is {MAX_BODY_BYTES}"
        ))),
        Some(_) => Ok(()),
        // The hot path (GET, the WebSocket upgrade included) reads no body: leave it alone.
        None if matches!(*req.method(), Method::GET | Method::HEAD) => Ok(()),
        None => {
            use tokio::io::AsyncReadExt;
            let body = req.take_body();
            req.set_body(poem::Body::from_async_read(
                body.into_async_read().take(MAX_BODY_BYTES + 1),
            ));
            Ok(())
        }
    }
}

/// The outermost middleware: legacy alias, request id and envelope, origin check, body limit,
/// refreshed tokens, security headers, metrics and the request log.
struct Layer {
    metrics: Metrics,
    held: Arc<web::held::HeldReplies>,
    origins: OriginPolicy,
    proxies: TrustedProxies,
    cookie_max_age: u64,
}

impl Layer {
    async fn call<E: Endpoint>(&self, ep: Arc<E>, mut req: Request) -> Response {
        if req.uri().path() == "/core4/api/login" {
            let rewritten = format!(
                "{BASE}/login{}",
                req.uri()
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default()
            );
            if let Ok(uri) = rewritten.parse::<Uri>() {
                *req.uri_mut() = uri;
            }
        }
        // core4 read a JSON object body whatever the Content-Type said; a body sent with none
        // (`requests.post(url, data=json.dumps(...))`) is taken as JSON. Such a request needs no
        // CORS preflight, which is why the origin check below guards cookie-authenticated ones.
        if matches!(*req.method(), Method::POST | Method::PUT)
            && !req.headers().contains_key(poem::http::header::CONTENT_TYPE)
        {
            req.headers_mut().insert(
                poem::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        // Who is asking, resolved once: handlers take it as a `Client` parameter.
        let client = self.proxies.resolve(&req);
        req.extensions_mut().insert(client.clone());
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let started = std::time::Instant::now();
        let ctx = RequestCtx::new();
        let request_id = ctx.id.clone();
        let (mut resp, refreshed) = ctx
            .scope(async {
                if let Err(refused) = self.origins.check(&req, &client) {
                    return refused.into_response();
                }
                if let Err(too_large) = limit_body(&mut req) {
                    return too_large.into_response();
                }
                match ep.call(req).await {
                    Ok(resp) => resp.into_response(),
                    Err(err) => {
                        let pattern = err.data::<PathPattern>().cloned();
                        let mut resp = to_envelope_response(err);
                        if let Some(pattern) = pattern {
                            resp.set_data(pattern);
                        }
                        resp
                    }
                }
            })
            .await;
        if let Err(refused) = self.held.admit(client.addr, &mut resp).await {
            let message = match refused {
                web::held::Refusal::Client => {
                    "too many large replies are waiting for this client to read them: read them, or retry in a few seconds"
                }
                web::held::Refusal::Everyone => {
                    "too many large replies are waiting for their clients to read them: retry in a few seconds"
                }
            };
            tracing::warn!(client = %client.addr, ?refused, "a large reply refused: held replies over budget");
            let mut busy = crate::error::ApiError::Busy {
                message: message.into(),
                retry_after: 5,
            }
            .into_response();
            // What CORS said of the reply holds for its refusal: a page can read why.
            for (name, value) in resp.headers() {
                if name.as_str().starts_with("access-control-") || name == "vary" {
                    busy.headers_mut().append(name.clone(), value.clone());
                }
            }
            resp = busy;
        }
        if let Some(token) = refreshed
            && let Ok(value) = HeaderValue::from_str(&token)
        {
            resp.headers_mut().insert("token", value);
            // Browsers authenticate with the cookie: renew it together with the token.
            if let Ok(cookie) =
                HeaderValue::from_str(&web::token_cookie(&token, self.cookie_max_age, &client))
            {
                resp.headers_mut().append("set-cookie", cookie);
            }
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-request-id", value);
        }
        let kind = if path == format!("{BASE}/openapi.json") {
            ReplyKind::Spec
        } else if path.starts_with(&format!("{BASE}/docs")) {
            ReplyKind::DocsPage
        } else {
            ReplyKind::Api
        };
        web::set_security_headers(&mut resp, kind);
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            self.metrics
                .http_latency
                .observe(started.elapsed().as_micros() as u64);
        }
        let route = resp.data::<PathPattern>().map(|p| p.0.clone());
        self.metrics
            .record_http(&method, route.as_deref(), status.as_u16());
        if status != StatusCode::SWITCHING_PROTOCOLS {
            tracing::info!(
                request_id,
                client = %client.addr,
                method,
                path,
                status = status.as_u16(),
                micros = started.elapsed().as_micros() as u64,
                "request"
            );
        }
        resp
    }
}
