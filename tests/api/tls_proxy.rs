//! TLS on core4d's own listener and core4d behind trusted proxies, with real parts: a
//! self-signed certificate made by openssl, HTTPS and WSS clients, core4's unchanged `chat.py
//! --ssl`, a certificate reload, forwarded client addresses from trusted and untrusted peers,
//! and core4d behind a real nginx running the committed `deploy/nginx.conf`.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use core4_tests::{ADMIN_PASSWORD, fresh_database, spawn_app_with, test_settings};
use core4d::{
    settings::{LoginLimitSettings, Settings},
    startup::{Application, Reloader},
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::mpsc,
};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// The hang guard of every wait: a test only fails on it when the awaited thing never comes.
const WAIT: Duration = Duration::from_secs(30);

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("core4-tls-")
        .tempdir()
        .expect("temp dir")
}

/// An HTTP client that trusts only `ca` (if given) and connects from `127.0.0.<from>`.
fn client(ca: Option<&Path>, from: Option<u8>) -> reqwest::Client {
    install_crypto();
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("read the certificate");
        builder = builder.tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("PEM")]);
    }
    if let Some(last) = from {
        builder = builder.local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)));
    }
    builder.build().expect("client")
}

/// core4d serving HTTPS and WSS, with the handle SIGHUP would use.
struct TlsApp {
    port: u16,
    reloader: Reloader,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TlsApp {
    async fn spawn(cert: &Path, key: &Path) -> Self {
        install_crypto();
        let mut settings = test_settings(&fresh_database().await);
        settings.tls.cert_file = Some(cert.to_path_buf());
        settings.tls.key_file = Some(key.to_path_buf());
        let app = Application::build(settings).await.expect("core4d starts");
        let (port, reloader) = (app.port(), app.reloader());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            port,
            reloader,
            _stop: stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/core4/api/v1{path}", self.port)
    }
}

async fn login(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> (u16, Value, String) {
    let resp = client
        .get(url)
        .query(&[("username", user), ("password", password)])
        .send()
        .await
        .expect("login request");
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, resp.json().await.expect("login JSON"), cookie)
}

fn token_of(body: &Value) -> String {
    body["data"]["token"].as_str().expect("token").to_string()
}

fn is_secure(cookie: &str) -> bool {
    cookie.split(';').any(|part| part.trim() == "Secure")
}

async fn create_user(client: &reqwest::Client, base: &str, admin: &str, name: &str, pw: &str) {
    let resp = client
        .post(format!("{base}/roles"))
        .bearer_auth(admin)
        .json(
            &json!({"name": name, "email": format!("{name}@example.com"), "password": pw,
                      "role": ["standard_user"]}),
        )
        .send()
        .await
        .expect("create user");
    assert_eq!(resp.status(), 200, "creating {name}");
}

type Wss = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `wss://` (trusting only `ca`) to the event socket.
async fn wss(host: &str, token: &str, ca: &Path) -> Wss {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read the certificate");
    for der in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(der.expect("PEM")).expect("a root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let url = format!("wss://{host}/core4/api/v1/event?token={token}");
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        None,
        false,
        Some(Connector::Rustls(Arc::new(config))),
    );
    let (ws, resp) = tokio::time::timeout(WAIT, connect)
        .await
        .expect("hang guard")
        .expect("wss connects");
    assert_eq!(resp.status(), 101);
    ws
}

async fn send(ws: &mut Wss, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send a frame");
}

/// The next frame matching `pred`, skipping others.
async fn recv_until(ws: &mut Wss, pred: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                    if pred(&frame) {
                        return frame;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("hang guard: the frame never came")
}

async fn interest(ws: &mut Wss) {
    send(ws, json!({"type": "interest", "data": ["message"]})).await;
    recv_until(ws, |f| f["type"] == "interest").await;
}

/// Sends `text` on `message` from `from` and waits for `to` to receive it.
async fn chat(from: &mut Wss, to: &mut Wss, author: &str, text: &str) {
    send(
        from,
        json!({"type": "message", "channel": "message", "text": text}),
    )
    .await;
    let ack = recv_until(from, |f| f["type"] == "send").await;
    assert_eq!(ack["message"], "OK", "{ack}");
    let event = recv_until(to, |f| f["data"] == text).await;
    assert_eq!(event["author"], author, "{event}");
}

#[tokio::test]
async fn https_login_sets_a_secure_cookie_and_two_users_chat_over_wss() {
    let dir = temp_dir();
    let (cert, key) = core4_tests::self_signed_cert(dir.path(), "server");
    let app = TlsApp::spawn(&cert, &key).await;
    let https = client(Some(&cert), None);

    let (status, body, cookie) = login(&https, &app.url("/login"), "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        is_secure(&cookie),
        "an HTTPS login cookie is Secure: {cookie}"
    );
    let admin = token_of(&body);
    create_user(&https, &app.url(""), &admin, "bob", "bob-secret-1").await;
    let (_, body, _) = login(&https, &app.url("/login"), "bob", "bob-secret-1").await;
    let bob = token_of(&body);

    let host = format!("127.0.0.1:{}", app.port);
    let mut admin_ws = wss(&host, &admin, &cert).await;
    let mut bob_ws = wss(&host, &bob, &cert).await;
    interest(&mut admin_ws).await;
    interest(&mut bob_ws).await;
    chat(&mut bob_ws, &mut admin_ws, "bob", "hello over wss").await;
    chat(&mut admin_ws, &mut bob_ws, "admin", "hello bob").await;

    // The listener speaks only TLS: plain HTTP gets no reply, and no hang.
    let plain = tokio::time::timeout(
        WAIT,
        client(None, None)
            .get(format!("http://{host}/core4/api/v1/health"))
            .send(),
    )
    .await
    .expect("hang guard");
    assert!(plain.is_err(), "plain HTTP was served on the TLS port");
    // A client that does not trust the certificate is refused at the handshake.
    let untrusting = client(
        Some(&core4_tests::self_signed_cert(dir.path(), "other").0),
        None,
    );
    assert!(untrusting.get(app.url("/health")).send().await.is_err());
}

/// A running `chat.py`: its stdout lines and its stdin.
struct ChatPy {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
}

impl ChatPy {
    fn spawn(
        script: &Path,
        host: &str,
        user: &str,
        password: &str,
        cert: &Path,
        dir: &Path,
    ) -> Self {
        let stderr = dir.join(format!("{user}.stderr"));
        // chat.py's command line: `chat HOSTNAME USERNAME [PASSWORD] [--ssl]`.
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .args([host, user, password, "--ssl"])
            .env("SSL_CERT_FILE", cert)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    async fn expect_line(&mut self, wanted: &str) {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                let hit = line.trim() == wanted;
                self.seen.push(line);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            found == Ok(true),
            "chat.py never printed `{wanted}`; it printed {:?}; stderr:\n{}",
            self.seen,
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    async fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to chat.py");
        stdin.flush().await.expect("flush");
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// core4's own `chat.py`, unchanged, beside this repository (`../shared/core4/chat.py`).
fn chat_py() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/core4/chat.py");
    assert!(
        script.is_file(),
        "this test runs core4's chat.py, expected at {} (../shared/core4/chat.py beside the \
         repository)",
        script.display()
    );
    let probe = std::process::Command::new("python3")
        .args(["-c", "import docopt, requests, websocket"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "chat.py needs `python3 -m pip install docopt requests websocket-client`"
    );
    script
}

#[tokio::test]
async fn core4s_chat_py_chats_between_two_users_over_ssl() {
    let script = chat_py();
    let dir = temp_dir();
    let (cert, key) = core4_tests::self_signed_cert(dir.path(), "server");
    let app = TlsApp::spawn(&cert, &key).await;
    let https = client(Some(&cert), None);
    let (_, body, _) = login(&https, &app.url("/login"), "admin", ADMIN_PASSWORD).await;
    create_user(
        &https,
        &app.url(""),
        &token_of(&body),
        "bob",
        "bob-secret-1",
    )
    .await;

    let host = format!("127.0.0.1:{}", app.port);
    let mut admin = ChatPy::spawn(&script, &host, "admin", ADMIN_PASSWORD, &cert, dir.path());
    admin.expect_line("> web socket connected").await;
    // chat.py prints every message of its channels, its own too: seeing its own line proves
    // its interest frame was processed, so nothing sent afterwards can be missed.
    admin.say("admin is here").await;
    admin.expect_line("admin > admin is here").await;
    let mut bob = ChatPy::spawn(&script, &host, "bob", "bob-secret-1", &cert, dir.path());
    bob.expect_line("> web socket connected").await;
    bob.say("hello from bob").await;
    bob.expect_line("bob > hello from bob").await;
    admin.expect_line("bob > hello from bob").await;
    admin.say("welcome bob").await;
    bob.expect_line("admin > welcome bob").await;
    admin.stop().await;
    bob.stop().await;
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_handshakes_and_keeps_open_sockets() {
    let dir = temp_dir();
    let (one_cert, one_key) = core4_tests::self_signed_cert(dir.path(), "one");
    let (two_cert, two_key) = core4_tests::self_signed_cert(dir.path(), "two");
    let (live_cert, live_key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&one_cert, &live_cert).unwrap();
    std::fs::copy(&one_key, &live_key).unwrap();
    let app = TlsApp::spawn(&live_cert, &live_key).await;

    let (status, body, _) = login(
        &client(Some(&one_cert), None),
        &app.url("/login"),
        "admin",
        ADMIN_PASSWORD,
    )
    .await;
    assert_eq!(status, 200);
    let token = token_of(&body);
    assert!(
        client(Some(&two_cert), None)
            .get(app.url("/health"))
            .send()
            .await
            .is_err(),
        "the second certificate is not served yet"
    );
    let host = format!("127.0.0.1:{}", app.port);
    let mut open = wss(&host, &token, &one_cert).await;
    let mut other = wss(&host, &token, &one_cert).await;
    interest(&mut open).await;
    interest(&mut other).await;

    std::fs::copy(&two_cert, &live_cert).unwrap();
    std::fs::copy(&two_key, &live_key).unwrap();
    app.reloader.reload().expect("reload");

    let resp = client(Some(&two_cert), None)
        .get(app.url("/health"))
        .send()
        .await
        .expect("a new handshake gets the new certificate");
    assert_eq!(resp.status(), 200);
    assert!(
        client(Some(&one_cert), None)
            .get(app.url("/health"))
            .send()
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    // Sockets opened before the reload keep working both ways.
    chat(
        &mut open,
        &mut other,
        "admin",
        "still here after the reload",
    )
    .await;
    chat(&mut other, &mut open, "admin", "and back").await;

    // A broken file fails the reload and keeps the certificate in use.
    std::fs::write(&live_key, "not a key").unwrap();
    let err = app
        .reloader
        .reload()
        .expect_err("a bad key fails the reload");
    assert!(err.to_string().contains("tls.key_file"), "{err}");
    let resp = client(Some(&two_cert), None)
        .get(app.url("/health"))
        .send()
        .await
        .expect("still served");
    assert_eq!(resp.status(), 200);
}

/// Settings that trust 127.0.0.1 as a proxy and allow 3 failed logins per client.
fn proxied_settings(database_url: &str) -> Settings {
    let mut settings = test_settings(database_url);
    settings.trusted_proxies = vec!["127.0.0.1/32".into()];
    settings.login_limit = LoginLimitSettings {
        max_failures: 3,
        max_failures_per_address: 3,
        max_failures_per_user: 1000,
        window: 600,
    };
    settings
}

/// Logs in as admin through `client` with these request headers; returns (status, cookie).
async fn login_with(
    client: &reqwest::Client,
    url: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = client
        .get(url)
        .query(&[("username", "admin"), ("password", password)]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("login request");
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (resp.status().as_u16(), cookie)
}

#[tokio::test]
async fn forwarded_clients_of_a_trusted_proxy_have_their_own_login_limits_and_others_headers_are_ignored()
 {
    let app = spawn_app_with(proxied_settings(&fresh_database().await)).await;
    let url = app.url("/login");
    let proxy = client(None, Some(1));
    let xff = |addr: &'static str| [("x-forwarded-for", addr)];

    // The proxy's client 198.51.100.1 spends its budget ...
    for _ in 0..3 {
        assert_eq!(
            login_with(&proxy, &url, "wrong", &xff("198.51.100.1"))
                .await
                .0,
            401
        );
    }
    assert_eq!(
        login_with(&proxy, &url, "wrong", &xff("198.51.100.1"))
            .await
            .0,
        429
    );
    // ... also when it claims another address itself: the proxy appended the real one.
    let spoofed = [("x-forwarded-for", "198.51.100.2, 198.51.100.1")];
    assert_eq!(
        login_with(&proxy, &url, ADMIN_PASSWORD, &spoofed).await.0,
        429
    );
    // Another client behind the same proxy is not limited; https at the proxy makes it Secure.
    let (status, cookie) = login_with(
        &proxy,
        &url,
        ADMIN_PASSWORD,
        &[
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(is_secure(&cookie), "{cookie}");
    let forwarded = [("forwarded", "for=198.51.100.3;proto=http")];
    let (status, cookie) = login_with(&proxy, &url, ADMIN_PASSWORD, &forwarded).await;
    assert_eq!(status, 200);
    assert!(!is_secure(&cookie), "{cookie}");

    // 127.0.0.2 is no proxy: whatever it claims, it is limited as itself and never Secure.
    let stranger = client(None, Some(2));
    let claims = [
        ("x-forwarded-for", "203.0.113.1"),
        ("x-forwarded-proto", "https"),
    ];
    let (status, cookie) = login_with(&stranger, &url, ADMIN_PASSWORD, &claims).await;
    assert_eq!(status, 200);
    assert!(!is_secure(&cookie), "{cookie}");
    for last in ["203.0.113.2", "203.0.113.3", "203.0.113.4"] {
        let status = login_with(&stranger, &url, "wrong", &[("x-forwarded-for", last)])
            .await
            .0;
        assert_eq!(status, 401);
    }
    let status = login_with(&stranger, &url, ADMIN_PASSWORD, &xff("203.0.113.5"))
        .await
        .0;
    assert_eq!(
        status, 429,
        "the headers of an untrusted peer changed its limiter key"
    );
}

/// A free TCP port on 127.0.0.1 (bound and released; nginx takes it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// nginx, run in the foreground from a config in a temp dir; stopped when dropped.
struct Nginx {
    child: tokio::process::Child,
    dir: PathBuf,
}

impl Nginx {
    /// Runs `deploy/nginx.conf` with its ports and certificate paths replaced.
    async fn start(dir: &Path, upstream_port: u16, cert: &Path, key: &Path) -> (Self, u16) {
        let probe = std::process::Command::new("nginx").arg("-v").output();
        assert!(
            probe.is_ok_and(|o| o.status.success()),
            "this test runs a real nginx: apt-get install nginx"
        );
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx.conf"),
        )
        .expect("deploy/nginx.conf");
        let (port, redirect_port) = (free_port(), free_port());
        let mut site = example;
        for (from, to) in [
            (
                "server 127.0.0.1:5001;",
                format!("server 127.0.0.1:{upstream_port};"),
            ),
            ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
            ("listen 80;", format!("listen 127.0.0.1:{redirect_port};")),
            ("/etc/ssl/core4/fullchain.pem", cert.display().to_string()),
            ("/etc/ssl/core4/privkey.pem", key.display().to_string()),
        ] {
            assert_eq!(
                site.matches(from).count(),
                1,
                "deploy/nginx.conf changed: `{from}` should appear once"
            );
            site = site.replace(from, &to);
        }
        let d = dir.display();
        std::fs::write(dir.join("core4d.conf"), site).unwrap();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 include {d}/core4d.conf;\n}}\n"
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Self {
            child,
            dir: dir.to_path_buf(),
        };
        nginx.wait_listening(port).await;
        (nginx, port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    async fn wait_listening(&mut self, port: u16) {
        let ready = tokio::time::timeout(WAIT, async {
            loop {
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return Ok(());
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(status);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(status)) => panic!("nginx exited ({status}):\n{}", self.log()),
            Err(_) => panic!("nginx did not listen:\n{}", self.log()),
        }
    }

    /// Fast shutdown: SIGTERM to the master (by its pid), which stops its workers. A SIGKILL
    /// would leave the workers running.
    fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Stops nginx and waits for it.
    async fn stop(mut self) {
        self.terminate();
        let exited = tokio::time::timeout(WAIT, self.child.wait()).await;
        assert!(exited.is_ok(), "nginx did not stop:\n{}", self.log());
    }
}

/// Also when a test fails half-way.
impl Drop for Nginx {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[tokio::test]
async fn behind_a_real_nginx_logins_websockets_and_limits_see_the_forwarded_client() {
    let dir = temp_dir();
    // nginx's workers may run as another user: let them into the config directory.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (cert, key) = core4_tests::self_signed_cert(dir.path(), "proxy");
    let app = spawn_app_with(proxied_settings(&fresh_database().await)).await;
    let (nginx, port) = Nginx::start(dir.path(), app.port, &cert, &key).await;
    let base = format!("https://127.0.0.1:{port}/core4/api/v1");
    let url = format!("{base}/login");

    // 127.0.0.2 guesses until it is limited; 127.0.0.3, through the same nginx, is not.
    let guesser = client(Some(&cert), Some(2));
    for _ in 0..3 {
        assert_eq!(login_with(&guesser, &url, "wrong", &[]).await.0, 401);
    }
    assert_eq!(login_with(&guesser, &url, ADMIN_PASSWORD, &[]).await.0, 429);
    let user = client(Some(&cert), Some(3));
    let (status, body, cookie) = login(&user, &url, "admin", ADMIN_PASSWORD).await;
    assert_eq!(
        status, 200,
        "another client behind nginx is limited too: {body}"
    );
    assert!(
        is_secure(&cookie),
        "https at nginx makes the cookie Secure: {cookie}"
    );
    let token = token_of(&body);

    // The event WebSocket through nginx.
    let host = format!("127.0.0.1:{port}");
    let mut one = wss(&host, &token, &cert).await;
    let mut two = wss(&host, &token, &cert).await;
    interest(&mut one).await;
    interest(&mut two).await;
    chat(&mut one, &mut two, "admin", "through nginx").await;

    // core4d's own origin is nginx's https origin: a cookie write from it passes, one from
    // the http origin of the same host does not.
    let cookie_pair = cookie.split(';').next().unwrap().to_string();
    let logout_from = |origin: String| {
        user.post(format!("{base}/logout"))
            .header("cookie", cookie_pair.clone())
            .header("origin", origin)
            .send()
    };
    let refused = logout_from(format!("http://{host}")).await.unwrap();
    assert_eq!(refused.status(), 403);
    let accepted = logout_from(format!("https://{host}")).await.unwrap();
    assert_eq!(accepted.status(), 200);

    // /metrics stays inside: core4d serves it, nginx does not pass it on.
    let direct = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    let public = user
        .get(format!("https://{host}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    nginx.stop().await;
}
