use std::path::Path;

use crate::helpers::Cli;

/// The install lines `core4ctl completions --help` shows, run as shown by `sh` in a fresh home
/// where none of the target directories exists yet, each leave a completion script behind.
#[test]
fn the_completion_install_lines_work_in_a_fresh_home() {
    let cli = Cli::new();
    let help = cli.run(&["completions", "--help"]).success().stdout;
    let lines: Vec<&str> = help
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("mkdir -p") || l.starts_with("core4ctl completions"))
        .collect();
    assert_eq!(lines.len(), 6, "{help}");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_core4ctl")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let home = cli.home.path();
    for line in &lines {
        let status = std::process::Command::new("sh")
            .args(["-c", line])
            .env("HOME", home)
            .env("PATH", &path)
            .status()
            .unwrap();
        assert!(status.success(), "{line}");
    }
    for file in [
        ".local/share/bash-completion/completions/core4ctl",
        ".zfunc/_core4ctl",
        ".config/fish/completions/core4ctl.fish",
    ] {
        let text = std::fs::read_to_string(home.join(file)).unwrap_or_default();
        assert!(text.contains("core4ctl"), "{file} missing or empty");
    }
}
