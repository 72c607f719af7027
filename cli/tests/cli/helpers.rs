//! Spawning core4d and running core4ctl as a child process.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use core4d::{
    settings::{Argon2Settings, Settings},
    startup::Application,
};
use serde_json::Value;

pub const ADMIN: &str = "admin";
pub use core4_tests::ADMIN_PASSWORD;

/// A core4d on its own database, served from its own thread and runtime so that it can be
/// stopped and started again on the same port, as a restarted daemon would be.
pub struct TestServer {
    pub url: String,
    pub port: u16,
    settings: Settings,
    running: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestServer {
    pub fn spawn() -> Self {
        Self::spawn_with(|_| {})
    }

    pub fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let database_url = runtime.block_on(core4_tests::fresh_database());
        let mut settings = core4_tests::test_settings(&database_url);
        settings.db_max_connections = 5;
        settings.argon2 = Argon2Settings {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
            ..Argon2Settings::default()
        };
        tweak(&mut settings);
        let mut server = Self {
            url: String::new(),
            port: 0,
            settings,
            running: None,
        };
        server.start();
        server
    }

    pub fn start(&mut self) {
        assert!(self.running.is_none(), "already running");
        let settings = self.settings.clone();
        let (port_tx, port_rx) = mpsc::channel::<Result<u16, String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = match Application::build(settings).await {
                    Ok(app) => app,
                    Err(e) => {
                        let _ = port_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                let _ = port_tx.send(Ok(app.port()));
                if let Err(e) = app
                    .run_until_stopped(async move {
                        let _ = stop_rx.await;
                    })
                    .await
                {
                    eprintln!("core4d stopped with an error: {e:#}");
                }
            });
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("core4d did not start in time")
            .unwrap_or_else(|e| panic!("core4d failed to start: {e}"));
        self.port = port;
        self.url = format!("http://127.0.0.1:{port}");
        // A restart comes back on the same port, as a restarted daemon would.
        self.settings.listen = ([127, 0, 0, 1], port).into();
        self.running = Some((stop_tx, thread));
    }

    /// Another core4d on this one's database (a second instance of the same deployment).
    pub fn another_instance(&self) -> Self {
        let mut settings = self.settings.clone();
        settings.listen = ([127, 0, 0, 1], 0).into();
        let mut server = Self {
            url: String::new(),
            port: 0,
            settings,
            running: None,
        };
        server.start();
        server
    }

    /// Runs SQL on this core4d's database, e.g. to plant data the API would not take.
    pub fn execute_sql(&self, sql: &'static str) {
        let url = self.settings.database_url.clone().expect("a database URL");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pool = core4d::startup::connect(&url, 1).await.expect("connect");
            sqlx::raw_sql(sql).execute(&pool).await.expect("SQL runs");
            pool.close().await;
        });
    }

    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a finished core4ctl run left behind.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(self.code, 0, "core4ctl failed: {self:#?}");
        self
    }

    #[track_caller]
    pub fn failure(self, code: i32, stderr_contains: &str) -> Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        assert!(
            self.stderr.contains(stderr_contains),
            "stderr lacks {stderr_contains:?}: {self:#?}"
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// One operator: a home directory with its own core4ctl config.
pub struct Cli {
    pub home: tempfile::TempDir,
}

impl Cli {
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.home.path().join("config/core4ctl")
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_dir().join("config.json")
    }

    pub fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.config_path()).expect("config file"))
            .expect("config JSON")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.with_home(Command::new(env!("CARGO_BIN_EXE_core4ctl")), args)
    }

    /// core4ctl in a session of its own (util-linux `setsid`): no controlling terminal, even
    /// when the tests run on one.
    pub fn command_without_terminal(&self, args: &[&str]) -> Command {
        let mut setsid = Command::new("setsid");
        setsid.args(["--wait", env!("CARGO_BIN_EXE_core4ctl")]);
        self.with_home(setsid, args)
    }

    fn with_home(&self, mut cmd: Command, args: &[&str]) -> Command {
        let home = self.home.path();
        cmd.args(args)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env_remove("CORE4_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, None)
    }

    /// Runs with extra environment variables (e.g. `CORE4_SERVER`).
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        let output = cmd.output().expect("core4ctl runs");
        Out {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The token saved for `server`, if any.
    pub fn saved_token(&self, server: &TestServer) -> Option<String> {
        self.config()["hosts"][&server.url]["token"]
            .as_str()
            .map(str::to_owned)
    }

    /// Waits (with the `WAIT` hang guard) until the token saved for `server` is not `old`.
    #[track_caller]
    pub fn wait_for_saved_token_other_than(&self, server: &TestServer, old: &str) -> String {
        let guard = Instant::now() + WAIT;
        loop {
            if let Some(token) = self.saved_token(server).filter(|t| t != old) {
                return token;
            }
            assert!(Instant::now() < guard, "no refreshed token was saved");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("core4ctl runs");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
        }
        let output = child.wait_with_output().expect("core4ctl finishes");
        Out {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `login` as the bootstrap admin; the server becomes the saved default.
    pub fn login_admin(&self, server: &TestServer) -> Out {
        self.login(server, ADMIN, ADMIN_PASSWORD)
    }

    pub fn login(&self, server: &TestServer, user: &str, password: &str) -> Out {
        self.login_at(&server.url, user, password)
    }

    /// `login` with the password on stdin, to whatever `url` names (a relay, a fake server).
    pub fn login_at(&self, url: &str, user: &str, password: &str) -> Out {
        self.run_with_stdin(
            &[
                "login",
                "--server",
                url,
                "--username",
                user,
                "--password-stdin",
            ],
            Some(&format!("{password}\n")),
        )
    }

    /// A long-running command (tail, chat) whose stdout is read line by line.
    pub fn spawn(&self, args: &[&str], with_stdin: bool) -> Running {
        self.spawn_reading(args, with_stdin, None)
    }

    /// Like [`Cli::spawn`], but nobody reads its stdout until `start` fires: a slow consumer.
    pub fn spawn_paused(&self, args: &[&str]) -> (Running, mpsc::Sender<()>) {
        let (start_tx, start_rx) = mpsc::channel();
        (self.spawn_reading(args, false, Some(start_rx)), start_tx)
    }

    fn spawn_reading(
        &self,
        args: &[&str],
        with_stdin: bool,
        start: Option<mpsc::Receiver<()>>,
    ) -> Running {
        let mut cmd = self.command(args);
        if with_stdin {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("core4ctl runs");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            if let Some(start) = start {
                let _ = start.recv();
            }
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        Running {
            child,
            stdin,
            lines,
            stderr: Some(err_reader),
        }
    }
}

pub struct Running {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// The next stdout line, or panics after `timeout`.
    #[track_caller]
    pub fn line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let stderr = self
                    .stderr
                    .take()
                    .map(|h| h.join().unwrap())
                    .unwrap_or_default();
                panic!("no line from core4ctl within {timeout:?} ({e}); stderr:\n{stderr}");
            }
        }
    }

    /// The next line if one arrives within `wait`.
    pub fn line_within(&mut self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// Lines that arrive within `wait` (for checking that nothing more comes).
    pub fn lines_within(&mut self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(_) => break,
            }
        }
        out
    }

    pub fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("spawned with stdin");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends SIGINT (what Ctrl-C does) and returns the exit code and stderr.
    pub fn interrupt(mut self) -> (i32, String) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        self.wait()
    }

    pub fn wait(&mut self) -> (i32, String) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("core4ctl did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (status.code().unwrap_or(-1), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const WAIT: Duration = Duration::from_secs(15);

/// A TCP relay in front of a core4d that a test can make lose the server's replies and then cut,
/// as a dying network path would: what the client sent still reaches the server (and is stored),
/// but the acknowledgements never come back.
pub struct LossyRelay {
    pub url: String,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl LossyRelay {
    pub fn to(server: &TestServer) -> Self {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = format!("127.0.0.1:{}", server.port);
        let swallow = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (swallow_l, open_l) = (swallow.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                if let Ok(mut open) = open_l.lock() {
                    open.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                }
                let pipe = |mut from: std::net::TcpStream,
                            mut to: std::net::TcpStream,
                            swallow: Option<Arc<AtomicBool>>| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let lose = swallow
                                .as_ref()
                                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
                            if !lose && to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    None,
                );
                pipe(server, client, Some(swallow_l.clone()));
            }
        });
        Self { url, swallow, open }
    }

    /// From now on the server's bytes are dropped on the way to the client.
    pub fn lose_replies(&self) {
        self.swallow
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every open connection and lets new ones through again.
    pub fn cut_and_heal(&self) {
        if let Ok(mut open) = self.open.lock() {
            for s in open.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        self.swallow
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
