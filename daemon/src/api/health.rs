//! `/health` and `/_info`.

use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::{
    ApiTags, AppState,
    spec::{HealthFailures, ReadFailures, Reply},
};
use crate::{
    auth::{Method, TokenAuth, qual},
    envelope::{Envelope, ok},
    error::ApiError,
};

pub struct HealthApi {
    pub state: AppState,
}

/// Liveness of core4d and its database.
#[derive(Object)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The database answered.
    pub database: bool,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// core4d and its database are up.
    #[oai(status = 200)]
    Ok(Json<Envelope<Health>>),
}

#[derive(ApiResponse)]
pub enum InfoResponse {
    /// Project and version.
    #[oai(status = 200)]
    Ok(Json<Envelope<VersionInfo>>),
}

/// Version information (core4's `/_info?version`).
#[derive(Object)]
pub struct VersionInfo {
    /// `core4d`.
    pub project: String,
    /// core4d's version.
    pub version: String,
    /// The core4 API version this server speaks.
    pub core4: String,
}

#[OpenApi(tag = "ApiTags::Info")]
impl HealthApi {
    /// Health check
    ///
    /// Unauthenticated. 200 when the database answers, 503 otherwise.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> Reply<HealthResponse, HealthFailures> {
        let probe = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&self.state.pool),
        )
        .await;
        match probe {
            Ok(Ok(_)) => Ok(HealthResponse::Ok(ok(Health {
                status: "ok".into(),
                database: true,
            }))),
            Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string()).into()),
            Err(_) => Err(ApiError::Unavailable("database probe timed out".into()).into()),
        }
    }

    /// Version
    ///
    /// As core4's `/_info?version`: project and version. Needs an authenticated caller with
    /// access to the info handler (`standard_user` has it).
    #[oai(path = "/_info", method = "get")]
    async fn info(&self, auth: TokenAuth) -> Reply<InfoResponse, ReadFailures> {
        self.state
            .auth
            .require(&auth, qual::INFO, Method::Read)
            .await?;
        Ok(InfoResponse::Ok(ok(VersionInfo {
            project: "core4d".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            core4: "1.0.10".into(),
        })))
    }
}
