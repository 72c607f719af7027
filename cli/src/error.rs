//! The one error type of core4ctl: what went wrong, said so a person knows what to do next,
//! and the documented exit code it ends the process with.

use crate::exit_codes::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line, or a value in it, was rejected (by us or by the server, HTTP 400).
    #[error("{0}")]
    Usage(String),
    /// Not logged in, bad credentials, an expired or revoked token, or not allowed.
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    NotFound(String),
    /// A stale etag or a taken name or email.
    #[error("{0}")]
    Conflict(String),
    #[error("core4d is not reachable at {server}: is it running? ({detail})")]
    Unreachable { server: String, detail: String },
    #[error("{0}")]
    Other(String),
    /// Too many event sockets open for this user (429 on the upgrade): a wait cures it, so
    /// long-running commands retry; others end like other refusals (exit 3).
    #[error("{0}")]
    Busy(String),
    /// Writing the output (or reading stdin) failed here, e.g. a full disk: no reconnect helps.
    #[error("I/O error: {0}")]
    LocalIo(String),
    /// stdout was closed by the reader (`core4ctl ... | head`): not an error worth a message.
    #[error("output closed")]
    BrokenPipe,
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::Usage,
            CliError::Auth(_) | CliError::Busy(_) => ExitCode::Authentication,
            CliError::NotFound(_) => ExitCode::NotFound,
            CliError::Conflict(_) => ExitCode::Conflict,
            CliError::Unreachable { .. } | CliError::Other(_) | CliError::LocalIo(_) => {
                ExitCode::GeneralError
            }
            CliError::BrokenPipe => ExitCode::Success,
        }
    }

    pub fn other(context: &str, err: impl std::fmt::Display) -> Self {
        CliError::Other(format!("{context}: {err}"))
    }
}

impl From<std::io::Error> for CliError {
    fn from(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::LocalIo(err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_ends_with_its_documented_code() {
        assert_eq!(CliError::Usage("x".into()).exit_code().code(), 2);
        assert_eq!(CliError::Auth("x".into()).exit_code().code(), 3);
        assert_eq!(CliError::NotFound("x".into()).exit_code().code(), 4);
        assert_eq!(CliError::Conflict("x".into()).exit_code().code(), 5);
        assert_eq!(CliError::Other("x".into()).exit_code().code(), 1);
        let down = CliError::Unreachable {
            server: "http://127.0.0.1:1".into(),
            detail: "connection refused".into(),
        };
        assert_eq!(down.exit_code().code(), 1);
        assert!(down.to_string().contains("is it running?"));
    }

    #[test]
    fn a_closed_stdout_is_a_quiet_success() {
        let err: CliError = std::io::Error::from(std::io::ErrorKind::BrokenPipe).into();
        assert_eq!(err.exit_code().code(), 0);
    }
}
