//! Input and lifetime of the long-running commands: channel names, stdin lines, Ctrl-C.

use tokio::sync::mpsc;

use crate::error::{CliError, Result};

/// Ctrl-C ends a long-running command with success; lines are printed whole or not at all
/// because printing never awaits.
pub(super) async fn with_ctrl_c(work: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

pub(super) fn channel_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(CliError::Usage("the channel name must not be empty".into()));
    }
    Ok(name.to_owned())
}

/// Lines of stdin, read on a plain thread: a blocking read cannot be cancelled, and this way
/// it never holds up the exit.
pub(super) fn stdin_lines() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(256);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let stdin = std::io::stdin();
        let mut stdin = stdin.lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let line = match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    // Invalid UTF-8 must not end the stream: it becomes U+FFFD.
                    Ok(String::from_utf8_lossy(&buf).into_owned())
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}
