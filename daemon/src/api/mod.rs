//! The poem-openapi surface, one file per tag. Handlers parse input into domain types, check
//! permissions through [`crate::auth`], and call `storage` or `events`.

pub mod events;
pub mod health;
pub mod login;
pub mod profile;
pub mod roles;
pub mod spec;

use std::{borrow::Cow, sync::Arc};

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions, OpenApiService, Tags,
    error::ParseRequestPayloadError,
    payload::{Json, Payload},
    registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry},
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
    /// Pages of history that may be large are built a few at a time.
    pub page_builds: Arc<crate::web::held::PageBuilds>,
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
         envelope (`_id`, `version`, `timestamp`, `message`, `code`, and `data` or `error`). \
         Each operation lists the statuses it answers with; any of them can also answer 500 on a \
         server bug (the cause is logged under the reply's `_id`).\n\n\
         **Trying it here:** run `POST /login` with your user name and password, copy \
         `data.token`, and paste it into *Authorize* under `BearerToken`. Login also sets an \
         HttpOnly `token` cookie, which this page cannot see or remove: the browser sends it \
         with every later request, so requests stay authenticated after *Logout* in the \
         Authorize dialog until you run `POST /logout` (which revokes the token and clears the \
         cookie). The `CookieToken` entry of the dialog cannot set that cookie; it is listed \
         because other clients may send it.",
    )
    .server(BASE)
}

/// The spec as core4d serves and `core4d openapi` prints it. It needs no database: the API
/// structs are only described, never called.
pub fn spec_json(state: &AppState) -> String {
    spec::refine(&service(state).spec(), state.settings.max_per_page)
}

/// The Swagger UI page: poem-openapi's, showing [`spec_json`], titled "core4d API", with an
/// inline icon (no request for it).
pub fn docs_page(state: &AppState) -> String {
    let service = service(state);
    let icon = format!(
        "<title>core4d API</title>\n    <link rel=\"icon\" type=\"image/svg+xml\" href=\"data:image/svg+xml,{}\">",
        FAVICON_SVG.replace('#', "%23")
    );
    service
        .swagger_ui_html()
        .replacen(&service.spec(), &spec_json(state), 1)
        .replacen("<title>Swagger UI</title>", &icon, 1)
}

/// core4d's icon, also served as `/favicon.ico` (browsers ask for it on any page).
pub const FAVICON_SVG: &str = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'>\
<rect width='32' height='32' rx='6' fill='#2b3a55'/><text x='16' y='24' \
font-family='sans-serif' font-size='22' font-weight='bold' text-anchor='middle' \
fill='white'>4</text></svg>";

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

/// A JSON request body that may be left out: no body, or one of only whitespace, is `None`;
/// anything else must parse as `T`, else 400. Like core4, whatever the `Content-Type`.
pub struct OptionalJson<T>(pub Option<T>);

impl<'a, T: ParseFromJSON> ApiExtractor<'a> for OptionalJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: Json::<T>::CONTENT_TYPE,
                schema: T::schema_ref(),
            }],
            required: false,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let data = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        if data.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        let value = serde_json::from_slice(&data).map_err(|e| ParseRequestPayloadError {
            reason: e.to_string(),
        })?;
        let parsed = T::parse_from_json(Some(value)).map_err(|e| ParseRequestPayloadError {
            reason: e.into_message(),
        })?;
        Ok(Self(Some(parsed)))
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
        page_builds: Arc::new(crate::web::held::PageBuilds::new(1, 1)),
    };
    Ok(spec_json(&state))
}
