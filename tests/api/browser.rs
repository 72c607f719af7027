//! Swagger UI in a real browser: `tests/py/swagger_ui.py` drives Debian's headless Chromium
//! (through chromedriver and selenium) against the real `core4d` binary on a free port with its
//! own data directory. Without Chromium installed it prints a SKIP line and passes; `.ci/run`
//! installs it, so in CI it always runs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The `core4d` binary cargo built beside this test binary.
pub fn core4d_binary() -> PathBuf {
    workspace_binary("core4d", "core4d")
}

/// A binary of the workspace cargo built beside this test binary (`target/<profile>/NAME`),
/// built now when missing (`cargo test -p core4-tests` alone builds no other package's binaries).
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let binary = profile_dir.join(name);
    if !binary.exists() {
        let release = profile_dir.ends_with("release");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", package, "--bin", name]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    binary
}

/// Where a program is, from `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A script of `tests/py/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

#[test]
fn swagger_ui_logs_in_authorizes_and_creates_a_user_in_headless_chromium() {
    let Some(chromium) = which("chromium") else {
        eprintln!(
            "SKIP swagger_ui_logs_in_authorizes_and_creates_a_user_in_headless_chromium: \
             chromium is not installed (apt-get install chromium chromium-driver), nothing checked"
        );
        return;
    };
    let driver = which("chromedriver")
        .expect("chromium is installed but chromedriver is not: apt-get install chromium-driver");
    let selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .status()
        .expect("python3");
    assert!(
        selenium.success(),
        "python3 cannot import selenium: python3 -m pip install selenium"
    );
    let output = Command::new("python3")
        .arg(script("swagger_ui.py"))
        .arg(core4d_binary())
        .env("CHROMIUM", chromium)
        .env("CHROMEDRIVER", driver)
        .output()
        .expect("run swagger_ui.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "swagger_ui.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
