//! The API's security scheme: a token as Bearer header, `?token=` query argument or `token`
//! cookie, tried in that order.

use poem_openapi::{
    SecurityScheme,
    auth::{ApiKey, Bearer},
};

/// `Authorization: Bearer <token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT")]
pub struct BearerToken(pub Bearer);

/// `?token=<token>` (WebSocket clients cannot set headers).
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "token", key_in = "query")]
pub struct QueryToken(pub ApiKey);

/// The `token` cookie set by login.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "token", key_in = "cookie")]
pub struct CookieToken(pub ApiKey);

/// A token from any of the accepted places.
#[derive(SecurityScheme)]
pub enum TokenAuth {
    Bearer(BearerToken),
    Query(QueryToken),
    Cookie(CookieToken),
    #[oai(fallback)]
    Missing,
}

impl TokenAuth {
    pub fn token(&self) -> Option<&str> {
        match self {
            Self::Bearer(b) => Some(b.0.token.as_str()),
            Self::Query(q) => Some(q.0.key.as_str()),
            Self::Cookie(c) => Some(c.0.key.as_str()),
            Self::Missing => None,
        }
        .filter(|t| !t.is_empty())
    }
}

/// HTTP Basic credentials (login only).
#[derive(SecurityScheme)]
#[oai(ty = "basic")]
pub struct BasicCredentials(pub poem_openapi::auth::Basic);

/// What `/login` accepts: Basic credentials, or a token to exchange for a fresh one.
#[derive(SecurityScheme)]
pub enum LoginAuth {
    Basic(BasicCredentials),
    Bearer(BearerToken),
    Query(QueryToken),
    Cookie(CookieToken),
    #[oai(fallback)]
    Missing,
}
