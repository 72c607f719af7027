//! `/roles`: users and roles (core4's RoleHandler).

use std::borrow::Cow;

use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{Example, ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde::Deserialize;

use super::{
    ApiTags, AppState, Strict,
    spec::{
        CreateFailures, DeleteFailures, GetFailures, ListFailures, ReadFailures, Reply,
        UpdateFailures,
    },
};
use crate::{
    auth::{Method, Principal, TokenAuth, qual},
    domain::{Email, ObjectId, Password, Permission, RoleName},
    envelope::{Envelope, Page, Paged, format_ts, ok},
    error::{ApiError, ApiResult, quote},
    storage::{
        self,
        roles::{Changed, ListFilter, NewRole, Paging, RoleRow, SortKey},
    },
};

pub struct RolesApi {
    pub state: AppState,
}

/// A user (has `email` and, to log in, a password) or a role (has neither). Fields without a
/// value (`realname`, `email`, `updated`, `last_login`) are left out, never `null`.
#[derive(Object, Clone, Debug)]
#[oai(skip_serializing_if_is_none)]
pub struct RoleOut {
    /// 24 hex digits.
    #[oai(rename = "_id")]
    pub id: String,
    pub name: String,
    pub realname: Option<String>,
    pub email: Option<String>,
    pub is_active: bool,
    pub created: String,
    pub updated: Option<String>,
    pub last_login: Option<String>,
    /// Pass it back on update and delete; it changes with every change.
    pub etag: String,
    /// Names of the roles held directly, sorted.
    pub role: Vec<String>,
    /// Own permissions, sorted.
    pub perm: Vec<String>,
}

impl From<RoleRow> for RoleOut {
    fn from(r: RoleRow) -> Self {
        let mut perm = r.perm;
        perm.sort();
        Self {
            id: r.id,
            name: r.name,
            realname: r.realname,
            email: r.email,
            is_active: r.is_active,
            created: format_ts(r.created),
            updated: r.updated.map(format_ts),
            last_login: r.last_login.map(format_ts),
            etag: r.etag,
            role: r.role,
            perm,
        }
    }
}

/// A user or role with its cascade.
#[derive(Object)]
pub struct RoleDetail {
    #[oai(flatten)]
    pub role: RoleOut,
    /// Every role reached through the cascade (inactive roles and the role itself excluded).
    pub role_total: Vec<String>,
    /// Own permissions plus those of every cascaded role, sorted.
    pub perm_total: Vec<String>,
}

/// Creating a user or role. Unknown fields are rejected.
#[derive(Object, Deserialize)]
#[oai(deny_unknown_fields, example, skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
pub struct RoleCreate {
    /// Required; at most 64 characters after NFKC normalisation; no whitespace, invisible or
    /// default-ignorable characters; letters of one script; not 24 hex digits (that is an id).
    /// Unique case-insensitively and by look-alike (Unicode TR39 skeleton): `аdmin` with a
    /// Cyrillic a, `ａdmin` or `adrnin` beside `admin` is a 409.
    #[oai(validator(max_length = 64))]
    pub name: Option<String>,
    #[oai(validator(max_length = 256))]
    pub realname: Option<String>,
    /// A user's email (unique). A password requires an email.
    #[oai(validator(max_length = 254))]
    pub email: Option<String>,
    /// The password (at least 8 characters). `passwd` is accepted too (today's core4 name).
    #[oai(validator(max_length = 1024))]
    pub password: Option<String>,
    /// Alias of `password`.
    #[oai(validator(max_length = 1024))]
    pub passwd: Option<String>,
    /// Roles to hold (`standard_user` lets a user log in, see its profile and chat). A reference
    /// of 24 hex digits is a role id, anything else a role name.
    #[oai(validator(max_items = 256))]
    pub role: Option<Vec<String>>,
    /// Permissions: `cop`, `api://<handler pattern>[/<crud>]` (e.g.
    /// `api://core4.api.v1.request.standard`), `job://<pattern>`, `app://<pattern>`,
    /// `mongodb://<database>`, `event://<channel>/<r|w|rw>`.
    #[oai(validator(max_items = 256))]
    pub perm: Option<Vec<String>>,
    /// Default true.
    pub is_active: Option<bool>,
}

/// Changing a user or role: each given field replaces the old value. Copy `etag` from the
/// object as `GET /roles/{id}` returns it now.
#[derive(Object, Deserialize)]
#[oai(deny_unknown_fields, example, skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
pub struct RoleUpdate {
    /// Required: the etag the change is based on.
    #[oai(validator(max_length = 64))]
    pub etag: Option<String>,
    #[oai(validator(max_length = 64))]
    pub name: Option<String>,
    #[oai(validator(max_length = 256))]
    pub realname: Option<String>,
    #[oai(validator(max_length = 254))]
    pub email: Option<String>,
    #[oai(validator(max_length = 1024))]
    pub password: Option<String>,
    #[oai(validator(max_length = 1024))]
    pub passwd: Option<String>,
    #[oai(validator(max_items = 256))]
    pub role: Option<Vec<String>>,
    #[oai(validator(max_items = 256))]
    pub perm: Option<Vec<String>>,
    pub is_active: Option<bool>,
    /// Accepted and ignored (core4 clients send detail replies back).
    pub perm_total: Option<Vec<String>>,
    /// Accepted and ignored.
    pub role_total: Option<Vec<String>>,
    /// Accepted and ignored.
    #[oai(rename = "_id")]
    #[serde(rename = "_id")]
    pub id: Option<String>,
    /// Accepted and ignored.
    pub created: Option<String>,
    /// Accepted and ignored.
    pub updated: Option<String>,
    /// Accepted and ignored.
    pub last_login: Option<String>,
}

/// An example user (`POST /roles` as shown creates it, once).
impl Example for RoleCreate {
    fn example() -> Self {
        Self {
            name: Some("alice".into()),
            realname: Some("Alice Example".into()),
            email: Some("alice@example.com".into()),
            password: Some("correct-horse-battery".into()),
            passwd: None,
            role: Some(vec!["standard_user".into()]),
            perm: None,
            is_active: None,
        }
    }
}

impl Example for RoleUpdate {
    fn example() -> Self {
        Self {
            etag: Some("65f1c2a9e4b0a1b2c3d4e5f6".into()),
            name: None,
            realname: Some("Alice B. Example".into()),
            email: None,
            password: None,
            passwd: None,
            role: None,
            perm: None,
            is_active: None,
            perm_total: None,
            role_total: None,
            id: None,
            created: None,
            updated: None,
            last_login: None,
        }
    }
}

#[derive(ApiResponse)]
pub enum ListResponse {
    /// A page of users and roles, with the pager fields.
    #[oai(status = 200)]
    Ok(Json<Paged<RoleOut>>),
}

#[derive(ApiResponse)]
pub enum CreateResponse {
    /// Created; `data` is the new user or role as stored.
    #[oai(status = 200)]
    Ok(Json<Envelope<RoleOut>>),
}

#[derive(ApiResponse)]
pub enum DistinctResponse {
    /// Every name, sorted.
    #[oai(status = 200)]
    Ok(Json<Envelope<Vec<String>>>),
}

#[derive(ApiResponse)]
pub enum GetResponse {
    /// The user or role with its cascade.
    #[oai(status = 200)]
    Ok(Json<Envelope<RoleDetail>>),
}

#[derive(ApiResponse)]
pub enum UpdateResponse {
    /// Changed (`data` is the object as stored, with its new etag), or `data` is `no changes`.
    #[oai(status = 200)]
    Ok(Json<Envelope<UpdateResult>>),
}

/// The updated object, or the string `no changes` (core4 clients compare `data` with it).
pub enum UpdateResult {
    Updated(Box<RoleOut>),
    Unchanged,
}

const NO_CHANGES: &str = "no changes";

// Written by hand: poem-openapi's `Union` declares every union `type: object`, which no string
// (`no changes`) can satisfy.
impl Type for UpdateResult {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "UpdateResult".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(Self::name().into_owned())
    }

    fn register(registry: &mut Registry) {
        registry.create_schema::<Self, _>(Self::name().into_owned(), |registry| {
            RoleOut::register(registry);
            MetaSchema {
                description: Some("The updated object, or the string `no changes`."),
                any_of: vec![
                    RoleOut::schema_ref(),
                    MetaSchemaRef::Inline(Box::new(MetaSchema {
                        enum_items: vec![serde_json::Value::from(NO_CHANGES)],
                        ..MetaSchema::new("string")
                    })),
                ],
                ..MetaSchema::ANY
            }
        })
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ToJSON for UpdateResult {
    fn to_json(&self) -> Option<serde_json::Value> {
        match self {
            Self::Updated(role) => role.to_json(),
            Self::Unchanged => Some(NO_CHANGES.into()),
        }
    }
}

impl ParseFromJSON for UpdateResult {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            Some(serde_json::Value::String(s)) if s == NO_CHANGES => Ok(Self::Unchanged),
            other => RoleOut::parse_from_json(other)
                .map(|r| Self::Updated(Box::new(r)))
                .map_err(ParseError::propagate),
        }
    }
}

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Deleted; the role is also removed from every other role's `role` list.
    #[oai(status = 200)]
    Ok(Json<Envelope<bool>>),
}

/// The new password from `password` or its alias `passwd` (both given must agree).
pub(super) fn password_of(
    password: Option<String>,
    passwd: Option<String>,
) -> ApiResult<Option<Password>> {
    let pw = match (password, passwd) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::BadRequest(
                "fields [password] and [passwd] differ".into(),
            ));
        }
        (a, b) => a.or(b),
    };
    pw.filter(|p| !p.is_empty())
        .map(|p| Password::parse(&p).map_err(ApiError::BadRequest))
        .transpose()
}

fn parse_perms(perms: Vec<String>) -> ApiResult<Vec<String>> {
    let mut out: Vec<String> = perms
        .iter()
        .map(|p| {
            Permission::parse(p)
                .map(|p| p.as_str().to_string())
                .map_err(ApiError::BadRequest)
        })
        .collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn parse_email(email: Option<String>) -> ApiResult<Option<String>> {
    email
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            Email::parse(&e)
                .map(|e| e.as_str().to_string())
                .map_err(ApiError::BadRequest)
        })
        .transpose()
}

/// Longest `realname`, in characters.
pub const MAX_REALNAME_CHARS: usize = 256;
/// Most entries in a `role` or `perm` list.
pub const MAX_LIST_ITEMS: usize = 256;
/// Longest `etag`, in characters (every etag core4d hands out has 24).
pub const MAX_ETAG_CHARS: usize = 64;

fn realname_of(r: Option<String>) -> ApiResult<Option<String>> {
    let r = r.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    if r.as_ref()
        .is_some_and(|s| s.chars().count() > MAX_REALNAME_CHARS)
    {
        return Err(ApiError::BadRequest(format!(
            "field [realname] must be at most {MAX_REALNAME_CHARS} characters"
        )));
    }
    Ok(r)
}

fn check_list(field: &str, list: Option<&Vec<String>>) -> ApiResult<()> {
    if list.is_some_and(|l| l.len() > MAX_LIST_ITEMS) {
        return Err(ApiError::BadRequest(format!(
            "field [{field}] must have at most {MAX_LIST_ITEMS} entries"
        )));
    }
    Ok(())
}

/// A non-empty etag of sane length, or 400.
fn etag_of(etag: Option<String>) -> ApiResult<String> {
    let etag = etag
        .filter(|e| !e.is_empty())
        .ok_or_else(|| ApiError::BadRequest("Missing argument etag".into()))?;
    if etag.chars().count() > MAX_ETAG_CHARS {
        return Err(ApiError::BadRequest(format!(
            "field [etag] must be at most {MAX_ETAG_CHARS} characters"
        )));
    }
    Ok(etag)
}

fn parse_id(id: &str) -> ApiResult<String> {
    ObjectId::parse(id)
        .map(|o| o.to_string())
        .ok_or_else(|| ApiError::BadRequest(format!("failed to parse ObjectId [{}]", quote(id))))
}

fn need_cop(me: &Principal, what: &str) -> ApiResult<()> {
    if me.perms.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("only a cop may change {what}")))
    }
}

impl RolesApi {
    async fn detail(&self, id: &str) -> ApiResult<RoleDetail> {
        let row = storage::roles::get(&self.state.pool, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("role [{id}] not found")))?;
        let (role_total, perm_total) = storage::roles::cascade(&self.state.pool, id).await?;
        Ok(RoleDetail {
            role: row.into(),
            role_total,
            perm_total,
        })
    }

    async fn delete_role(
        &self,
        auth: TokenAuth,
        id: String,
        etag: Option<String>,
    ) -> ApiResult<DeleteResponse> {
        let me = self
            .state
            .auth
            .require(&auth, qual::ROLES, Method::Delete)
            .await?;
        let id = parse_id(&id)?;
        let etag = etag_of(etag)?;
        let mut tx = storage::roles::begin_change(&self.state.pool).await?;
        let old = storage::roles::load_for_change(&mut tx, &id).await?;
        check_delegated(&me, &old, "delete")?;
        check_not_above(&mut tx, &me, &id, "delete").await?;
        storage::roles::delete(&mut tx, &id, &etag).await?;
        if storage::roles::active_cops(&mut tx).await? == 0 {
            return Err(ApiError::Conflict(
                "cannot delete the last active cop".into(),
            ));
        }
        storage::tokens::bump_epoch(&mut tx).await?;
        tx.commit().await?;
        self.state.auth.invalidate();
        Ok(DeleteResponse::Ok(ok(true)))
    }
}

#[OpenApi(tag = "ApiTags::Roles")]
impl RolesApi {
    /// List users and roles
    ///
    /// Paged (`page` 0-based, negative counts from the end; `per_page` 1 to the configured
    /// maximum, default 10), sorted by `sort` (`_id`, `name`, `realname`, `email`, `created`) in
    /// `order` 1 (ascending) or -1. Filters match literally: `name` and `email` exactly
    /// (case-insensitive), `realname` as a substring, `q` as a substring of name, real name,
    /// email or any permission. Needs
    /// `api://core4.api.v1.request.role.main.RoleHandler/r`.
    #[oai(path = "/roles", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        auth: TokenAuth,
        /// Page number (0-based; -1 is the last page).
        page: Query<Option<i64>>,
        /// Items per page.
        per_page: Query<Option<u32>>,
        /// Sort field.
        sort: Query<Option<String>>,
        /// 1 ascending (default), -1 descending.
        order: Query<Option<i32>>,
        /// Exact name (case-insensitive).
        name: Query<Option<String>>,
        /// Exact email.
        email: Query<Option<String>>,
        /// Real name contains (case-insensitive).
        realname: Query<Option<String>>,
        /// Free text (case-insensitive substring).
        q: Query<Option<String>>,
        /// Not supported: raw query filters were a security hole in core4; a request with it is
        /// rejected with 400.
        filter: Query<Option<String>>,
    ) -> Reply<ListResponse, ListFailures> {
        self.state
            .auth
            .require(&auth, qual::ROLES, Method::Read)
            .await?;
        if filter.0.is_some() {
            return Err(ApiError::BadRequest(
                "parameter [filter] is not supported: use name, email, realname or q".into(),
            )
            .into());
        }
        let pager = Page::new(page.0, per_page.0, self.state.settings.max_per_page)?;
        let sort_key = match sort.0.as_deref() {
            None => SortKey::Id,
            Some(s) => SortKey::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "parameter [sort] cannot be [{}]: use _id, name, realname, email or created",
                    quote(s)
                ))
            })?,
        };
        let desc = match order.0.unwrap_or(1) {
            1 => false,
            -1 => true,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "parameter [order] must be 1 or -1, not [{other}]"
                ))
                .into());
            }
        };
        let f = ListFilter {
            name: name.0,
            email: email.0,
            realname: realname.0,
            q: q.0,
        };
        let total = storage::roles::count(&self.state.pool, &f).await?;
        let (page, page_count, offset) = pager.resolve(total);
        let rows = if offset >= total {
            vec![]
        } else {
            let paging = Paging {
                sort: sort_key,
                desc,
                limit: pager.per_page,
                offset,
            };
            storage::roles::list(&self.state.pool, &f, paging).await?
        };
        Ok(ListResponse::Ok(pager.reply(
            page,
            page_count,
            total,
            rows.into_iter().map(RoleOut::from).collect(),
        )))
    }

    /// Create a user or role
    ///
    /// A user has an `email` and a `password` (`passwd` works too); a role has neither. `role`
    /// names roles to hold; an unknown one is a 404. Only a `cop` may set `perm`, `role` or
    /// `is_active`. A duplicate name or email is a 409 `name or email exists`.
    #[oai(path = "/roles", method = "post")]
    async fn create(
        &self,
        auth: TokenAuth,
        body: Json<Strict<RoleCreate>>,
    ) -> Reply<CreateResponse, CreateFailures> {
        let me = self
            .state
            .auth
            .require(&auth, qual::ROLES, Method::Create)
            .await?;
        let b = body.0.0;
        let name = RoleName::parse(
            b.name
                .as_deref()
                .ok_or_else(|| ApiError::BadRequest("Missing argument name".into()))?,
        )
        .map_err(ApiError::BadRequest)?;
        let password = password_of(b.password, b.passwd)?;
        let email = parse_email(b.email)?;
        if password.is_some() && email.is_none() {
            return Err(ApiError::BadRequest("user role requires email on creation".into()).into());
        }
        check_list("perm", b.perm.as_ref())?;
        check_list("role", b.role.as_ref())?;
        let realname = realname_of(b.realname)?;
        let perm = parse_perms(b.perm.unwrap_or_default())?;
        let roles = b.role.unwrap_or_default();
        if !perm.is_empty() || !roles.is_empty() || b.is_active == Some(false) {
            need_cop(&me, "perm, role or is_active")?;
        }
        let password_hash = match &password {
            Some(p) => Some(self.state.auth.hasher().hash(p, Some(&me.id)).await?),
            None => None,
        };
        let mut tx = storage::roles::begin_change(&self.state.pool).await?;
        let parents = storage::roles::resolve(&mut tx, &roles).await?;
        let new = NewRole {
            name: name.as_str().to_string(),
            realname,
            email,
            password_hash,
            is_active: b.is_active.unwrap_or(true),
            perm,
            parents,
        };
        let id = storage::roles::insert(&mut tx, new).await?;
        tx.commit().await?;
        let row = storage::roles::get(&self.state.pool, &id)
            .await?
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("created role vanished")))?;
        Ok(CreateResponse::Ok(ok(row.into())))
    }

    /// All names
    ///
    /// The name of every user and role, sorted. Needs read access to roles.
    #[oai(path = "/roles/distinct", method = "get")]
    async fn distinct(&self, auth: TokenAuth) -> Reply<DistinctResponse, ReadFailures> {
        self.state
            .auth
            .require(&auth, qual::ROLES, Method::Read)
            .await?;
        Ok(DistinctResponse::Ok(ok(storage::roles::distinct_names(
            &self.state.pool,
        )
        .await?)))
    }

    /// One user or role
    ///
    /// With `role_total` and `perm_total`, the cascade through its roles.
    #[oai(path = "/roles/:id", method = "get")]
    async fn get(
        &self,
        auth: TokenAuth,
        /// 24 hex digits.
        id: Path<String>,
    ) -> Reply<GetResponse, GetFailures> {
        self.state
            .auth
            .require(&auth, qual::ROLES, Method::Read)
            .await?;
        let id = parse_id(&id.0)?;
        Ok(GetResponse::Ok(ok(self.detail(&id).await?)))
    }

    /// Change a user or role
    ///
    /// `etag` is required (400 `Missing argument etag`); a stale one is a 409. Each given field
    /// replaces the old value (`[]` clears a list). Nothing different: `data` is `no changes`
    /// (a password always counts as a change). Only a `cop` may change `perm`, `role` or
    /// `is_active`, or change a `cop`; the last active `cop` cannot lose its rights (409). A new
    /// password, deactivation or deletion ends all tokens of the user.
    #[oai(path = "/roles/:id", method = "put")]
    async fn update(
        &self,
        auth: TokenAuth,
        /// 24 hex digits.
        id: Path<String>,
        body: Json<Strict<RoleUpdate>>,
    ) -> Reply<UpdateResponse, UpdateFailures> {
        let me = self
            .state
            .auth
            .require(&auth, qual::ROLES, Method::Update)
            .await?;
        let id = parse_id(&id.0)?;
        let b = body.0.0;
        if b.perm.is_some() || b.role.is_some() || b.is_active.is_some() {
            need_cop(&me, "perm, role or is_active")?;
        }
        let change = RoleChange {
            etag: b.etag,
            name: b.name,
            realname: b.realname,
            email: b.email,
            password: password_of(b.password, b.passwd)?,
            role: b.role,
            perm: b.perm,
            is_active: b.is_active,
        };
        Ok(UpdateResponse::Ok(ok(apply_change(
            &self.state,
            Some(&me),
            &id,
            change,
        )
        .await?)))
    }

    /// Delete a user or role
    ///
    /// `etag` is required. The role disappears from every other role's `role` list. The last
    /// active `cop` cannot be deleted (409).
    #[oai(path = "/roles/:id", method = "delete")]
    async fn delete(
        &self,
        auth: TokenAuth,
        /// 24 hex digits.
        id: Path<String>,
        /// The current etag (required).
        etag: Query<Option<String>>,
    ) -> Reply<DeleteResponse, DeleteFailures> {
        Ok(self.delete_role(auth, id.0, etag.0).await?)
    }

    /// Delete a user or role (etag in the path)
    ///
    /// As `DELETE /roles/{id}?etag=`.
    #[oai(
        path = "/roles/:id/:etag",
        method = "delete",
        operation_id = "delete_with_etag_path"
    )]
    async fn delete_path(
        &self,
        auth: TokenAuth,
        /// 24 hex digits.
        id: Path<String>,
        /// The current etag.
        etag: Path<String>,
    ) -> Reply<DeleteResponse, DeleteFailures> {
        Ok(self.delete_role(auth, id.0, Some(etag.0)).await?)
    }
}

/// A validated change request, shared by `PUT /roles/{id}` and `PUT /profile`.
pub struct RoleChange {
    pub etag: Option<String>,
    pub name: Option<String>,
    pub realname: Option<String>,
    pub email: Option<String>,
    pub password: Option<Password>,
    pub role: Option<Vec<String>>,
    pub perm: Option<Vec<String>>,
    pub is_active: Option<bool>,
}

/// What a non-cop holding role rights may never touch: the seeded admin and `standard_user`
/// (shared by everyone), and roles (they carry rights; giving one a password would make it an
/// account anyone could take over). Users are its business.
fn check_delegated(me: &Principal, target: &RoleRow, verb: &str) -> ApiResult<()> {
    if me.perms.is_admin() {
        return Ok(());
    }
    if target.seeded {
        return Err(ApiError::Forbidden(format!(
            "only a cop may {verb} the seeded role [{}]",
            target.name
        )));
    }
    if target.email.is_none() {
        return Err(ApiError::Forbidden(format!(
            "only a cop may {verb} a role; without cop, only users"
        )));
    }
    Ok(())
}

/// [`check_delegated`] for a change, and: without `cop`, nobody sets another account's password
/// or email (that would take the account over).
fn check_delegated_change(
    me: &Principal,
    target: &RoleRow,
    sets_password: bool,
    new_email: Option<&Option<String>>,
) -> ApiResult<()> {
    check_delegated(me, target, "change")?;
    if me.perms.is_admin() || target.id == me.id {
        return Ok(());
    }
    if sets_password {
        return Err(ApiError::Forbidden(
            "only a cop may set another account's password".into(),
        ));
    }
    if new_email.is_some_and(|e| *e != target.email) {
        return Err(ApiError::Forbidden(
            "only a cop may change another account's email".into(),
        ));
    }
    Ok(())
}

/// A non-cop may only change or delete what holds no right it lacks itself: otherwise setting
/// another user's password would take over that user's rights (a `cop`'s included). Checked
/// inside the change's transaction, over every parent role, inactive ones too (they can be
/// switched on again).
async fn check_not_above(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    me: &Principal,
    id: &str,
    verb: &str,
) -> ApiResult<()> {
    if me.perms.is_admin() {
        return Ok(());
    }
    let perms = storage::roles::all_reachable_perms(tx, id).await?;
    if perms.iter().all(|p| me.perms.all().contains(p)) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "only a cop may {verb} a user or role holding rights the caller lacks"
        )))
    }
}

/// Applies a change under its etag, keeping the invariants: users need an email for a
/// password, the last active `cop` stays, tokens end on password change and deactivation.
/// `actor` is checked against the target's rights (`None`: a user changing their own profile).
pub async fn apply_change(
    state: &AppState,
    actor: Option<&Principal>,
    id: &str,
    c: RoleChange,
) -> ApiResult<UpdateResult> {
    let etag = etag_of(c.etag)?;
    check_list("perm", c.perm.as_ref())?;
    check_list("role", c.role.as_ref())?;
    let realname = c.realname.map(|r| realname_of(Some(r))).transpose()?;
    let name = c
        .name
        .as_deref()
        .map(RoleName::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let email = match c.email {
        Some(e) => Some(parse_email(Some(e))?),
        None => None,
    };
    let perm = c.perm.map(parse_perms).transpose()?;
    let password_hash = match &c.password {
        Some(p) => {
            // A hash takes a hashing slot: a change that is forbidden or based on a stale etag
            // must not get one. (Checked again under the lock below.)
            let current = storage::roles::get(&state.pool, id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("role [{id}] not found")))?;
            if let Some(me) = actor {
                check_delegated_change(me, &current, true, email.as_ref())?;
            }
            if current.etag != etag {
                return Err(storage::roles::stale(id, &etag));
            }
            let caller = actor.map_or(id, |me| me.id.as_str());
            Some(state.auth.hasher().hash(p, Some(caller)).await?)
        }
        None => None,
    };
    let mut tx = storage::roles::begin_change(&state.pool).await?;
    let old = storage::roles::load_for_change(&mut tx, id).await?;
    if let Some(me) = actor {
        check_delegated_change(me, &old, c.password.is_some(), email.as_ref())?;
        check_not_above(&mut tx, me, id, "change").await?;
    }
    let parents = match &c.role {
        Some(names) => Some(storage::roles::resolve(&mut tx, names).await?),
        None => None,
    };
    let old_parents = storage::roles::parent_ids(&mut tx, id).await?;
    let new_email = email.clone().unwrap_or(old.email.clone());
    let has_password = password_hash.is_some() || old.has_password;
    if has_password && new_email.is_none() {
        return Err(ApiError::BadRequest(
            "user role requires email and password".into(),
        ));
    }
    let changed = Changed {
        name: name
            .as_ref()
            .map(|n| n.as_str().to_string())
            .unwrap_or(old.name.clone()),
        realname: match realname {
            Some(r) => r,
            None => old.realname.clone(),
        },
        email: new_email,
        is_active: c.is_active.unwrap_or(old.is_active),
        perm: perm.unwrap_or(old.perm.clone()),
        end_tokens: password_hash.is_some() || (old.is_active && c.is_active == Some(false)),
        password_hash: password_hash.map(Some),
        parents: parents.clone(),
    };
    let mut sorted_old_perm = old.perm.clone();
    sorted_old_perm.sort();
    let same_parents = parents.as_ref().is_none_or(|p| {
        let (mut a, mut b) = (p.clone(), old_parents.clone());
        a.sort();
        b.sort();
        a == b
    });
    let unchanged = changed.password_hash.is_none()
        && changed.name == old.name
        && changed.realname == old.realname
        && changed.email == old.email
        && changed.is_active == old.is_active
        && changed.perm == sorted_old_perm
        && same_parents;
    if unchanged {
        if etag != old.etag {
            return Err(storage::roles::stale(id, &etag));
        }
        return Ok(UpdateResult::Unchanged);
    }
    let rights_changed = changed.perm != sorted_old_perm
        || !same_parents
        || changed.is_active != old.is_active
        || changed.end_tokens;
    storage::roles::update(&mut tx, id, &etag, changed).await?;
    if rights_changed && storage::roles::active_cops(&mut tx).await? == 0 {
        return Err(ApiError::Conflict(
            "cannot remove the last active cop".into(),
        ));
    }
    // Any change, a rename included, reaches cached principals and open sockets.
    storage::tokens::bump_epoch(&mut tx).await?;
    tx.commit().await?;
    state.auth.invalidate();
    let row = storage::roles::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("role [{id}] not found")))?;
    Ok(UpdateResult::Updated(Box::new(row.into())))
}
