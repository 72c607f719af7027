//! Asking the person at the terminal: lines, secrets, confirmations.

use std::io::{self, BufRead, IsTerminal, Write};

use crate::error::{CliError, Result};

/// Whether a person is at the keyboard (stdin is a terminal).
pub fn interactive() -> bool {
    io::stdin().is_terminal()
}

/// Asks for one line on the terminal (the prompt goes to stderr, so stdout stays clean).
pub fn prompt_line(label: &str) -> Result<String> {
    eprint!("{label}");
    io::stderr().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// Asks for a secret without echo, on the terminal itself (even when stdin is a pipe).
pub fn prompt_secret(label: &str) -> Result<String> {
    rpassword::prompt_password(label).map_err(|e| {
        if has_terminal() {
            CliError::Usage(format!(
                "cannot prompt for a password ({e}): pass it with --password-stdin"
            ))
        } else {
            CliError::Usage(
                "no terminal to prompt for the password: pipe it in with --password-stdin".into(),
            )
        }
    })
}

/// Whether this process has a terminal to prompt on, as the password prompt opens it.
#[cfg(unix)]
fn has_terminal() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}

#[cfg(not(unix))]
fn has_terminal() -> bool {
    io::stdin().is_terminal()
}

/// A password from stdin: its first line, without the line ending.
pub fn secret_from_stdin() -> Result<String> {
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let secret = line.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err(CliError::Usage(
            "--password-stdin: stdin held no password".into(),
        ));
    }
    Ok(secret)
}

/// A new password typed twice.
pub fn prompt_new_password() -> Result<String> {
    let first = prompt_secret("New password: ")?;
    if first.is_empty() {
        return Err(CliError::Usage("the password must not be empty".into()));
    }
    let second = prompt_secret("Repeat the password: ")?;
    if first != second {
        return Err(CliError::Usage("the passwords do not match".into()));
    }
    Ok(first)
}

/// "Really?" on a terminal; anything but y/yes is no.
pub fn confirm(question: &str) -> Result<bool> {
    let answer = prompt_line(&format!("{question} [y/N] "))?;
    Ok(matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes"))
}
