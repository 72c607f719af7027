//! `roles list|get|create|update|delete`: users and roles (one collection on the server).
//! Wherever a role is named, a name or a 24-hex id is accepted.

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    client::ApiClient,
    commands::prompt::{confirm, interactive, prompt_new_password, secret_from_stdin},
    context::Context,
    error::{CliError, Result},
    output::{self, datetime_cell, list_cell, opt_cell, print_json, print_line, sanitize},
    serde_util::null_default,
};

pub const EXAMPLES: &str = "\
Examples:
  core4ctl roles list --all
  core4ctl roles get alice
  core4ctl roles create editors --perm 'api://core4.api.v1.request.role/r'
  core4ctl roles update alice --add-role editors";

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// List users and roles, a page at a time or --all
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Show one user or role, with its cascaded roles and permissions
    #[command(after_help = GET_EXAMPLES)]
    Get {
        /// Name or id
        role: String,
    },
    /// Create a user (with --email and a password) or a role (without)
    #[command(after_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// Change a user or role; a concurrent change is reported, never overwritten
    #[command(after_help = UPDATE_EXAMPLES)]
    Update(UpdateArgs),
    /// Delete a user or role (asks first on a terminal unless --yes)
    #[command(after_help = DELETE_EXAMPLES)]
    Delete {
        /// Name or id
        role: String,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
        /// Delete it only if its etag is still this one (from `roles get`); otherwise exit 5
        #[arg(long)]
        etag: Option<String>,
    },
}

const LIST_EXAMPLES: &str = "\
Examples:
  core4ctl roles list
  core4ctl roles list --page 2 --per-page 50 --sort created --desc
  core4ctl roles list --filter email=alice@example.com
  core4ctl roles list -q admin
  core4ctl roles list --all -o json | jq -r '.[].name'";

const GET_EXAMPLES: &str = "\
Examples:
  core4ctl roles get alice
  core4ctl roles get 65f1c0ffee0ddba11c0ffee0
  core4ctl roles get alice -o json | jq .perm_total";

const CREATE_EXAMPLES: &str = "\
Examples:
  core4ctl roles create alice --realname 'Alice A.' --email alice@example.com \\
      --password-prompt --role standard_user
  printf '%s\\n' \"$PW\" | core4ctl roles create bot --email bot@example.com --password-stdin \\
      --role standard_user
  core4ctl roles create editors --perm 'api://core4.api.v1.request.role/r' --perm app://store/x

A user needs a password to log in, and a role or permission to do anything once logged in:
without any it can log in but not even read its own profile (`core4ctl whoami`).
standard_user lets a user log in, read its profile and chat on the message channel.";

const UPDATE_EXAMPLES: &str = "\
Examples:
  core4ctl roles update alice --add-role editors --remove-perm cop
  core4ctl roles update alice --realname 'Alice B.' --inactive
  core4ctl roles update alice --password-prompt
  core4ctl roles update editors --perm 'api://core4.api.v1/r'     # replaces all permissions

If someone else changed the object after core4ctl read it, nothing is written and the command
ends with exit code 5: run it again to apply the change to the new version. Scripts that
read, decide and then write can pass the etag they read with --etag to get the same check.";

const DELETE_EXAMPLES: &str = "\
Examples:
  core4ctl roles delete alice
  core4ctl roles delete alice --yes
  core4ctl roles delete alice --yes --etag \"$(core4ctl roles get alice -o json | jq -r .etag)\"";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SortField {
    Name,
    Realname,
    Email,
    Created,
    Id,
}

impl SortField {
    fn wire(self) -> &'static str {
        match self {
            SortField::Name => "name",
            SortField::Realname => "realname",
            SortField::Email => "email",
            SortField::Created => "created",
            SortField::Id => "_id",
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Page number, from 1
    #[arg(long, default_value_t = 1, value_parser = super::page_number)]
    pub page: u64,
    /// Items per page [default: 10, or 100 with --all]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub per_page: Option<u64>,
    /// Sort by this field
    #[arg(long, value_enum)]
    pub sort: Option<SortField>,
    /// Sort in descending order
    #[arg(long)]
    pub desc: bool,
    /// Exact match (case-insensitive) on name, email or realname, e.g. --filter name=alice
    #[arg(long, value_name = "FIELD=VALUE", value_parser = parse_filter)]
    pub filter: Vec<(FilterField, String)>,
    /// Free-text search (case-insensitive substring) over name, real name, email and permissions
    #[arg(short = 'q', long = "query", value_name = "TEXT")]
    pub query: Option<String>,
    /// Fetch every page
    #[arg(long, conflicts_with = "page")]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterField {
    Name,
    Email,
    Realname,
}

fn parse_filter(raw: &str) -> std::result::Result<(FilterField, String), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or("expected FIELD=VALUE, e.g. name=alice")?;
    let field = match key.trim() {
        "name" => FilterField::Name,
        "email" => FilterField::Email,
        "realname" => FilterField::Realname,
        other => {
            return Err(format!(
                "cannot filter on [{other}]: use name, email or realname"
            ));
        }
    };
    Ok((field, value.to_owned()))
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("password").args(["password_stdin", "password_prompt"])))]
pub struct CreateArgs {
    /// Name of the new user or role
    pub name: String,
    /// Real name
    #[arg(long)]
    pub realname: Option<String>,
    /// Email (users only)
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from the first line of stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// Prompt for the password (twice, without echo)
    #[arg(long)]
    pub password_prompt: bool,
    /// Grant a role (name or id); repeat for more
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Grant a permission, e.g. cop or api://core4.api.v1/r; repeat for more
    #[arg(long = "perm", value_name = "PERM")]
    pub perms: Vec<String>,
    /// Create it inactive
    #[arg(long)]
    pub inactive: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("password").args(["password_stdin", "password_prompt"])))]
pub struct UpdateArgs {
    /// Name or id of the user or role to change
    pub role: String,
    /// Rename it
    #[arg(long, value_name = "NEW_NAME")]
    pub name: Option<String>,
    /// Real name ("" clears it)
    #[arg(long)]
    pub realname: Option<String>,
    /// Email; a role given one becomes a user (which needs a password to log in)
    #[arg(long)]
    pub email: Option<String>,
    /// Read the new password from the first line of stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// Prompt for the new password (twice, without echo)
    #[arg(long)]
    pub password_prompt: bool,
    /// Replace all roles with these (repeat; --role '' clears them)
    #[arg(long = "role", value_name = "ROLE", conflicts_with_all = ["add_roles", "remove_roles"])]
    pub roles: Option<Vec<String>>,
    /// Replace all permissions with these (repeat; --perm '' clears them)
    #[arg(long = "perm", value_name = "PERM", conflicts_with_all = ["add_perms", "remove_perms"])]
    pub perms: Option<Vec<String>>,
    /// Add a role (name or id); repeat for more
    #[arg(long = "add-role", value_name = "ROLE")]
    pub add_roles: Vec<String>,
    /// Remove a role (name or id); repeat for more
    #[arg(long = "remove-role", value_name = "ROLE")]
    pub remove_roles: Vec<String>,
    /// Add a permission; repeat for more
    #[arg(long = "add-perm", value_name = "PERM")]
    pub add_perms: Vec<String>,
    /// Remove a permission; repeat for more
    #[arg(long = "remove-perm", value_name = "PERM")]
    pub remove_perms: Vec<String>,
    /// Activate it
    #[arg(long, conflicts_with = "inactive")]
    pub active: bool,
    /// Deactivate it (an inactive user cannot log in; an inactive role grants nothing)
    #[arg(long)]
    pub inactive: bool,
    /// Change it only if its etag is still this one (from `roles get`); otherwise exit 5
    #[arg(long)]
    pub etag: Option<String>,
}

/// A user or role as the server describes it; also the `-o json` shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Role {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub realname: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default = "yes", deserialize_with = "null_true")]
    pub is_active: bool,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub updated: Option<String>,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub role: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub perm: Vec<String>,
    /// Only in `roles get`: all roles reached through the cascade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_total: Option<Vec<String>>,
    /// Only in `roles get`: own and cascaded permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perm_total: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

fn null_true<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

impl Role {
    fn kind(&self) -> &'static str {
        if self.email.as_deref().is_some_and(|e| !e.is_empty()) {
            "user"
        } else {
            "role"
        }
    }
}

pub async fn run(command: &RolesCommand, ctx: &Context) -> Result<()> {
    let client = ctx.client()?;
    match command {
        RolesCommand::List(args) => list(args, ctx, &client).await,
        RolesCommand::Get { role } => get(role, ctx, &client).await,
        RolesCommand::Create(args) => create(args, ctx, &client).await,
        RolesCommand::Update(args) => update(args, ctx, &client).await,
        RolesCommand::Delete { role, yes, etag } => {
            delete(role, *yes, etag.as_deref(), ctx, &client).await
        }
    }
}

fn looks_like_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn not_found(role: &str) -> CliError {
    CliError::NotFound(format!(
        "role [{}] not found — see `core4ctl roles list`",
        sanitize(role)
    ))
}

async fn fetch(client: &ApiClient, id: &str) -> Result<Role> {
    client.get(&format!("/roles/{id}"), &[]).await
}

/// Finds a role by id or by name (exact, case-insensitive) and returns its detail.
async fn resolve(client: &ApiClient, role: &str) -> Result<Role> {
    if looks_like_id(role) {
        match fetch(client, role).await {
            Err(CliError::NotFound(_)) => {} // it may still be a name that looks like an id
            other => return other,
        }
    }
    let page = client
        .get_page::<Role>(
            "/roles",
            &[("name", role.to_owned()), ("per_page", "1".to_owned())],
        )
        .await?;
    match page.data.into_iter().next() {
        Some(found) => fetch(client, &found.id).await,
        None => Err(not_found(role)),
    }
}

/// The server takes role names; ids given on the command line are turned into names.
async fn role_names(client: &ApiClient, roles: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(roles.len());
    for role in roles.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        let name = if looks_like_id(role) {
            resolve(client, role).await?.name
        } else {
            role.to_owned()
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

fn perms(perms: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in perms.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if !out.iter().any(|o| o == p) {
            out.push(p.to_owned());
        }
    }
    out
}

async fn list(args: &ListArgs, ctx: &Context, client: &ApiClient) -> Result<()> {
    let per_page = args.per_page.unwrap_or(if args.all { 100 } else { 10 });
    let mut query: Vec<(&str, String)> = vec![("per_page", per_page.to_string())];
    if let Some(sort) = args.sort {
        query.push(("sort", sort.wire().to_owned()));
        query.push(("order", if args.desc { "-1" } else { "1" }.to_owned()));
    } else if args.desc {
        query.push(("order", "-1".to_owned()));
    }
    for (field, value) in &args.filter {
        let key = match field {
            FilterField::Name => "name",
            FilterField::Email => "email",
            FilterField::Realname => "realname",
        };
        query.push((key, value.clone()));
    }
    if let Some(q) = &args.query {
        query.push(("q", q.clone()));
    }

    let mut items: Vec<Role> = Vec::new();
    let mut page_no = if args.all { 0 } else { args.page - 1 };
    let last_page = loop {
        let mut q = query.clone();
        q.push(("page", page_no.to_string()));
        let page = client.get_page::<Role>("/roles", &q).await?;
        let done = !args.all || page.data.is_empty() || page_no + 1 >= page.page_count;
        for item in page.data.iter().cloned() {
            // Paging while others insert can repeat an item; show it once.
            if !items.iter().any(|i| i.id == item.id) {
                items.push(item);
            }
        }
        if done {
            break page;
        }
        page_no += 1;
    };

    if ctx.json() {
        return print_json(&items);
    }
    let mut table = output::table(&[
        "NAME",
        "REALNAME",
        "EMAIL",
        "ROLES",
        "PERMISSIONS",
        "ACTIVE",
        "CREATED",
    ]);
    for r in &items {
        table.add_row(vec![
            sanitize(&r.name).into_owned(),
            opt_cell(r.realname.as_deref()),
            opt_cell(r.email.as_deref()),
            list_cell(&r.role),
            list_cell(&r.perm),
            if r.is_active { "yes" } else { "no" }.to_owned(),
            datetime_cell(r.created.as_deref()),
        ]);
    }
    if items.is_empty() {
        if last_page.total_count > 0 {
            eprintln!(
                "page {} is past the end: {} users and roles match, on {} page(s) of {}",
                args.page, last_page.total_count, last_page.page_count, last_page.per_page
            );
        } else {
            eprintln!("no users or roles match");
        }
        return Ok(());
    }
    output::print_table(&table)?;
    if !args.all && last_page.page_count > 1 {
        let shown_from = last_page.page * last_page.per_page.max(1) + 1;
        eprintln!(
            "page {} of {} ({}–{} of {}); next: --page {}, everything: --all",
            last_page.page + 1,
            last_page.page_count,
            shown_from,
            shown_from + items.len() as u64 - 1,
            last_page.total_count,
            (last_page.page + 2).min(last_page.page_count),
        );
    }
    Ok(())
}

fn print_role(ctx: &Context, role: &Role) -> Result<()> {
    if ctx.json() {
        return print_json(role);
    }
    let mut rows = vec![
        ("Name", sanitize(&role.name).into_owned()),
        ("Id", sanitize(&role.id).into_owned()),
        ("Kind", role.kind().to_owned()),
        ("Real name", opt_cell(role.realname.as_deref())),
        ("Email", opt_cell(role.email.as_deref())),
        (
            "Active",
            if role.is_active { "yes" } else { "no" }.to_owned(),
        ),
        ("Roles", list_cell(&role.role)),
    ];
    if let Some(total) = &role.role_total {
        rows.push(("Roles (cascaded)", list_cell(total)));
    }
    rows.push(("Permissions", list_cell(&role.perm)));
    if let Some(total) = &role.perm_total {
        rows.push(("Permissions (cascaded)", list_cell(total)));
    }
    rows.push(("Created", datetime_cell(role.created.as_deref())));
    rows.push(("Updated", datetime_cell(role.updated.as_deref())));
    rows.push(("Etag", opt_cell(role.etag.as_deref())));
    output::print_table(&output::detail_table(rows))
}

async fn get(role: &str, ctx: &Context, client: &ApiClient) -> Result<()> {
    let role = resolve(client, role).await?;
    print_role(ctx, &role)
}

fn read_password(from_stdin: bool, prompt: bool) -> Result<Option<String>> {
    if from_stdin {
        Ok(Some(secret_from_stdin()?))
    } else if prompt {
        Ok(Some(prompt_new_password()?))
    } else {
        Ok(None)
    }
}

/// The API takes a user without a password (as core4 did); say that it cannot log in yet.
fn warn_no_password(user: &Role, became: &str) {
    let name = sanitize(&user.name);
    eprintln!(
        "warning: {name}{became} has no password and cannot log in until one is set: \
         core4ctl roles update {name} --password-prompt"
    );
}

async fn create(args: &CreateArgs, ctx: &Context, client: &ApiClient) -> Result<()> {
    let password = read_password(args.password_stdin, args.password_prompt)?;
    let has_password = password.is_some();
    let mut body = Map::new();
    body.insert("name".into(), json!(args.name));
    if let Some(realname) = &args.realname {
        body.insert("realname".into(), json!(realname));
    }
    if let Some(email) = &args.email {
        body.insert("email".into(), json!(email));
    }
    if let Some(password) = password {
        body.insert("password".into(), json!(password));
    }
    // Only a cop may set these, so they are sent only when asked for.
    let roles = role_names(client, &args.roles).await?;
    if !roles.is_empty() {
        body.insert("role".into(), json!(roles));
    }
    let perms = perms(&args.perms);
    if !perms.is_empty() {
        body.insert("perm".into(), json!(perms));
    }
    if args.inactive {
        body.insert("is_active".into(), json!(false));
    }

    let created: Role = client.post("/roles", &Value::Object(body)).await?;
    if created.kind() == "user" && !has_password {
        warn_no_password(&created, "");
    }
    if ctx.json() {
        return print_json(&created);
    }
    print_line(&format!(
        "Created {} {} (id {}).",
        created.kind(),
        sanitize(&created.name),
        sanitize(&created.id)
    ))
}

/// What to do about a stale etag. Without `--etag` core4ctl read the etag itself, so running
/// the command again reads the new one; with `--etag` that would fail the same way.
fn conflict_hint(err: CliError, role: &Role, given_etag: bool) -> CliError {
    let name = sanitize(&role.name);
    match err {
        CliError::Conflict(msg) if msg.contains("etag") && given_etag => {
            CliError::Conflict(format!(
                "{name} changed since the etag given with --etag was read ({msg}); nothing was \
                 written — fetch the current version (`core4ctl roles get {name}`), check it, \
                 and pass its etag to --etag"
            ))
        }
        CliError::Conflict(msg) if msg.contains("etag") => CliError::Conflict(format!(
            "{name} was changed by someone else after core4ctl read it ({msg}); nothing was \
             written — run the command again to apply your change to the current version"
        )),
        other => other,
    }
}

fn same_name(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

async fn update(args: &UpdateArgs, ctx: &Context, client: &ApiClient) -> Result<()> {
    let changes_something = args.name.is_some()
        || args.realname.is_some()
        || args.email.is_some()
        || args.password_stdin
        || args.password_prompt
        || args.roles.is_some()
        || args.perms.is_some()
        || !args.add_roles.is_empty()
        || !args.remove_roles.is_empty()
        || !args.add_perms.is_empty()
        || !args.remove_perms.is_empty()
        || args.active
        || args.inactive;
    if !changes_something {
        return Err(CliError::Usage(
            "nothing to change: give at least one option (see `core4ctl roles update --help`)"
                .into(),
        ));
    }
    let password = read_password(args.password_stdin, args.password_prompt)?;
    let sets_password = password.is_some();
    let current = resolve(client, &args.role).await?;
    let etag = args
        .etag
        .clone()
        .or_else(|| current.etag.clone())
        .ok_or_else(|| CliError::Other("the server sent no etag for this role".into()))?;

    let mut body = Map::new();
    body.insert("etag".into(), json!(etag));
    if let Some(name) = &args.name {
        body.insert("name".into(), json!(name));
    }
    if let Some(realname) = &args.realname {
        body.insert("realname".into(), json!(realname));
    }
    if let Some(email) = &args.email {
        body.insert("email".into(), json!(email));
    }
    if let Some(password) = password {
        body.insert("password".into(), json!(password));
    }
    if let Some(roles) = &args.roles {
        body.insert("role".into(), json!(role_names(client, roles).await?));
    } else if !args.add_roles.is_empty() || !args.remove_roles.is_empty() {
        let mut roles = current.role.clone();
        for add in role_names(client, &args.add_roles).await? {
            if !roles.iter().any(|r| same_name(r, &add)) {
                roles.push(add);
            }
        }
        for remove in role_names(client, &args.remove_roles).await? {
            let before = roles.len();
            roles.retain(|r| !same_name(r, &remove));
            if roles.len() == before {
                eprintln!(
                    "note: {} does not have role {}",
                    sanitize(&current.name),
                    sanitize(&remove)
                );
            }
        }
        body.insert("role".into(), json!(roles));
    }
    if let Some(p) = &args.perms {
        body.insert("perm".into(), json!(perms(p)));
    } else if !args.add_perms.is_empty() || !args.remove_perms.is_empty() {
        let mut list = current.perm.clone();
        for add in perms(&args.add_perms) {
            if !list.contains(&add) {
                list.push(add);
            }
        }
        for remove in perms(&args.remove_perms) {
            let before = list.len();
            list.retain(|p| *p != remove);
            if list.len() == before {
                eprintln!(
                    "note: {} does not have permission {}",
                    sanitize(&current.name),
                    sanitize(&remove)
                );
            }
        }
        body.insert("perm".into(), json!(list));
    }
    if args.active || args.inactive {
        body.insert("is_active".into(), json!(args.active));
    }

    let was_role = current.kind() == "role";
    let own = ctx
        .host()
        .and_then(|h| h.username.as_deref())
        .is_some_and(|me| same_name(me, &current.name));
    let reply: Value = client
        .put(&format!("/roles/{}", current.id), &Value::Object(body))
        .await
        .map_err(|e| conflict_hint(e, &current, args.etag.is_some()))?;
    let (changed, role) = match reply {
        Value::Object(_) => (
            true,
            serde_json::from_value::<Role>(reply)
                .map_err(|e| CliError::Other(format!("unexpected reply to the update: {e}")))?,
        ),
        _ => (false, current),
    };
    // A role has no password, so one given an email is a user that cannot log in yet.
    if changed && was_role && role.kind() == "user" && !sets_password {
        warn_no_password(&role, " is now a user; it");
    }
    if changed && sets_password && own {
        eprintln!(
            "note: changing your own password ended all your sessions, this one too: run \
             `core4ctl login` again"
        );
    }
    if ctx.json() {
        return print_json(&role);
    }
    if changed {
        print_line(&format!(
            "Updated {} {}.",
            role.kind(),
            sanitize(&role.name)
        ))
    } else {
        print_line(&format!(
            "No changes to {} {}.",
            role.kind(),
            sanitize(&role.name)
        ))
    }
}

async fn delete(
    role: &str,
    yes: bool,
    etag: Option<&str>,
    ctx: &Context,
    client: &ApiClient,
) -> Result<()> {
    let current = resolve(client, role).await?;
    let what = format!(
        "{} {} (id {})",
        current.kind(),
        sanitize(&current.name),
        sanitize(&current.id)
    );
    if !yes {
        if !interactive() {
            return Err(CliError::Usage(format!(
                "refusing to delete {what} without confirmation: pass --yes"
            )));
        }
        if !confirm(&format!("Delete {what}?"))? {
            return Err(CliError::Other("not deleted".into()));
        }
    }
    let given_etag = etag.is_some();
    let etag = etag
        .map(str::to_owned)
        .or_else(|| current.etag.clone())
        .unwrap_or_default();
    let _: Value = client
        .delete(&format!("/roles/{}", current.id), &[("etag", etag)])
        .await
        .map_err(|e| conflict_hint(e, &current, given_etag))?;
    if ctx.json() {
        return print_json(&json!({"_id": current.id, "name": current.name, "deleted": true}));
    }
    print_line(&format!("Deleted {what}."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_24_hex_characters() {
        assert!(looks_like_id("65f1c0ffee0ddba11c0ffee0"));
        assert!(!looks_like_id("alice"));
        assert!(!looks_like_id("65f1c0ffee0ddba11c0ffeeg"));
    }

    #[test]
    fn filters_name_their_field() {
        assert_eq!(
            parse_filter("name=alice").unwrap(),
            (FilterField::Name, "alice".into())
        );
        assert_eq!(
            parse_filter("email=a=b@x").unwrap(),
            (FilterField::Email, "a=b@x".into())
        );
        assert!(
            parse_filter("perm=cop")
                .unwrap_err()
                .contains("name, email or realname")
        );
        assert!(parse_filter("alice").is_err());
    }

    #[test]
    fn null_lists_and_activity_get_defaults() {
        let role: Role = serde_json::from_value(json!({
            "_id": "65f1c0ffee0ddba11c0ffee0", "name": "r", "realname": null, "email": null,
            "is_active": null, "created": "2026-11-27T12:00:00", "updated": null,
            "etag": "e", "role": null, "perm": null
        }))
        .unwrap();
        assert!(role.is_active && role.role.is_empty() && role.perm.is_empty());
        assert_eq!(role.kind(), "role");
    }

    #[test]
    fn json_field_names_are_stable() {
        let role: Role = serde_json::from_value(json!({
            "_id": "1", "name": "alice", "email": "a@x.io", "is_active": true, "role": ["r"], "perm": []
        }))
        .unwrap();
        let value = serde_json::to_value(&role).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "_id",
                "created",
                "email",
                "etag",
                "is_active",
                "name",
                "perm",
                "realname",
                "role",
                "updated"
            ]
        );
    }

    #[test]
    fn perms_are_trimmed_and_unique() {
        let given = vec![
            "cop".to_owned(),
            " cop ".to_owned(),
            "".to_owned(),
            "api://x".to_owned(),
        ];
        assert_eq!(perms(&given), ["cop", "api://x"]);
    }
}
