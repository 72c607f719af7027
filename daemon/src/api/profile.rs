//! `/profile`: the caller's own account.

use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json, types::Example};
use serde::Deserialize;

use super::{
    ApiTags, AppState, Strict,
    roles::{RoleChange, RoleOut, UpdateResponse, apply_change, password_of},
    spec::{ProfileUpdateFailures, ReadFailures, Reply},
};
use crate::{
    auth::{Method, TokenAuth, qual},
    envelope::{Envelope, format_ts, ok},
    error::ApiError,
    storage,
};

pub struct ProfileApi {
    pub state: AppState,
}

/// The caller's account with its cascade and the expiry of the presented token.
#[derive(Object)]
pub struct Profile {
    #[oai(flatten)]
    pub role: RoleOut,
    pub role_total: Vec<String>,
    pub perm_total: Vec<String>,
    /// When the presented token expires (UTC).
    pub token_expires: String,
}

#[derive(ApiResponse)]
pub enum ProfileResponse {
    /// The caller's own account.
    #[oai(status = 200)]
    Ok(Json<Envelope<Profile>>),
}

/// What a user may change about themselves. Copy `etag` from `GET /profile`.
#[derive(Object, Deserialize)]
#[oai(deny_unknown_fields, example, skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// Required: the current etag.
    #[oai(validator(max_length = 64))]
    pub etag: Option<String>,
    #[oai(validator(max_length = 256))]
    pub realname: Option<String>,
    #[oai(validator(max_length = 254))]
    pub email: Option<String>,
    /// A new password (ends all the user's tokens, this one included).
    #[oai(validator(max_length = 1024))]
    pub password: Option<String>,
    /// Alias of `password`.
    #[oai(validator(max_length = 1024))]
    pub passwd: Option<String>,
}

impl Example for ProfileUpdate {
    fn example() -> Self {
        Self {
            etag: Some("65f1c2a9e4b0a1b2c3d4e5f6".into()),
            realname: Some("Alice A. Example".into()),
            email: None,
            password: None,
            passwd: None,
        }
    }
}

#[OpenApi(tag = "ApiTags::Profile")]
impl ProfileApi {
    /// Who am I
    ///
    /// The caller's own user with `role_total`, `perm_total` and `token_expires`. Needs
    /// `api://core4.api.v1.request.standard.profile.ProfileHandler` (the `standard_user` role
    /// has it).
    #[oai(path = "/profile", method = "get")]
    async fn get(&self, auth: TokenAuth) -> Reply<ProfileResponse, ReadFailures> {
        let me = self
            .state
            .auth
            .require(&auth, qual::PROFILE, Method::Read)
            .await?;
        // The cascade comes with the (cached) principal; only the row itself is read.
        let row = storage::roles::get(&self.state.pool, &me.id)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("token revoked".into()))?;
        let (role_total, perm_total) = (me.role_total.clone(), me.perms.all().to_vec());
        let expires = time::OffsetDateTime::from_unix_timestamp(me.claims.exp)
            .map(format_ts)
            .unwrap_or_default();
        Ok(ProfileResponse::Ok(ok(Profile {
            role: row.into(),
            role_total,
            perm_total,
            token_expires: expires,
        })))
    }

    /// Change my real name, email or password
    ///
    /// `etag` is required; a stale one is a 409. Unchanged data gives `no changes`. Name,
    /// roles and permissions cannot be changed here.
    #[oai(path = "/profile", method = "put")]
    async fn put(
        &self,
        auth: TokenAuth,
        body: Json<Strict<ProfileUpdate>>,
    ) -> Reply<UpdateResponse, ProfileUpdateFailures> {
        let me = self
            .state
            .auth
            .require(&auth, qual::PROFILE, Method::Update)
            .await?;
        let b = body.0.0;
        let password = password_of(b.password, b.passwd)?;
        let change = RoleChange {
            etag: b.etag,
            name: None,
            realname: b.realname,
            email: b.email,
            password,
            role: None,
            perm: None,
            is_active: None,
        };
        Ok(UpdateResponse::Ok(ok(apply_change(
            &self.state,
            None,
            &me.id,
            change,
        )
        .await?)))
    }
}
