//! argon2id hashing, always off the async runtime and bounded in concurrency (each hash holds
//! `m_cost` KiB of memory).

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use tokio::sync::Semaphore;

use crate::{domain::Password, error::ApiError, settings::Argon2Settings};

#[derive(Clone)]
pub struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, so timing does not reveal names.
    dummy_hash: Arc<String>,
}

impl Hasher {
    pub async fn new(settings: &Argon2Settings) -> anyhow::Result<Self> {
        let params = Params::new(settings.m_cost, settings.t_cost, settings.p_cost, None)
            .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let mut hasher = Self {
            params,
            permits: Arc::new(Semaphore::new(cores * 2)),
            dummy_hash: Arc::default(),
        };
        let dummy = hasher
            .hash_raw("core4d dummy password".to_string())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        hasher.dummy_hash = Arc::new(dummy);
        Ok(hasher)
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    pub async fn hash(&self, password: &Password) -> Result<String, ApiError> {
        self.hash_raw(password.expose().to_string()).await
    }

    async fn hash_raw(&self, password: String) -> Result<String, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            Self::argon2(params)
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(anyhow::anyhow!("hashing failed: {e}")))
    }

    /// Checks `password` against `hash`; with no hash (unknown user) it burns the same time and
    /// answers false.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let known = hash.is_some();
        let hash = hash
            .map(str::to_string)
            .unwrap_or_else(|| self.dummy_hash.as_str().to_string());
        let password = password.to_string();
        let params = self.params.clone();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Self::argon2(params)
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .map_err(ApiError::internal)?;
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Argon2Settings {
        Argon2Settings {
            m_cost: 1024,
            t_cost: 1,
            p_cost: 1,
        }
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let h = Hasher::new(&cheap()).await.unwrap();
        let hash = h
            .hash(&Password::parse("very secret").unwrap())
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(h.verify("very secret", Some(&hash)).await.unwrap());
        assert!(!h.verify("very secreT", Some(&hash)).await.unwrap());
        assert!(!h.verify("very secret", None).await.unwrap());
        assert!(!h.verify("very secret", Some("garbage")).await.unwrap());
    }
}
