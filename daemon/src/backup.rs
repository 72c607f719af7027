//! `core4d backup FILE` and `core4d restore FILE`: a pg_dump of core4d's database (the embedded
//! cluster or the configured one) in PostgreSQL's custom format, and its restore.
//!
//! A backup is written to `FILE.partial` (mode 0600: it holds password hashes and the token
//! secret) and renamed when complete, so `FILE` is never a truncated dump. A restore runs in one
//! transaction (`pg_restore` into `psql --single-transaction`), so it either replaces the whole
//! database or changes nothing. It refuses a database that holds anything unless `--force`, and
//! a database other sessions are connected to (a running core4d) always.

use std::{
    io::Read,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
};

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tokio::io::AsyncReadExt;

use crate::{
    admin::{AdminError, Target},
    embedded_pg::{STARTUP_PROBE, client_tool},
};

/// What a database holds, for the operator.
#[derive(Debug, Default)]
pub struct Contents {
    pub users: i64,
    pub roles: i64,
    pub messages: i64,
    pub last_id: i64,
}

impl std::fmt::Display for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "users: {}, roles: {}, messages: {}, last message id: {}",
            self.users, self.roles, self.messages, self.last_id
        )
    }
}

pub struct BackupReport {
    pub file: PathBuf,
    pub bytes: u64,
    pub contents: Contents,
}

pub struct RestoreReport {
    pub contents: Contents,
    /// The database held data that the restore replaced (`--force`).
    pub replaced: bool,
}

/// Dumps core4d's database into `file`, online: a running core4d keeps serving.
pub async fn backup(
    settings: &crate::settings::Settings,
    file: &Path,
) -> Result<BackupReport, AdminError> {
    check_destination(file)?;
    let target = Target::open(settings, false).await?;
    let result = dump(&target, file).await;
    target.release().await?;
    result
}

/// Where the backup goes must be a file in a directory that exists, checked before any
/// database work; otherwise the error would name the internal `FILE.partial`.
fn check_destination(file: &Path) -> Result<(), AdminError> {
    if file.is_dir() {
        return Err(AdminError::Usage(format!(
            "{} is a directory: name the backup file, e.g. {}",
            file.display(),
            file.join("core4d.dump").display()
        )));
    }
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(AdminError::Usage(format!(
            "the directory {} does not exist: create it first, or name a file in another one",
            dir.display()
        )));
    }
    Ok(())
}

async fn dump(target: &Target, file: &Path) -> Result<BackupReport, AdminError> {
    let mut conn = target.connection().await?;
    let contents = contents(&mut conn).await;
    let _ = conn.close().await;
    let contents = contents?.ok_or_else(|| {
        AdminError::NotFound("this database holds no core4d data: nothing to back up".into())
    })?;

    let partial = PathBuf::from(format!("{}.partial", file.display()));
    // The dump holds password hashes and the signing secret: never write it into a file (or
    // through a link) someone else prepared. A stale partial of ours is removed, not reused.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(AdminError::Failed(anyhow::anyhow!(
                "cannot remove the stale {}: {e}",
                partial.display()
            )));
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| {
            let dir = partial.parent().unwrap_or(Path::new("."));
            AdminError::Usage(format!(
                "cannot write the backup into {}: {e}",
                if dir.as_os_str().is_empty() {
                    Path::new(".").display()
                } else {
                    dir.display()
                }
            ))
        })?;
    let conn = Libpq::from_url(&target.url);
    let mut cmd = tokio::process::Command::new(client_tool("pg_dump"));
    cmd.args(["--format=custom", "--no-owner", "--no-privileges", "--file"])
        .arg(&partial)
        .arg("--dbname")
        .arg(&conn.url);
    conn.apply(&mut cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run pg_dump")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(AdminError::Failed(anyhow::anyhow!(
            "pg_dump failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&partial, file)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), file.display()))?;
    let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport {
        file: file.to_path_buf(),
        bytes,
        contents,
    })
}

/// Replaces core4d's database with the backup in `file`. An embedded cluster that does not
/// exist yet is created.
pub async fn restore(
    settings: &crate::settings::Settings,
    file: &Path,
    force: bool,
) -> Result<RestoreReport, AdminError> {
    check_backup_file(file)?;
    let target = Target::open(settings, true).await?;
    let result = restore_into(&target, file, force).await;
    target.release().await?;
    result
}

fn check_backup_file(file: &Path) -> Result<(), AdminError> {
    let mut magic = [0u8; 5];
    let mut f = std::fs::File::open(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            AdminError::NotFound(format!("there is no file {}", file.display()))
        }
        _ => AdminError::Usage(format!("cannot read {}: {e}", file.display())),
    })?;
    if f.read_exact(&mut magic).is_err() || &magic != b"PGDMP" {
        return Err(AdminError::Usage(format!(
            "{} is not a backup made by `core4d backup` (a pg_dump custom-format file)",
            file.display()
        )));
    }
    Ok(())
}

async fn restore_into(
    target: &Target,
    file: &Path,
    force: bool,
) -> Result<RestoreReport, AdminError> {
    if target.core4d_running() {
        return Err(AdminError::Refused(
            "core4d is running on this data directory: stop it first (a restore replaces the \
             whole database)"
                .into(),
        ));
    }
    // One connection, not a pool: a pool may open a second connection of ours while the first
    // is being returned to it, and this check would count that one as another session.
    let mut conn = target.connection().await?;
    let others = other_sessions(&mut conn)
        .await
        .context("cannot inspect the database")?;
    let objects: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'public')
              + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'public')",
    )
    .fetch_one(&mut conn)
    .await
    .context("cannot inspect the database")?;
    let before = contents(&mut conn).await;
    let _ = conn.close().await;
    if others > 0 {
        return Err(AdminError::Refused(format!(
            "{others} other sessions are connected to this database (a running core4d?): stop \
             them first (a restore replaces the whole database)"
        )));
    }
    let replaced = objects > 0;
    if replaced && !force {
        let what = match before {
            Ok(Some(c)) => format!("core4d data ({c})"),
            _ => format!("{objects} objects in its public schema"),
        };
        return Err(AdminError::Refused(format!(
            "the database already holds {what}: pass --force to replace all of it with the \
             backup (`core4d backup` it first if you may need it)"
        )));
    }

    run_restore(&target.url, file, replaced).await?;

    let mut conn = target.connection().await?;
    let after = contents(&mut conn).await;
    let _ = conn.close().await;
    let contents = after?.ok_or_else(|| {
        AdminError::Failed(anyhow::anyhow!(
            "the restore succeeded but the database holds no core4d tables: was {} made by core4d?",
            file.display()
        ))
    })?;
    Ok(RestoreReport { contents, replaced })
}

/// `pg_restore` writes the script, `psql` runs it in one transaction (after emptying the public
/// schema when `replace`). psql commits when its input ends, so if pg_restore fails, psql is
/// killed before that and nothing changes. A crafted dump cannot run psql meta-commands (`\!`):
/// pg_restore (15.14, 16.10, 17.6 and later) wraps its script in `\restrict` with a random key.
async fn run_restore(url: &str, file: &Path, replace: bool) -> Result<(), AdminError> {
    let mut dump = tokio::process::Command::new(client_tool("pg_restore"));
    dump.args(["--no-owner", "--no-privileges", "--file=-"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut dump = dump.spawn().context("cannot run pg_restore")?;

    let conn = Libpq::from_url(url);
    let mut psql = tokio::process::Command::new(client_tool("psql"));
    psql.args([
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
    ]);
    if replace {
        psql.args([
            "--command=DROP SCHEMA public CASCADE",
            "--command=CREATE SCHEMA public",
        ]);
    }
    psql.arg("--file=-")
        .arg("--dbname")
        .arg(&conn.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    conn.apply(&mut psql);
    let mut psql = psql.spawn().context("cannot run psql")?;

    let dump_err = collect(dump.stderr.take());
    let psql_err = collect(psql.stderr.take());
    let mut script = dump.stdout.take().context("pg_restore's output")?;
    let mut input = psql.stdin.take().context("psql's input")?;
    let copied = tokio::io::copy(&mut script, &mut input).await;
    if copied.is_err() {
        // psql stopped reading: it failed, and its error is the one to show.
        drop(input);
        let _ = dump.kill().await;
        let status = psql.wait().await.context("waiting for psql")?;
        return Err(AdminError::Failed(anyhow::anyhow!(
            "restoring failed ({status}); nothing was changed: {}",
            psql_err.await.unwrap_or_default().trim()
        )));
    }
    let dump_status = dump.wait().await.context("waiting for pg_restore")?;
    if !dump_status.success() {
        let _ = psql.kill().await;
        return Err(AdminError::Failed(anyhow::anyhow!(
            "pg_restore failed ({dump_status}); nothing was changed: {}",
            dump_err.await.unwrap_or_default().trim()
        )));
    }
    drop(input);
    let status: ExitStatus = psql.wait().await.context("waiting for psql")?;
    if !status.success() {
        return Err(AdminError::Failed(anyhow::anyhow!(
            "restoring failed ({status}); nothing was changed: {}",
            psql_err.await.unwrap_or_default().trim()
        )));
    }
    Ok(())
}

fn collect(
    stream: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = String::new();
        if let Some(mut s) = stream {
            let _ = s.read_to_string(&mut text).await;
        }
        text
    })
}

/// Client sessions on the connection's database other than itself: a running core4d, psql, ...
/// Background workers (autovacuum, the launcher) are not clients, and the embedded cluster's
/// start-up probe may still be exiting when the start returns: neither is counted.
pub async fn other_sessions(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND backend_type = 'client backend' AND application_name IS DISTINCT FROM $1",
    )
    .bind(STARTUP_PROBE)
    .fetch_one(conn)
    .await
}

/// Counts of what core4d stores; `None` when the database holds no core4d tables.
async fn contents(conn: &mut PgConnection) -> Result<Option<Contents>, AdminError> {
    let has_tables: bool = sqlx::query_scalar(
        "SELECT to_regclass('public.roles') IS NOT NULL AND to_regclass('public.events') IS NOT NULL
            AND to_regclass('public.event_head') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .context("cannot inspect the database")?;
    if !has_tables {
        return Ok(None);
    }
    let (users, roles, messages, last_id): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM roles WHERE email IS NOT NULL),
                (SELECT count(*) FROM roles WHERE email IS NULL),
                (SELECT count(*) FROM events),
                (SELECT last_id FROM event_head)",
    )
    .fetch_one(&mut *conn)
    .await
    .context("cannot count core4d's data")?;
    Ok(Some(Contents {
        users,
        roles,
        messages,
        last_id,
    }))
}

/// A connection URL for libpq's tools, with the password moved from the URL (where `ps` would
/// show it) into `PGPASSWORD`.
struct Libpq {
    url: String,
    password: Option<String>,
}

impl Libpq {
    fn from_url(url: &str) -> Self {
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return Self {
                url: url.to_string(),
                password: None,
            };
        };
        let authority_end = url[scheme_end..]
            .find(['/', '?'])
            .map_or(url.len(), |i| scheme_end + i);
        let authority = &url[scheme_end..authority_end];
        let Some((userinfo, host)) = authority.rsplit_once('@') else {
            return Self {
                url: url.to_string(),
                password: None,
            };
        };
        let Some((user, password)) = userinfo.split_once(':') else {
            return Self {
                url: url.to_string(),
                password: None,
            };
        };
        Self {
            url: format!(
                "{}{user}@{host}{}",
                &url[..scheme_end],
                &url[authority_end..]
            ),
            password: Some(percent_decode(password)),
        }
    }

    fn apply(&self, cmd: &mut tokio::process::Command) {
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_moves_from_the_url_to_the_environment() {
        let c = Libpq::from_url("postgres://core4:p%40ss:w@db.example:5432/core4?sslmode=require");
        assert_eq!(
            c.url,
            "postgres://core4@db.example:5432/core4?sslmode=require"
        );
        assert_eq!(c.password.as_deref(), Some("p@ss:w"));
        let c = Libpq::from_url("postgres://postgres@localhost:5432/postgres?host=/run/x");
        assert_eq!(
            c.url,
            "postgres://postgres@localhost:5432/postgres?host=/run/x"
        );
        assert_eq!(c.password, None);
        let c = Libpq::from_url("postgres:///core4?host=/run/x");
        assert_eq!(c.url, "postgres:///core4?host=/run/x");
    }
}
