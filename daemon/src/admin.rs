//! Administrative commands that work on the database directly, whether core4d runs or not:
//! `core4d admin reset-password` here, `backup` and `restore` in [`crate::backup`]. This module
//! owns finding their database ([`Target`]) and their errors and exit codes ([`AdminError`]).

use std::io::{IsTerminal, Read};

use anyhow::Context;

use crate::{
    auth::Hasher,
    domain::{Password, RoleName},
    embedded_pg::{Attached, EmbeddedError, EmbeddedOptions},
    error::ApiError,
    settings::Settings,
    storage,
};

/// Why an administrative command failed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad input: a password the policy refuses, no terminal to prompt on, a file that is not a
    /// backup. Exit 2.
    #[error("{0}")]
    Usage(String),
    /// The user (or file) named does not exist. Exit 3.
    #[error("{0}")]
    NotFound(String),
    /// Refused to protect data: restoring over a database that holds data without `--force`,
    /// or while core4d runs on it. Exit 4.
    #[error("{0}")]
    Refused(String),
    /// Anything else (database unreachable, a tool failed). Exit 1.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl AdminError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Usage(_) => 2,
            Self::NotFound(_) => 3,
            Self::Refused(_) => 4,
        }
    }
}

impl From<EmbeddedError> for AdminError {
    fn from(e: EmbeddedError) -> Self {
        match e {
            EmbeddedError::NotInitialised(_) => Self::NotFound(e.to_string()),
            EmbeddedError::OwnedByOther { .. } => Self::Usage(e.to_string()),
            other => Self::Failed(other.into()),
        }
    }
}

/// Storage errors keep their cause here: the operator needs it, unlike an API client.
fn failed(e: ApiError) -> AdminError {
    match e {
        ApiError::Internal(cause) => AdminError::Failed(cause),
        other => AdminError::Failed(anyhow::anyhow!("{other}")),
    }
}

/// The database an administrative command works on: the configured one, or the embedded
/// cluster (a running core4d's, or started for the command and stopped by [`Target::release`]).
pub struct Target {
    pub url: String,
    /// The embedded cluster, when it is the target.
    pub embedded: Option<Attached>,
}

impl Target {
    /// `create`: initdb an embedded cluster that does not exist yet (for restore).
    pub async fn open(settings: &Settings, create: bool) -> Result<Self, AdminError> {
        if let Some(url) = &settings.database_url {
            return Ok(Self {
                url: url.clone(),
                embedded: None,
            });
        }
        let attached = Attached::open(
            EmbeddedOptions {
                data_dir: settings.data_dir.clone(),
                fsync: settings.embedded_fsync,
                extra_settings: vec![],
            },
            create,
        )
        .await?;
        Ok(Self {
            url: attached.url(),
            embedded: Some(attached),
        })
    }

    /// Whether a running core4d serves the embedded cluster (unknown for a configured database).
    pub fn core4d_running(&self) -> bool {
        self.embedded.as_ref().is_some_and(Attached::is_shared)
    }

    /// Stops the embedded cluster if the command started it.
    pub async fn release(self) -> Result<(), AdminError> {
        if let Some(attached) = self.embedded {
            attached.release().await?;
        }
        Ok(())
    }

    pub async fn pool(&self) -> Result<sqlx::PgPool, AdminError> {
        Ok(crate::startup::connect(&self.url, 2).await?)
    }

    /// A single connection, for checks that count sessions.
    pub async fn connection(&self) -> Result<sqlx::PgConnection, AdminError> {
        Ok(crate::startup::connect_one(&self.url).await?)
    }
}

/// The `core4d admin reset-password` command for the database `settings` name (the data dir or
/// the database URL in use), ready to paste; a password in the URL is shown as `<redacted>`.
pub fn reset_password_command(settings: &Settings, username: &str) -> String {
    let target = match &settings.database_url {
        Some(url) => format!(
            "--database-url {}",
            shell_quote(&crate::settings::redact_url(url))
        ),
        None => {
            let dir = std::path::absolute(&settings.data_dir)
                .unwrap_or_else(|_| settings.data_dir.clone());
            format!("--data-dir {}", shell_quote(&dir.display().to_string()))
        }
    };
    format!(
        "core4d {target} admin reset-password --username {}",
        shell_quote(username)
    )
}

/// `s` as one shell word: unchanged when that is safe, else in single quotes.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What `reset-password` did, for the operator.
pub struct Reset {
    pub username: String,
    pub id: String,
    pub is_active: bool,
    /// A running core4d served the database (it ended the user's tokens at once).
    pub core4d_running: bool,
}

/// Sets `username`'s password (the password policy applies) and ends all of its tokens.
pub async fn reset_password(
    settings: &Settings,
    username: &str,
    password: &str,
) -> Result<Reset, AdminError> {
    // Looked up by its key only, not validated as a new name: users named before today's rules
    // (a 24-hex or mixed-script name) must be recoverable too.
    let name = username.trim();
    if name.is_empty() || name.chars().count() > crate::domain::MAX_NAME_CHARS {
        return Err(AdminError::Usage(format!(
            "--username: a user name has 1 to {} characters",
            crate::domain::MAX_NAME_CHARS
        )));
    }
    let password = Password::parse(password)
        .map_err(|e| AdminError::Usage(e.replace("field [password]", "the password")))?;
    let target = Target::open(settings, false).await?;
    let result = set_password(settings, &target, name, &password).await;
    target.release().await?;
    result
}

async fn set_password(
    settings: &Settings,
    target: &Target,
    name: &str,
    password: &Password,
) -> Result<Reset, AdminError> {
    let pool = target.pool().await?;
    let hasher = Hasher::new(&settings.argon2).await?;
    let hash = hasher.hash(password, None).await.map_err(failed)?;
    let done = storage::roles::set_password(&pool, &RoleName::key_of(name), &hash).await;
    pool.close().await;
    match done {
        Ok(Some(set)) => Ok(Reset {
            username: name.to_string(),
            id: set.id,
            is_active: set.is_active,
            core4d_running: target.core4d_running(),
        }),
        Ok(None) => Err(AdminError::NotFound(format!(
            "there is no user `{name}` in this database",
        ))),
        Err(ApiError::BadRequest(why)) => Err(AdminError::Usage(format!(
            "cannot set a password for `{name}`: {why}",
        ))),
        Err(ApiError::Internal(cause)) if is_undefined_table(&cause) => Err(AdminError::NotFound(
            "this database holds no core4d data yet: start core4d on it once".into(),
        )),
        Err(e) => Err(failed(e)),
    }
}

fn is_undefined_table(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<sqlx::Error>())
        .filter_map(|e| e.as_database_error()?.code())
        .any(|code| code == "42P01")
}

/// The new password: all of stdin with `--password-stdin` (one trailing newline dropped),
/// else asked twice without echo on the terminal. Without a terminal, that flag is required.
pub fn read_new_password(from_stdin: bool) -> Result<String, AdminError> {
    if from_stdin {
        let mut raw = String::new();
        std::io::stdin()
            .read_to_string(&mut raw)
            .context("cannot read the password from stdin")?;
        let trimmed = raw
            .strip_suffix("\r\n")
            .or_else(|| raw.strip_suffix('\n'))
            .unwrap_or(&raw);
        return Ok(trimmed.to_string());
    }
    if !std::io::stdin().is_terminal() {
        return Err(AdminError::Usage(
            "no terminal to ask for the password on: pipe it in with --password-stdin".into(),
        ));
    }
    let first = rpassword::prompt_password("New password: ")
        .context("cannot read the password from the terminal")?;
    let second = rpassword::prompt_password("Repeat it: ")
        .context("cannot read the password from the terminal")?;
    if first != second {
        return Err(AdminError::Usage(
            "the two passwords differ; nothing was changed".into(),
        ));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_password_command_names_the_database_in_use() {
        let settings = Settings {
            data_dir: "/srv/core 4d".into(),
            ..Settings::default()
        };
        assert_eq!(
            reset_password_command(&settings, "admin"),
            "core4d --data-dir '/srv/core 4d' admin reset-password --username admin"
        );
        let settings = Settings {
            database_url: Some("postgres://core4:pw@db:5432/core4".into()),
            ..Settings::default()
        };
        assert_eq!(
            reset_password_command(&settings, "it's"),
            "core4d --database-url 'postgres://core4:<redacted>@db:5432/core4' admin \
             reset-password --username 'it'\\''s'"
        );
    }
}
