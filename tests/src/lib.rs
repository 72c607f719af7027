//! Test support: one private PostgreSQL cluster per test run, one database and one core4d per
//! test, and small HTTP/WebSocket helpers. Also hosts the load generator (`src/bin/loadgen.rs`).

use std::{sync::OnceLock, time::Duration};

use core4d::{
    embedded_pg::{EmbeddedOptions, EmbeddedPostgres},
    settings::{Argon2Settings, Settings},
    startup::Application,
};
use serde_json::Value;

pub const ADMIN_PASSWORD: &str = "hans-admin-pw";

struct Cluster {
    /// `url(db)` of the running cluster, with `c4placeholderdb` standing for the database name.
    url_template: String,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The cluster lives in its own thread and runtime for the whole test process: tests each run in
/// a runtime of their own that ends with the test. A watchdog process stops it (and removes its
/// files) when the test process exits, however it exits.
fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let dir = std::path::PathBuf::from(format!("{base}/core4-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test cluster dir");
        let (tx, rx) = std::sync::mpsc::channel();
        let data_dir = dir.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let pg = EmbeddedPostgres::start(EmbeddedOptions {
                    data_dir,
                    fsync: false,
                    extra_settings: vec![("max_connections".into(), "400".into()), ("shared_buffers".into(), "64MB".into()), ("dynamic_shared_memory_type".into(), "mmap".into())],
                })
                .await;
                match pg {
                    Ok(pg) => {
                        let _ = tx.send(Ok((pg.url("c4placeholderdb"), pg.pid())));
                        std::future::pending::<()>().await;
                        drop(pg);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        let (url_template, pid) = rx.recv().expect("cluster thread").unwrap_or_else(|e| panic!("test PostgreSQL: {e}"));
        // SIGQUIT is PostgreSQL's immediate shutdown; then the files go.
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.3; done; kill -QUIT {pid} 2>/dev/null; sleep 1; rm -rf '{dir}'",
            me = std::process::id(),
            dir = dir.display()
        );
        let _ = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        Cluster { url_template }
    })
}

/// A URL of database `db` on the test cluster.
pub fn db_url(db: &str) -> String {
    cluster().url_template.replace("c4placeholderdb", db)
}

/// Creates a fresh, empty database and returns its URL.
pub async fn fresh_database() -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = core4d::startup::connect(&db_url("postgres"), 1)
        .await
        .expect("connect to the test cluster");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    db_url(&name)
}

/// Settings for a test core4d: cheap argon2 (set through configuration, as an operator could),
/// a known admin password, port 0.
pub fn test_settings(database_url: &str) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: Some(database_url.to_string()),
        db_max_connections: 10,
        admin_password: Some(ADMIN_PASSWORD.into()),
        argon2: Argon2Settings {
            m_cost: 1024,
            t_cost: 1,
            p_cost: 1,
            ..Argon2Settings::default()
        },
        ..Settings::default()
    }
}

/// A running core4d on its own database.
pub struct TestApp {
    pub port: u16,
    pub address: String,
    pub database_url: String,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

fn init_once() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("TEST_LOG").is_some() {
            core4d::telemetry::init("text");
        }
    });
}

/// A core4d on a fresh database.
pub async fn spawn_app() -> TestApp {
    let url = fresh_database().await;
    spawn_app_with(test_settings(&url)).await
}

/// A core4d with these settings (e.g. a second instance on the same database).
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    init_once();
    let database_url = settings.database_url.clone().unwrap_or_default();
    let app = Application::build(settings).await.expect("core4d starts");
    let port = app.port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        port,
        address: format!("http://127.0.0.1:{port}"),
        database_url,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}/core4/api/v1{path}", self.address)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/core4/api/v1/event?token={token}",
            self.port
        )
    }

    /// Stops this core4d gracefully and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => tokio::time::timeout(Duration::from_secs(20), h).await??,
            None => Ok(()),
        }
    }

    /// Logs in with a password; panics unless it succeeds.
    pub async fn login(&self, user: &str, password: &str) -> String {
        let resp = self
            .client
            .get(self.url("/login"))
            .query(&[("username", user), ("password", password)])
            .send()
            .await
            .expect("login request");
        assert_eq!(resp.status(), 200, "login of {user} failed");
        let body: Value = resp.json().await.expect("login json");
        body["data"]["token"].as_str().expect("token").to_string()
    }

    /// `/metrics` as text (no login needed).
    pub async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("metrics request");
        assert_eq!(resp.status(), 200, "/metrics");
        resp.text().await.expect("metrics text")
    }

    /// The OpenAPI document core4d serves (no login needed).
    pub async fn spec(&self) -> Value {
        self.client
            .get(self.url("/openapi.json"))
            .send()
            .await
            .expect("spec request")
            .json()
            .await
            .expect("spec JSON")
    }

    pub async fn admin_token(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// Sends a request with a Bearer token and returns (status, JSON body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, json)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// Creates a user `name` (password `very secret`, email `<name>@example.com`) with these
    /// permissions and roles; returns its id.
    pub async fn create_user_with(
        &self,
        admin: &str,
        name: &str,
        perm: &[&str],
        role: &[&str],
    ) -> String {
        let (status, body) = self
            .post(
                "/roles",
                admin,
                serde_json::json!({"name": name, "email": format!("{name}@example.com"),
                    "password": "very secret", "perm": perm, "role": role}),
            )
            .await;
        assert_eq!(status, 200, "creating {name}: {body}");
        body["data"]["_id"].as_str().expect("id").to_string()
    }

    /// Creates a user holding `standard_user` and returns (id, token).
    pub async fn create_user(&self, admin: &str, name: &str, password: &str) -> (String, String) {
        let (status, body) = self
            .post(
                "/roles",
                admin,
                serde_json::json!({"name": name, "email": format!("{name}@example.com"), "password": password, "role": ["standard_user"]}),
            )
            .await;
        assert_eq!(status, 200, "creating {name}: {body}");
        let id = body["data"]["_id"].as_str().expect("id").to_string();
        (id, self.login(name, password).await)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts the core4 envelope around an error and returns its `error` text.
pub fn error_text(body: &Value, status: u16) -> String {
    assert_eq!(body["code"], status, "{body}");
    assert!(
        body["_id"].as_str().is_some_and(|id| id.len() == 24),
        "{body}"
    );
    assert!(body.get("data").is_none(), "{body}");
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text: {body}"))
        .to_string()
}

/// A fresh self-signed leaf certificate and key for 127.0.0.1 in `dir` (`<name>.crt`,
/// `<name>.key`), made with openssl as the README says.
pub fn self_signed_cert(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // A leaf, not a CA: rustls (core4ctl) refuses a CA certificate as a server's own.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Runs one of the Python clients in `tests/compat/` against `app` with the admin password, after
/// checking that the Python `modules` it needs are installed; returns its stdout, panicking with
/// both outputs when it fails.
pub async fn run_python_client(app: &TestApp, script: &str, modules: &str) -> String {
    let probe = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "this test runs a Python client: install what `import {modules}` needs with pip \
         (requests, websocket-client)"
    );
    let script = format!("{}/compat/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .args([
            script.as_str(),
            &format!("127.0.0.1:{}", app.port),
            ADMIN_PASSWORD,
        ])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
