//! The poem-openapi surface, one file per tag. Handlers parse input into domain types, check
//! permissions through [`crate::auth`], and call `storage` or `events`.

pub mod events;
pub mod health;
pub mod login;
pub mod profile;
pub mod roles;

use std::{borrow::Cow, sync::Arc};

use poem_openapi::{
    OpenApiService, Tags,
    registry::{MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde::de::DeserializeOwned;
use sqlx::PgPool;

use crate::{auth::Auth, events::Hub, metrics::Metrics, settings::Settings};

/// Shared state, built once in `startup` and held by every API struct.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Auth,
    pub settings: Arc<Settings>,
    pub hub: Hub,
    pub metrics: Metrics,
}

#[derive(Tags)]
pub enum ApiTags {
    /// Logging in and out, tokens.
    Login,
    /// The caller's own account.
    Profile,
    /// Users and roles (admin).
    Roles,
    /// Event channels: the WebSocket and the message history.
    Events,
    /// Health and version.
    Info,
}

pub const BASE: &str = "/core4/api/v1";

/// The OpenAPI service of the whole API, mounted at [`BASE`].
pub fn service(
    state: &AppState,
) -> OpenApiService<
    (
        login::LoginApi,
        profile::ProfileApi,
        roles::RolesApi,
        events::EventsApi,
        health::HealthApi,
    ),
    (),
> {
    OpenApiService::new(
        (
            login::LoginApi::new(state.clone()),
            profile::ProfileApi {
                state: state.clone(),
            },
            roles::RolesApi {
                state: state.clone(),
            },
            events::EventsApi::new(state.clone()),
            health::HealthApi {
                state: state.clone(),
            },
        ),
        "core4d",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The core4 API server in Rust: login with revocable tokens, users and roles with \
         permissions, and durable event channels over a WebSocket. Every JSON reply is the core4 \
         envelope (`_id`, `version`, `timestamp`, `message`, `code`, and `data` or `error`).",
    )
    .server(BASE)
}

/// The spec as core4d serves and `core4d openapi` prints it. It needs no database: the API
/// structs are only described, never called.
pub fn spec_json(state: &AppState) -> String {
    service(state).spec()
}

/// A JSON body whose schema comes from `T`'s `Object` derive while parsing goes through serde,
/// so every error names its field (`is_active: invalid type: string "x", expected a boolean`).
pub struct Strict<T>(pub T);

impl<T: Type> Type for Strict<T> {
    const IS_REQUIRED: bool = T::IS_REQUIRED;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry)
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_raw_value()
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        self.0.raw_element_iter()
    }
}

impl<T: Type + DeserializeOwned> ParseFromJSON for Strict<T> {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        let value = value.unwrap_or_default();
        if !value.is_object() {
            return Err(ParseError::custom("the body must be a JSON object"));
        }
        serde_path_to_error::deserialize(value)
            .map(Strict)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                if path == "." {
                    ParseError::custom(inner)
                } else {
                    ParseError::custom(format!("field [{path}]: {inner}"))
                }
            })
    }
}

impl<T: ToJSON> ToJSON for Strict<T> {
    fn to_json(&self) -> Option<serde_json::Value> {
        self.0.to_json()
    }
}

/// The spec without a database: the API structs are described, never called.
pub async fn offline_spec(settings: &Settings) -> anyhow::Result<String> {
    let pool =
        sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://offline.invalid/core4d")?;
    let hasher = crate::auth::Hasher::new(&crate::settings::Argon2Settings {
        m_cost: 8,
        t_cost: 1,
        p_cost: 1,
        concurrency: 1,
        ..Default::default()
    })
    .await?;
    let auth = Auth::new(
        pool.clone(),
        b"offline-spec-only-secret-never-used",
        hasher,
        settings,
    );
    let state = AppState {
        pool,
        auth,
        settings: Arc::new(settings.clone()),
        hub: Hub::offline(),
        metrics: Metrics::default(),
    };
    Ok(spec_json(&state))
}
