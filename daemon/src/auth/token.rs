//! JWT (HS512) tokens: issued at login, carried as Bearer, `?token=` or cookie, revocable.

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode, errors::ErrorKind,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::ApiError;

/// The claims of a core4d token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id (tokens are bound to ids, not names).
    pub sub: String,
    /// The user's name when the token was issued (informational; core4 clients read it).
    pub name: String,
    /// Issue time, epoch seconds.
    pub iat: i64,
    /// Issue time as float epoch seconds (core4's `timestamp` claim).
    pub timestamp: f64,
    /// Expiry, epoch seconds.
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// Session id: set at password login, kept by refresh and exchange; logout revokes it.
    #[serde(default)]
    pub sid: String,
    /// The user's token version when issued; bumping it ends all the user's tokens.
    pub ver: i64,
}

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: i64,
}

impl TokenKeys {
    pub fn new(secret: &[u8], lifetime_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS512);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            lifetime: lifetime_secs as i64,
        }
    }

    /// A new token; `session` continues an existing session (refresh, exchange), `None` starts
    /// one (password login).
    pub fn issue(
        &self,
        user_id: &str,
        name: &str,
        version: i64,
        session: Option<&str>,
    ) -> Result<(String, Claims), ApiError> {
        let now = OffsetDateTime::now_utc();
        let jti = uuid::Uuid::new_v4().to_string();
        let sid = session.map(str::to_string).unwrap_or_else(|| jti.clone());
        let claims = Claims {
            sub: user_id.to_string(),
            name: name.to_string(),
            iat: now.unix_timestamp(),
            timestamp: now.unix_timestamp_nanos() as f64 / 1e9,
            exp: now.unix_timestamp() + self.lifetime,
            jti,
            sid,
            ver: version,
        };
        let token = encode(&Header::new(Algorithm::HS512), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok((token, claims))
    }

    pub fn lifetime_secs(&self) -> i64 {
        self.lifetime
    }

    /// Signature, algorithm and expiry; a bad token is a 401, never a 500.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map(|mut c| {
                if c.sid.is_empty() {
                    c.sid = c.jti.clone();
                }
                c
            })
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::Unauthorized("token expired".into()),
                _ => ApiError::Unauthorized("invalid token".into()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_carry_the_user() {
        let keys = TokenKeys::new(&[7; 64], 60);
        let (token, claims) = keys
            .issue("5be414ccde8b69542b70f4d7", "user1", 3, None)
            .unwrap();
        let back = keys.verify(&token).unwrap();
        assert_eq!(
            (back.sub.as_str(), back.name.as_str(), back.ver, back.jti),
            ("5be414ccde8b69542b70f4d7", "user1", 3, claims.jti)
        );
        assert_eq!(back.exp - back.iat, 60);
    }

    #[test]
    fn garbage_foreign_and_expired_tokens_are_401() {
        let keys = TokenKeys::new(&[7; 64], 60);
        let other = TokenKeys::new(&[8; 64], 60);
        let (foreign, _) = other.issue("x", "x", 0, None).unwrap();
        for bad in ["garbage", "a.b.c", foreign.as_str()] {
            assert!(
                matches!(keys.verify(bad), Err(ApiError::Unauthorized(m)) if m == "invalid token")
            );
        }
        let expired = TokenKeys {
            lifetime: -5,
            ..keys.clone()
        };
        let (old, _) = expired.issue("x", "x", 0, None).unwrap();
        assert!(
            matches!(keys.verify(&old), Err(ApiError::Unauthorized(m)) if m == "token expired")
        );
    }
}
