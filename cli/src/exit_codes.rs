//! The process exit codes core4ctl documents for scripts.

/// Every way core4ctl can end. The numbers are part of the CLI contract (see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The command did what was asked.
    Success,
    /// Anything else went wrong: server unreachable, unexpected reply, I/O.
    GeneralError,
    /// The command line was wrong (also what clap uses for parse errors).
    Usage,
    /// Not logged in, wrong password, expired or revoked token, or not allowed.
    Authentication,
    /// A role, user or other object does not exist.
    NotFound,
    /// The object changed since it was read, or a name or email is taken.
    Conflict,
}

impl ExitCode {
    pub const fn code(self) -> u8 {
        match self {
            ExitCode::Success => 0,
            ExitCode::GeneralError => 1,
            ExitCode::Usage => 2,
            ExitCode::Authentication => 3,
            ExitCode::NotFound => 4,
            ExitCode::Conflict => 5,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode;

    #[test]
    fn documented_numbers_do_not_change() {
        let all = [
            (ExitCode::Success, 0),
            (ExitCode::GeneralError, 1),
            (ExitCode::Usage, 2),
            (ExitCode::Authentication, 3),
            (ExitCode::NotFound, 4),
            (ExitCode::Conflict, 5),
        ];
        for (code, number) in all {
            assert_eq!(code.code(), number);
        }
    }
}
