//! `login`, `logout` and `whoami`: getting, dropping and showing the saved token.

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::{
    commands::prompt::{interactive, prompt_line, prompt_secret, secret_from_stdin},
    context::{Context, HostEntry},
    error::{CliError, Result},
    output::{
        self, datetime_cell, list_cell, opt_cell, parse_timestamp, print_json, print_line, sanitize,
    },
    serde_util::null_default,
};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Log in to core4d and save the server and token
    #[command(after_help = LOGIN_EXAMPLES)]
    Login(LoginArgs),
    /// Revoke the saved token on the server and forget it
    #[command(after_help = LOGOUT_EXAMPLES)]
    Logout,
    /// Show who you are logged in as, and when the token expires
    #[command(after_help = WHOAMI_EXAMPLES)]
    Whoami,
}

const LOGIN_EXAMPLES: &str = "\
Examples:
  core4ctl login                                  # prompts for username and password
  core4ctl login --server http://core4:5001 --username admin
  core4ctl login --server https://core4.example --cacert ca.pem --username admin
  printf '%s\\n' \"$PASSWORD\" | core4ctl login --username admin --password-stdin

The server and token are saved in $XDG_CONFIG_HOME/core4ctl/config.json (mode 0600); the
server becomes the default for later commands, and a --cacert given here is used for it
until another is given.";

const LOGOUT_EXAMPLES: &str = "\
Examples:
  core4ctl logout
  core4ctl logout --server http://core4:5001";

const WHOAMI_EXAMPLES: &str = "\
Examples:
  core4ctl whoami
  core4ctl whoami -o json | jq -r .token_expires";

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Username (prompted for when missing)
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the password from the first line of stdin instead of prompting
    #[arg(long)]
    pub password_stdin: bool,
}

/// `GET /profile`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub realname: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub is_active: Option<bool>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub updated: Option<String>,
    #[serde(default)]
    pub last_login: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub role: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub role_total: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub perm: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub perm_total: Vec<String>,
    #[serde(default)]
    pub token_expires: Option<String>,
}

#[derive(Deserialize)]
struct LoginReply {
    token: String,
}

pub async fn run(command: &AuthCommand, ctx: &Context) -> Result<()> {
    match command {
        AuthCommand::Login(args) => login(args, ctx).await,
        AuthCommand::Logout => logout(ctx).await,
        AuthCommand::Whoami => whoami(ctx).await,
    }
}

async fn login(args: &LoginArgs, ctx: &Context) -> Result<()> {
    let username = match &args.username {
        Some(u) => u.trim().to_owned(),
        None if interactive() && !args.password_stdin => {
            prompt_line(&format!("Username for {}: ", ctx.server))?
        }
        None => {
            return Err(CliError::Usage(
                "no terminal to prompt for the username: pass --username".into(),
            ));
        }
    };
    if username.is_empty() {
        return Err(CliError::Usage("the username must not be empty".into()));
    }
    let password = if args.password_stdin {
        secret_from_stdin()?
    } else {
        prompt_secret("Password: ")?
    };

    let client = ctx.anonymous_client()?;
    let cacert = ctx.cacert_to_save()?;
    let body = serde_json::json!({"username": username, "password": password});
    let reply: LoginReply = client.post("/login", &body).await?;
    // A `token` header may carry the same token; the body is authoritative.
    let server = ctx.server.clone();
    ctx.store.update(|c| {
        c.current = Some(server.clone());
        c.hosts.insert(
            server.clone(),
            HostEntry {
                username: Some(username.clone()),
                token: Some(reply.token.clone()),
                cacert: cacert.clone(),
            },
        );
    })?;
    if ctx.json() {
        print_json(&serde_json::json!({"server": ctx.server, "username": username}))
    } else {
        print_line(&format!(
            "Logged in to {} as {}.",
            ctx.server,
            sanitize(&username)
        ))
    }
}

async fn logout(ctx: &Context) -> Result<()> {
    let Some(_) = ctx.saved_token() else {
        eprintln!("not logged in to {}", ctx.server);
        if ctx.json() {
            return print_json(&serde_json::json!({"server": ctx.server, "logged_out": false}));
        }
        return Ok(());
    };
    let client = ctx.client()?;
    let revoked: Result<serde_json::Value> = client.post("/logout", &serde_json::json!({})).await;
    match revoked {
        // A token the server no longer accepts (401, 403) is as good as revoked; a rate limit
        // (429, also an auth error) is not.
        Ok(_) => {}
        Err(CliError::Auth(message)) if !message.contains("before trying again") => {}
        Err(e) => {
            return Err(CliError::Other(format!(
                "could not revoke the token on the server ({e}); it is still saved here — run \
                 `core4ctl logout` again"
            )));
        }
    }
    let server = ctx.server.clone();
    ctx.store.update(|c| {
        if let Some(host) = c.hosts.get_mut(&server) {
            host.token = None;
        }
    })?;
    if ctx.json() {
        print_json(&serde_json::json!({"server": ctx.server, "logged_out": true}))
    } else {
        print_line(&format!("Logged out of {}.", ctx.server))
    }
}

async fn whoami(ctx: &Context) -> Result<()> {
    let client = ctx.client()?;
    let profile: Profile = client.get("/profile", &[]).await?;
    if ctx.json() {
        let mut value = serde_json::to_value(&profile).expect("profile serialises");
        value["server"] = serde_json::Value::String(ctx.server.clone());
        return print_json(&value);
    }
    let expires = match profile.token_expires.as_deref() {
        Some(ts) => match parse_timestamp(ts) {
            Some(t) => format!(
                "{} UTC ({})",
                datetime_cell(Some(ts)),
                output::relative(t, time::OffsetDateTime::now_utc())
            ),
            None => sanitize(ts).into_owned(),
        },
        None => "-".to_owned(),
    };
    let rows = vec![
        ("Server", ctx.server.clone()),
        ("Name", sanitize(&profile.name).into_owned()),
        ("Real name", opt_cell(profile.realname.as_deref())),
        ("Email", opt_cell(profile.email.as_deref())),
        ("Roles", list_cell(&profile.role_total)),
        ("Permissions", list_cell(&profile.perm_total)),
        ("Last login", datetime_cell(profile.last_login.as_deref())),
        ("Token expires", expires),
    ];
    output::print_table(&output::detail_table(rows))
}
