//! Authentication and authorisation: passwords, tokens, the security scheme of the API, and the
//! check that turns a credential into a [`Principal`] with its cascaded permissions.

mod cache;
mod limiter;
mod password;
mod scheme;
mod token;

use std::sync::Arc;

pub use limiter::LoginLimiter;
pub use password::Hasher;
pub use scheme::{LoginAuth, TokenAuth};
use sqlx::PgPool;
use time::OffsetDateTime;
pub use token::{Claims, TokenKeys};

use crate::{
    domain::{Access, PermissionSet, RegexCache, RoleName},
    envelope::set_refreshed_token,
    error::{ApiError, ApiResult},
    settings::Settings,
    storage,
};

pub use crate::domain::Access as Method;

/// core4 handler names: stored `api://` permissions refer to these, so they are kept verbatim.
pub mod qual {
    pub const LOGOUT: &str = "core4.api.v1.request.standard.logout.LogoutHandler";
    pub const PROFILE: &str = "core4.api.v1.request.standard.profile.ProfileHandler";
    pub const EVENT: &str = "core4.api.v1.request.standard.event.EventHandler";
    pub const EVENT_HISTORY: &str = "core4.api.v1.request.standard.event.EventHistoryHandler";
    pub const INFO: &str = "core4.api.v1.request.standard.info.InfoHandler";
    pub const ROLES: &str = "core4.api.v1.request.role.main.RoleHandler";
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    pub id: String,
    pub name: String,
    pub perms: PermissionSet,
    /// Every role the principal holds through the cascade, sorted.
    pub role_total: Vec<String>,
    pub claims: Claims,
}

#[derive(Clone)]
pub struct Auth {
    inner: Arc<AuthState>,
}

struct AuthState {
    pool: PgPool,
    keys: TokenKeys,
    hasher: Hasher,
    limiter: LoginLimiter,
    regex: RegexCache,
    refresh_secs: i64,
    cache: cache::PrincipalCache,
}

impl Auth {
    pub fn new(pool: PgPool, secret: &[u8], hasher: Hasher, settings: &Settings) -> Self {
        Self {
            inner: Arc::new(AuthState {
                pool,
                keys: TokenKeys::new(secret, settings.token_expiration),
                hasher,
                limiter: LoginLimiter::new(&settings.login_limit),
                regex: RegexCache::default(),
                refresh_secs: settings.token_refresh as i64,
                cache: cache::PrincipalCache::default(),
            }),
        }
    }

    pub fn hasher(&self) -> &Hasher {
        &self.inner.hasher
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.inner.keys
    }

    /// Password login: rate-limited (see [`LoginLimiter`]), constant-time whether or not the
    /// user exists. Returns a fresh token.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: &str,
    ) -> ApiResult<(String, Claims)> {
        // No name can be that long; refusing early keeps attacker-sized keys out of the limiter.
        if username.chars().count() > crate::domain::MAX_NAME_CHARS || password.len() > 1024 {
            return Err(ApiError::Unauthorized(
                "invalid username or password".into(),
            ));
        }
        let key = RoleName::key_of(username);
        let limiter = &self.inner.limiter;
        // One IPv6 host has a whole /64 to rotate through: it counts as one address.
        let addr = password::client_key(client);
        // Only when strangers used up the name's budget does it matter where this client is.
        let known_source = limiter.user_exhausted(&key)
            && storage::roles::is_known_source(&self.inner.pool, &key, client).await?;
        let attempt = limiter.begin(&key, &addr, known_source)?;
        let verified = async {
            let user = storage::roles::login_row(&self.inner.pool, &key).await?;
            let hash = user.as_ref().and_then(|u| u.password_hash.as_deref());
            let verified = self.inner.hasher.verify(client, password, hash).await?;
            Ok::<_, ApiError>((user, verified))
        }
        .await;
        // A busy hasher or an unreachable database judged no password: that is no failure.
        let (user, verified) = match verified {
            Ok(v) => v,
            Err(e) => {
                limiter.refund(attempt);
                return Err(e);
            }
        };
        match user {
            Some(u) if verified && u.is_active && u.email.is_some() => {
                limiter.refund(attempt);
                storage::roles::record_login(&self.inner.pool, &u.id, client).await?;
                self.inner.keys.issue(&u.id, &u.name, u.token_version, None)
            }
            _ => {
                tracing::info!(client, "failed login");
                Err(ApiError::Unauthorized(
                    "invalid username or password".into(),
                ))
            }
        }
    }

    /// Resolves a token into a principal: signature and expiry, then revocation (logout), the
    /// user's token version (password change, deactivation, deletion) and the cascaded
    /// permissions — one indexed query, or none while the principal cache holds the token.
    pub async fn verify_token(&self, token: &str) -> ApiResult<Principal> {
        self.verify(token, true).await
    }

    /// As [`Auth::verify_token`], always from the database: for re-checks that follow a change
    /// another instance made, whose invalidation NOTIFY may not have arrived yet.
    pub async fn verify_token_uncached(&self, token: &str) -> ApiResult<Principal> {
        self.verify(token, false).await
    }

    async fn verify(&self, token: &str, use_cache: bool) -> ApiResult<Principal> {
        let claims = self.inner.keys.verify(token)?;
        let cached = if use_cache {
            self.inner.cache.get(&claims.jti)
        } else {
            None
        };
        let row = match cached {
            Some(row) => Some(row),
            None => {
                let generation = self.inner.cache.generation();
                let row = storage::roles::principal_row(&self.inner.pool, &claims.sub, &claims.sid)
                    .await?;
                if let Some(row) = &row {
                    self.inner.cache.insert(generation, &claims.jti, row);
                }
                row
            }
        };
        let Some(row) = row else {
            return Err(ApiError::Unauthorized("token revoked".into()));
        };
        if row.revoked || !row.is_active || row.token_version != claims.ver {
            return Err(ApiError::Unauthorized("token revoked".into()));
        }
        Ok(Principal {
            id: claims.sub.clone(),
            name: row.name,
            perms: PermissionSet::new(row.perm_total),
            role_total: row.role_total,
            claims,
        })
    }

    /// The caller of an API request; hands out a refreshed token once the refresh interval passed.
    pub async fn authenticate(&self, cred: &TokenAuth) -> ApiResult<Principal> {
        let token = cred
            .token()
            .ok_or_else(|| ApiError::Unauthorized("authentication required".into()))?;
        let principal = self.verify_token(token).await?;
        if OffsetDateTime::now_utc().unix_timestamp() - principal.claims.iat
            > self.inner.refresh_secs
        {
            let (fresh, _) = self.inner.keys.issue(
                &principal.id,
                &principal.name,
                principal.claims.ver,
                Some(&principal.claims.sid),
            )?;
            set_refreshed_token(fresh);
        }
        Ok(principal)
    }

    /// Authenticates and checks core4's endpoint permission (`api://<qual_name>/<crud>`).
    pub async fn require(
        &self,
        cred: &TokenAuth,
        qual_name: &str,
        access: Access,
    ) -> ApiResult<Principal> {
        let principal = self.authenticate(cred).await?;
        if self.allowed(&principal, qual_name, access) {
            Ok(principal)
        } else {
            Err(ApiError::forbidden())
        }
    }

    pub fn allowed(&self, principal: &Principal, qual_name: &str, access: Access) -> bool {
        principal.perms.api(&self.inner.regex, qual_name, access)
    }

    /// Ends this token's session everywhere: the token and every token refreshed or exchanged
    /// from it.
    pub async fn revoke(&self, claims: &Claims) -> ApiResult<()> {
        storage::tokens::revoke(
            &self.inner.pool,
            &claims.sid,
            self.inner.keys.lifetime_secs(),
        )
        .await?;
        self.invalidate();
        Ok(())
    }

    /// Drops cached principals at once; call after committing a change of rights or tokens (other
    /// instances learn of it through the NOTIFY that the change committed).
    pub fn invalidate(&self) {
        self.inner.cache.invalidate();
    }

    /// Resolves after the next change of rights or tokens made here or (through its NOTIFY) on
    /// another instance; one waiter at a time (the socket re-check loop).
    pub async fn changed(&self) {
        self.inner.cache.changed().await
    }

    /// Keeps the principal cache coherent with changes made anywhere; runs until the pool closes.
    pub fn spawn_invalidation_listener(&self) -> tokio::task::JoinHandle<()> {
        let auth = self.clone();
        tokio::spawn(async move { auth.inner.cache.listen(auth.inner.pool.clone()).await })
    }
}
