//! `roles` and `role_parents`: users and roles, and the role cascade.

use sqlx::{AssertSqlSafe, PgPool, Postgres, QueryBuilder, Transaction};
use time::OffsetDateTime;

use crate::{
    domain::{ObjectId, RoleName, looks_like_id},
    error::{ApiError, ApiResult},
};

#[derive(sqlx::FromRow)]
pub struct LoginRow {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub is_active: bool,
    pub token_version: i64,
}

pub async fn login_row(pool: &PgPool, name_key: &str) -> ApiResult<Option<LoginRow>> {
    Ok(sqlx::query_as("SELECT id, name, email, password_hash, is_active, token_version FROM roles WHERE name_key = $1")
        .bind(name_key)
        .fetch_optional(pool)
        .await?)
}

/// Stamps a successful login and remembers the address it came from (see [`is_known_source`]).
pub async fn record_login(pool: &PgPool, id: &str, addr: &str) -> ApiResult<()> {
    sqlx::query(
        "WITH stamp AS (UPDATE roles SET last_login = now() WHERE id = $1)
         INSERT INTO login_sources (role_id, addr) VALUES ($1, $2)
         ON CONFLICT (role_id, addr) DO UPDATE SET last_seen = now()",
    )
    .bind(id)
    .bind(addr)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether the user named `name_key` logged in successfully from `addr` within the last 90 days.
pub async fn is_known_source(pool: &PgPool, name_key: &str, addr: &str) -> ApiResult<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM login_sources s JOIN roles r ON r.id = s.role_id
                        WHERE r.name_key = $1 AND s.addr = $2
                          AND s.last_seen > now() - interval '90 days')",
    )
    .bind(name_key)
    .bind(addr)
    .fetch_one(pool)
    .await?)
}

/// Forgets login addresses not used for 90 days.
pub async fn purge_login_sources(pool: &PgPool) -> ApiResult<()> {
    sqlx::query("DELETE FROM login_sources WHERE last_seen < now() - interval '90 days'")
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(sqlx::FromRow, Clone, Debug)]
pub struct PrincipalRow {
    pub name: String,
    pub is_active: bool,
    pub token_version: i64,
    pub revoked: bool,
    pub perm_total: Vec<String>,
    /// Names of every role reached through the cascade, sorted, the user excluded.
    pub role_total: Vec<String>,
}

/// Walks `role_parents` from `$1`: active roles only, inactive ones are neither counted nor
/// descended into; UNION ends cycles.
const CASCADE: &str = "WITH RECURSIVE casc(id) AS (
        SELECT rp.parent_id FROM role_parents rp JOIN roles p ON p.id = rp.parent_id AND p.is_active
        WHERE rp.role_id = $1
      UNION
        SELECT rp.parent_id FROM casc c JOIN role_parents rp ON rp.role_id = c.id
        JOIN roles p ON p.id = rp.parent_id AND p.is_active
    )";

/// Everything a token check needs, in one round trip.
pub async fn principal_row(pool: &PgPool, id: &str, sid: &str) -> ApiResult<Option<PrincipalRow>> {
    let Ok(sid) = uuid::Uuid::parse_str(sid) else {
        return Ok(None);
    };
    let sql = format!(
        "{CASCADE}
        SELECT u.name, u.is_active, u.token_version,
               EXISTS (SELECT 1 FROM revoked_sessions t WHERE t.sid = $2) AS revoked,
               ARRAY(SELECT DISTINCT p FROM (
                    SELECT unnest(u.perm) AS p
                    UNION SELECT unnest(r.perm) FROM casc JOIN roles r ON r.id = casc.id
               ) perms ORDER BY p) AS perm_total,
               ARRAY(SELECT DISTINCT r.name FROM casc JOIN roles r ON r.id = casc.id
                     WHERE r.id <> $1 ORDER BY r.name) AS role_total
        FROM roles u WHERE u.id = $1"
    );
    Ok(sqlx::query_as(AssertSqlSafe(sql))
        .bind(id)
        .bind(sid)
        .fetch_optional(pool)
        .await?)
}

/// A user or role as the API shows it.
#[derive(sqlx::FromRow, Clone, Debug)]
pub struct RoleRow {
    pub id: String,
    pub name: String,
    pub realname: Option<String>,
    pub email: Option<String>,
    pub has_password: bool,
    pub is_active: bool,
    /// Seeded by core4d (the bootstrap admin, `standard_user`): only a cop may change it.
    pub seeded: bool,
    pub perm: Vec<String>,
    pub created: OffsetDateTime,
    pub updated: Option<OffsetDateTime>,
    pub last_login: Option<OffsetDateTime>,
    pub etag: String,
    /// Names of the roles this one holds directly, sorted, itself excluded.
    pub role: Vec<String>,
}

const SELECT_ROLE: &str =
    "SELECT r.id, r.name, r.realname, r.email, r.password_hash IS NOT NULL AS has_password,
        r.is_active, r.seeded, r.perm, r.created, r.updated, r.last_login, r.etag,
        ARRAY(SELECT p.name FROM role_parents rp JOIN roles p ON p.id = rp.parent_id
              WHERE rp.role_id = r.id AND rp.parent_id <> r.id ORDER BY p.name) AS role
    FROM roles r";

pub async fn get(pool: &PgPool, id: &str) -> ApiResult<Option<RoleRow>> {
    Ok(
        sqlx::query_as(AssertSqlSafe(format!("{SELECT_ROLE} WHERE r.id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

async fn get_tx(tx: &mut Transaction<'_, Postgres>, id: &str) -> ApiResult<Option<RoleRow>> {
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT_ROLE} WHERE r.id = $1 FOR UPDATE OF r"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// The cascade of `id`: (`role_total` names, `perm_total`), both sorted, `id` itself excluded
/// from the names.
pub async fn cascade(pool: &PgPool, id: &str) -> ApiResult<(Vec<String>, Vec<String>)> {
    let sql = format!(
        "{CASCADE}
        SELECT ARRAY(SELECT DISTINCT r.name FROM casc JOIN roles r ON r.id = casc.id WHERE r.id <> $1 ORDER BY r.name) AS names,
               ARRAY(SELECT DISTINCT p FROM (
                    SELECT unnest(u.perm) AS p FROM roles u WHERE u.id = $1
                    UNION SELECT unnest(r.perm) FROM casc JOIN roles r ON r.id = casc.id
               ) perms ORDER BY p) AS perms"
    );
    Ok(sqlx::query_as(AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(pool)
        .await?)
}

/// Whitelisted listing filters; values match literally, never as patterns.
#[derive(Default, Debug)]
pub struct ListFilter {
    /// Exact, case-insensitive.
    pub name: Option<String>,
    /// Exact (emails are stored lowercased).
    pub email: Option<String>,
    /// Case-insensitive substring.
    pub realname: Option<String>,
    /// Case-insensitive substring of name, real name, email or a permission.
    pub q: Option<String>,
}

#[derive(Clone, Copy, Debug)]
pub enum SortKey {
    Id,
    Name,
    Realname,
    Email,
    Created,
}

impl SortKey {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "_id" | "id" => Self::Id,
            "name" => Self::Name,
            "realname" => Self::Realname,
            "email" => Self::Email,
            "created" => Self::Created,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            Self::Id => "r.id",
            Self::Name => "r.name",
            Self::Realname => "r.realname",
            Self::Email => "r.email",
            Self::Created => "r.created",
        }
    }
}

fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// How `q` is matched. Both give the same rows; they differ in speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// The trigram index `roles_search` (pg_trgm) narrows a `q` with a trigram down.
    Trigram,
    /// Every role's `search_text` is read (no pg_trgm, or no privilege to create it).
    Scan,
}

const SEARCH_INDEX: &str = "roles_search";

/// Held while one instance creates the search index.
const SEARCH_LOCK: i64 = 4242002;

fn push_filter(qb: &mut QueryBuilder<Postgres>, f: &ListFilter) {
    qb.push(" WHERE true");
    if let Some(name) = &f.name {
        qb.push(" AND r.name_key = ")
            .push_bind(RoleName::key_of(name));
    }
    if let Some(email) = &f.email {
        qb.push(" AND r.email = ")
            .push_bind(email.trim().to_lowercase());
    }
    if let Some(realname) = &f.realname {
        qb.push(" AND r.realname ILIKE ")
            .push_bind(like_escape(realname));
    }
    if let Some(q) = &f.q {
        // The stored, case-folded haystack of migration 0009; the trigram index, where there
        // is one, serves this LIKE.
        qb.push(" AND r.search_text LIKE ")
            .push_bind(like_escape(&q.to_lowercase()));
    }
}

fn is_unfiltered(f: &ListFilter) -> bool {
    f.name.is_none() && f.email.is_none() && f.realname.is_none() && f.q.is_none()
}

fn count_query(prefix: &str, f: &ListFilter) -> QueryBuilder<Postgres> {
    let mut qb = QueryBuilder::new(format!("{prefix}SELECT count(*) FROM roles r"));
    push_filter(&mut qb, f);
    qb
}

pub async fn count(pool: &PgPool, f: &ListFilter) -> ApiResult<u64> {
    if is_unfiltered(f) {
        let n: i64 = sqlx::query_scalar("SELECT n FROM role_count")
            .fetch_one(pool)
            .await?;
        return Ok(n as u64);
    }
    let n: i64 = count_query("", f)
        .build_query_scalar()
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

/// One page of a listing.
#[derive(Clone, Copy, Debug)]
pub struct Paging {
    pub sort: SortKey,
    pub desc: bool,
    pub limit: u32,
    pub offset: u64,
}

fn list_query(prefix: &str, f: &ListFilter, p: Paging) -> QueryBuilder<Postgres> {
    // Page the ids first: PostgreSQL evaluates the select list (the `role` subquery) for every
    // row an OFFSET skips, so the full rows are built for the page only.
    let dir = if p.desc { "DESC" } else { "ASC" };
    // PostgreSQL's default null placement, so the (column, id) btrees serve both directions.
    let order = format!(" ORDER BY {} {dir}, r.id {dir}", p.sort.column());
    let mut qb = QueryBuilder::new(format!(
        "{prefix}{SELECT_ROLE} JOIN (SELECT r.id FROM roles r"
    ));
    push_filter(&mut qb, f);
    qb.push(format!("{order} LIMIT "));
    qb.push_bind(p.limit as i64)
        .push(" OFFSET ")
        .push_bind(p.offset.min(i64::MAX as u64) as i64);
    qb.push(format!(") page ON page.id = r.id{order}"));
    qb
}

pub async fn list(pool: &PgPool, f: &ListFilter, p: Paging) -> ApiResult<Vec<RoleRow>> {
    Ok(list_query("", f, p)
        .build_query_as()
        .fetch_all(pool)
        .await?)
}

/// The plans of the two queries a listing runs (the count, then the page), as `EXPLAIN` prints
/// them: for tests and for an operator checking that `q` uses the index.
pub async fn explain_list(pool: &PgPool, f: &ListFilter, p: Paging) -> ApiResult<(String, String)> {
    let mut plans = Vec::new();
    for mut qb in [count_query("EXPLAIN ", f), list_query("EXPLAIN ", f, p)] {
        let lines: Vec<String> = qb.build_query_scalar().fetch_all(pool).await?;
        plans.push(lines.join("\n"));
    }
    let page = plans.pop().unwrap_or_default();
    Ok((plans.pop().unwrap_or_default(), page))
}

/// How this database answers `q` now: [`Search::Trigram`] when the search index exists and is
/// valid.
pub async fn search_mode(pool: &PgPool) -> ApiResult<Search> {
    let valid: Option<bool> = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
    )
    .bind(SEARCH_INDEX)
    .fetch_optional(pool)
    .await?;
    Ok(if valid == Some(true) {
        Search::Trigram
    } else {
        Search::Scan
    })
}

/// Creates pg_trgm and the trigram index over the haystack where it can (at startup), else
/// logs once what is slower and how to enable it. Several instances may start at once: one
/// builds the index, the others wait for it.
pub async fn prepare_search(pool: &PgPool) -> Search {
    let started = std::time::Instant::now();
    match build_search_index(pool).await {
        Ok(built) => {
            if built {
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "built the trigram index for role search (`q`)"
                );
            }
            Search::Trigram
        }
        Err(why) => {
            tracing::warn!(
                "role search (GET /roles?q=) reads every role, slow with many roles: {why}; \
                 to enable its trigram index, run `CREATE EXTENSION pg_trgm;` in this database as \
                 a superuser (or grant core4d's database user CREATE on the database) and restart \
                 core4d. pg_trgm ships with PostgreSQL (Debian: in the postgresql package; \
                 elsewhere often postgresql-contrib)"
            );
            Search::Scan
        }
    }
}

/// PostgreSQL's own message, without sqlx's wrapping.
fn db(e: sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    }
}

/// Ok(true) when this call built the index, Ok(false) when it was there.
async fn build_search_index(pool: &PgPool) -> Result<bool, String> {
    if search_mode(pool).await.map_err(|e| e.to_string())? == Search::Trigram {
        return Ok(false);
    }
    let mut conn = pool.acquire().await.map_err(db)?;
    // Polled, not waited for: a statement waiting in pg_advisory_lock holds a snapshot, and
    // CREATE INDEX CONCURRENTLY in the instance holding the lock waits for old snapshots.
    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(SEARCH_LOCK)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let built = build_search_index_locked(&mut conn).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SEARCH_LOCK)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // Never hand a connection that may still hold the lock back to the pool.
        let _ = conn.close().await;
    }
    built
}

async fn build_search_index_locked(conn: &mut sqlx::PgConnection) -> Result<bool, String> {
    let valid: Option<bool> = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
    )
    .bind(SEARCH_INDEX)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    match valid {
        Some(true) => return Ok(false),
        // A concurrent build that was interrupted leaves an invalid index behind.
        Some(false) => {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {SEARCH_INDEX}"
            )))
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        None => {}
    }
    let schema_query = "SELECT quote_ident(n.nspname) FROM pg_extension e \
         JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'";
    let mut schema: Option<String> = sqlx::query_scalar(schema_query)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    if schema.is_none() {
        sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            .execute(&mut *conn)
            .await
            .map_err(|e| format!("the extension pg_trgm could not be created ({})", db(e)))?;
        schema = sqlx::query_scalar(schema_query)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    }
    let schema = schema.ok_or("the extension pg_trgm is missing after it was created")?;
    // CONCURRENTLY: instances already running keep writing roles (and logging in) meanwhile.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {SEARCH_INDEX} ON roles \
         USING gin (search_text {schema}.gin_trgm_ops)"
    )))
    .execute(&mut *conn)
    .await
    .map_err(|e| format!("the trigram index could not be created ({})", db(e)))?;
    Ok(true)
}

pub async fn distinct_names(pool: &PgPool) -> ApiResult<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT name FROM roles ORDER BY name")
        .fetch_all(pool)
        .await?)
}

/// Serialises every change to roles, so invariants checked inside the transaction (the last
/// active `cop`) cannot be broken by two concurrent changes.
pub async fn begin_change(pool: &PgPool) -> ApiResult<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(4242001)")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Resolves role references to ids by one rule: 24 hex digits are an id, anything else is a name
/// (names of that shape are refused, so the two cannot be confused). An unknown one is a 404
/// naming it.
pub async fn resolve(
    tx: &mut Transaction<'_, Postgres>,
    names: &[String],
) -> ApiResult<Vec<String>> {
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        let reference = name.trim();
        let id: Option<String> = if looks_like_id(reference) {
            sqlx::query_scalar("SELECT id FROM roles WHERE id = $1")
                .bind(reference.to_lowercase())
                .fetch_optional(&mut **tx)
                .await?
        } else {
            sqlx::query_scalar("SELECT id FROM roles WHERE name_key = $1")
                .bind(RoleName::key_of(reference))
                .fetch_optional(&mut **tx)
                .await?
        };
        let id = id.ok_or_else(|| {
            ApiError::NotFound(format!("role [{}] not found", crate::error::quote(name)))
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

pub struct NewRole {
    pub name: String,
    pub realname: Option<String>,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub is_active: bool,
    pub perm: Vec<String>,
    pub parents: Vec<String>,
}

fn map_unique(e: sqlx::Error) -> ApiError {
    if super::is_unique_violation(&e) {
        ApiError::Conflict("name or email exists".into())
    } else {
        e.into()
    }
}

pub async fn insert(tx: &mut Transaction<'_, Postgres>, new: NewRole) -> ApiResult<String> {
    let id = ObjectId::new().to_string();
    sqlx::query(
        "INSERT INTO roles (id, name, name_key, name_skeleton, realname, email, password_hash, is_active, perm, etag)
         VALUES ($1, $2, $3, $10, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(&new.name)
    .bind(RoleName::key_of(&new.name))
    .bind(&new.realname)
    .bind(&new.email)
    .bind(&new.password_hash)
    .bind(new.is_active)
    .bind(&new.perm)
    .bind(ObjectId::new().to_string())
    .bind(RoleName::skeleton_of(&new.name))
    .execute(&mut **tx)
    .await
    .map_err(map_unique)?;
    set_parents(tx, &id, &new.parents).await?;
    Ok(id)
}

async fn set_parents(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    parents: &[String],
) -> ApiResult<()> {
    sqlx::query("DELETE FROM role_parents WHERE role_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO role_parents (role_id, parent_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING")
        .bind(id)
        .bind(parents)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Locks and loads a role for a change; 404 when missing.
pub async fn load_for_change(tx: &mut Transaction<'_, Postgres>, id: &str) -> ApiResult<RoleRow> {
    get_tx(tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("role [{id}] not found")))
}

/// The new values of a changed role (all fields, already merged with the old ones).
pub struct Changed {
    pub name: String,
    pub realname: Option<String>,
    pub email: Option<String>,
    pub password_hash: Option<Option<String>>,
    pub is_active: bool,
    pub perm: Vec<String>,
    pub parents: Option<Vec<String>>,
    /// Ends all tokens of the role (password change, deactivation).
    pub end_tokens: bool,
}

/// Writes a change under the etag it was based on; a stale etag is a 409. Returns the new etag.
pub async fn update(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    etag: &str,
    c: Changed,
) -> ApiResult<String> {
    let new_etag = ObjectId::new().to_string();
    let done = sqlx::query(
        "UPDATE roles SET name = $3, name_key = $4, name_skeleton = $13, realname = $5, email = $6,
             password_hash = CASE WHEN $7 THEN $8 ELSE password_hash END,
             is_active = $9, perm = $10, etag = $11, updated = now(),
             token_version = token_version + CASE WHEN $12 THEN 1 ELSE 0 END
         WHERE id = $1 AND etag = $2",
    )
    .bind(id)
    .bind(etag)
    .bind(&c.name)
    .bind(RoleName::key_of(&c.name))
    .bind(&c.realname)
    .bind(&c.email)
    .bind(c.password_hash.is_some())
    .bind(c.password_hash.flatten())
    .bind(c.is_active)
    .bind(&c.perm)
    .bind(&new_etag)
    .bind(c.end_tokens)
    .bind(RoleName::skeleton_of(&c.name))
    .execute(&mut **tx)
    .await
    .map_err(map_unique)?;
    if done.rows_affected() == 0 {
        return Err(stale(id, etag));
    }
    if let Some(parents) = &c.parents {
        set_parents(tx, id, parents).await?;
    }
    Ok(new_etag)
}

pub fn stale(id: &str, etag: &str) -> ApiError {
    ApiError::Conflict(format!("update [{id}] with etag [{etag}] failed"))
}

pub async fn delete(tx: &mut Transaction<'_, Postgres>, id: &str, etag: &str) -> ApiResult<()> {
    let done = sqlx::query("DELETE FROM roles WHERE id = $1 AND etag = $2")
        .bind(id)
        .bind(etag)
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        Err(stale(id, etag))
    } else {
        Ok(())
    }
}

/// Active users (email and password) whose cascade holds `cop`.
pub async fn active_cops(tx: &mut Transaction<'_, Postgres>) -> ApiResult<i64> {
    Ok(sqlx::query_scalar(
        "WITH RECURSIVE reach(user_id, id) AS (
             SELECT u.id, u.id FROM roles u
             WHERE u.is_active AND u.email IS NOT NULL AND u.password_hash IS NOT NULL
           UNION
             SELECT r.user_id, rp.parent_id FROM reach r JOIN role_parents rp ON rp.role_id = r.id
             JOIN roles p ON p.id = rp.parent_id AND p.is_active
         )
         SELECT count(DISTINCT reach.user_id) FROM reach JOIN roles x ON x.id = reach.id WHERE 'cop' = ANY (x.perm)",
    )
    .fetch_one(&mut **tx)
    .await?)
}

/// The `server_settings` key recording when the bootstrap admin was created: it is created once
/// per database, never again (not after it was deleted either).
const ADMIN_CREATED_KEY: &str = "admin_created";

const NOW_UTC: &str = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"')";

/// When the bootstrap admin was created, if it ever was. A database from before this was
/// recorded counts as bootstrapped once it holds any user, and gets the record now.
pub async fn admin_created_at(pool: &PgPool) -> ApiResult<Option<String>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO server_settings (key, value)
         SELECT $1, {NOW_UTC} WHERE EXISTS (SELECT 1 FROM roles WHERE password_hash IS NOT NULL)
         ON CONFLICT (key) DO NOTHING"
    )))
    .bind(ADMIN_CREATED_KEY)
    .execute(pool)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT value FROM server_settings WHERE key = $1")
            .bind(ADMIN_CREATED_KEY)
            .fetch_optional(pool)
            .await?,
    )
}

/// Creates the `standard_user` role when missing, and the bootstrap admin when `admin_hash` is
/// given and the admin was never created on this database (recording that it now was).
/// Returns true when the admin was created by this call.
pub async fn seed(
    pool: &PgPool,
    admin_name: &str,
    admin_hash: Option<&str>,
    standard_perms: &[&str],
) -> ApiResult<bool> {
    let mut tx = begin_change(pool).await?;
    let mut created = false;
    // Under the change lock, so two instances starting on a new database create one admin.
    let recorded: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM server_settings WHERE key = $1)")
            .bind(ADMIN_CREATED_KEY)
            .fetch_one(&mut *tx)
            .await?;
    if let Some(admin_hash) = admin_hash.filter(|_| !recorded) {
        let admin = sqlx::query(
            "INSERT INTO roles (id, name, name_key, name_skeleton, realname, email, password_hash, perm, etag, seeded)
         VALUES ($1, $2, $3, $6, 'admin user', 'admin@core4d.invalid', $4, ARRAY['cop'], $5, true)
         ON CONFLICT DO NOTHING",
        )
        .bind(ObjectId::new().to_string())
        .bind(admin_name)
        .bind(RoleName::key_of(admin_name))
        .bind(admin_hash)
        .bind(ObjectId::new().to_string())
        .bind(RoleName::skeleton_of(admin_name))
        .execute(&mut *tx)
        .await?;
        created = admin.rows_affected() == 1;
        if created {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO server_settings (key, value) VALUES ($1, {NOW_UTC})"
            )))
            .bind(ADMIN_CREATED_KEY)
            .execute(&mut *tx)
            .await?;
        }
    }
    let perms: Vec<String> = standard_perms.iter().map(|s| s.to_string()).collect();
    sqlx::query(
        "INSERT INTO roles (id, name, name_key, name_skeleton, realname, perm, etag, seeded)
         VALUES ($1, 'standard_user', 'standard_user', $4, 'standard user group', $2, $3, true)
         ON CONFLICT (name_key) DO NOTHING",
    )
    .bind(ObjectId::new().to_string())
    .bind(&perms)
    .bind(ObjectId::new().to_string())
    .bind(RoleName::skeleton_of("standard_user"))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(created)
}

/// What [`set_password`] changed.
pub struct PasswordSet {
    pub id: String,
    pub is_active: bool,
}

/// Sets a user's password outside the API (`core4d admin reset-password`): ends every token of
/// the user, as a password change through the API does. `None` when there is no such user;
/// an error when the name is a role (no email) rather than a user.
pub async fn set_password(
    pool: &PgPool,
    name_key: &str,
    hash: &str,
) -> ApiResult<Option<PasswordSet>> {
    let mut tx = begin_change(pool).await?;
    let row: Option<(String, Option<String>, bool)> =
        sqlx::query_as("SELECT id, email, is_active FROM roles WHERE name_key = $1 FOR UPDATE")
            .bind(name_key)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((id, email, is_active)) = row else {
        return Ok(None);
    };
    if email.is_none() {
        return Err(ApiError::BadRequest(
            "it is a role, not a user (it has no email): a user needs an email and a password"
                .into(),
        ));
    }
    sqlx::query(
        "UPDATE roles SET password_hash = $2, token_version = token_version + 1, etag = $3,
             updated = now()
         WHERE id = $1",
    )
    .bind(&id)
    .bind(hash)
    .bind(ObjectId::new().to_string())
    .execute(&mut *tx)
    .await?;
    super::tokens::bump_epoch(&mut tx).await?;
    tx.commit().await?;
    Ok(Some(PasswordSet { id, is_active }))
}

pub async fn exists_by_name(pool: &PgPool, name_key: &str) -> ApiResult<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM roles WHERE name_key = $1)")
            .bind(name_key)
            .fetch_one(pool)
            .await?,
    )
}

/// Own permissions plus those of every role reachable from `id`, inactive ones included.
pub async fn all_reachable_perms(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> ApiResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "WITH RECURSIVE reach(id) AS (
             SELECT $1::text
           UNION
             SELECT rp.parent_id FROM reach JOIN role_parents rp ON rp.role_id = reach.id
         )
         SELECT DISTINCT p FROM reach JOIN roles r ON r.id = reach.id, unnest(r.perm) p",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?)
}

pub async fn parent_ids(tx: &mut Transaction<'_, Postgres>, id: &str) -> ApiResult<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT parent_id FROM role_parents WHERE role_id = $1")
            .bind(id)
            .fetch_all(&mut **tx)
            .await?,
    )
}

/// Fills in the confusable skeleton of rows stored before it existed. A row whose skeleton
/// another row already has keeps none (and is logged): renaming it sets one.
pub async fn backfill_skeletons(pool: &PgPool) -> ApiResult<()> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, name FROM roles WHERE name_skeleton IS NULL")
            .fetch_all(pool)
            .await?;
    for (id, name) in rows {
        let done = sqlx::query("UPDATE roles SET name_skeleton = $2 WHERE id = $1")
            .bind(&id)
            .bind(RoleName::skeleton_of(&name))
            .execute(pool)
            .await;
        if let Err(e) = done {
            if super::is_unique_violation(&e) {
                tracing::warn!(id, name, "this name looks like another one; rename it");
            } else {
                return Err(e.into());
            }
        }
    }
    Ok(())
}
