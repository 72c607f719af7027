//! The real `core4d` binary with TLS and trusted proxies: bad certificates and CIDRs refuse the
//! start with one line naming the key and the fix; SIGHUP reloads the certificate.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use support::{Daemon, embedded, runtime, temp_dir};

/// core4d on the embedded cluster in `data_dir`, with a known admin password.
fn core4d(data_dir: &Path) -> Command {
    let mut cmd = embedded(data_dir);
    cmd.env("CORE4_ADMIN_PASSWORD", "tls-admin-pw");
    cmd
}

fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Runs core4d to its exit; returns (exit code, stderr).
fn refused(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn a_missing_or_unreadable_certificate_or_key_refuses_the_start_naming_the_key() {
    let dir = temp_dir();
    let (cert, key) = make_cert(dir.path(), "ok");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all").unwrap();
    let (other_cert, _) = make_cert(dir.path(), "other");
    let missing = dir.path().join("missing.pem");
    for (cert_file, key_file, needle) in [
        (&missing, &key, "tls.cert_file: cannot use"),
        (&garbage, &key, "tls.cert_file: cannot use"),
        (&cert, &missing, "tls.key_file: cannot use"),
        (&cert, &garbage, "tls.key_file: cannot use"),
        (&other_cert, &key, "tls.key_file:"),
    ] {
        let (code, stderr) = refused(
            core4d(&dir.path().join("data"))
                .env("CORE4_TLS__CERT_FILE", cert_file)
                .env("CORE4_TLS__KEY_FILE", key_file),
        );
        assert_eq!(code, Some(2), "a configuration error: {stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "refused before touching the data dir"
        );
    }
    let (code, stderr) =
        refused(core4d(&dir.path().join("data")).env("CORE4_TLS__CERT_FILE", &cert));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tls.key_file is not"), "{stderr}");
}

#[test]
fn an_invalid_trusted_proxy_cidr_refuses_the_start_naming_the_key() {
    let dir = temp_dir();
    for bad in ["10.0.0.0/33", "localhost"] {
        let (code, stderr) = refused(core4d(&dir.path().join("data")).env(
            "CORE4_TRUSTED_PROXIES",
            format!("[\"127.0.0.1/32\", \"{bad}\"]"),
        ));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("trusted_proxies: [{bad}]")),
            "{stderr}"
        );
        assert!(
            stderr.contains("trusted_proxies = [\"127.0.0.1/32\""),
            "the fix: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    // A bare CIDR is not a list: the error says how to write one in a variable.
    let (code, stderr) =
        refused(core4d(&dir.path().join("data")).env("CORE4_TRUSTED_PROXIES", "127.0.0.1/32"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("CORE4_TRUSTED_PROXIES: found string \"127.0.0.1/32\", expected a list")
            && stderr.contains("e.g. CORE4_TRUSTED_PROXIES='[\"127.0.0.1/32\"]'")
            && !stderr.contains("environment variable(s)"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let out = core4d(&dir.path().join("data"))
        .arg("config")
        .env("CORE4_TRUSTED_PROXIES", "[\"10.0.0.0/8\", \"192.0.2.7\"]")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("trusted_proxies = [\"10.0.0.0/8\",\"192.0.2.7\"]"),
        "{text}"
    );
    assert!(text.contains("[tls]"), "{text}");
}

/// The status of `/health` over HTTPS from a client that trusts only `ca`.
fn health_trusting(ca: &Path, port: u16) -> Result<u16, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap();
    runtime().block_on(async {
        client
            .get(format!("https://127.0.0.1:{port}/core4/api/v1/health"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    })
}

#[test]
fn sighup_makes_the_running_binary_serve_the_replaced_certificate() {
    let dir = temp_dir();
    let (one_cert, one_key) = make_cert(dir.path(), "one");
    let (two_cert, two_key) = make_cert(dir.path(), "two");
    let (live_cert, live_key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&one_cert, &live_cert).unwrap();
    std::fs::copy(&one_key, &live_key).unwrap();
    let mut cmd = core4d(&dir.path().join("data"));
    cmd.env("CORE4_TLS__CERT_FILE", &live_cert)
        .env("CORE4_TLS__KEY_FILE", &live_key);
    let mut daemon = Daemon::start(cmd);
    let port = daemon.port();
    assert_eq!(health_trusting(&one_cert, port).unwrap(), 200);
    assert!(health_trusting(&two_cert, port).is_err());

    std::fs::copy(&two_cert, &live_cert).unwrap();
    std::fs::copy(&two_key, &live_key).unwrap();
    daemon.signal("HUP");
    daemon.wait_for("reloaded the TLS certificate");
    assert_eq!(health_trusting(&two_cert, port).unwrap(), 200);
    assert!(health_trusting(&one_cert, port).is_err());

    // A bad file is reported and the running certificate stays.
    std::fs::write(&live_cert, "garbage").unwrap();
    daemon.signal("HUP");
    daemon.wait_for("reload failed");
    assert_eq!(health_trusting(&two_cert, port).unwrap(), 200);
    assert!(daemon.terminate().success());
}
