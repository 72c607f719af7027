//! What the API document says beyond the handlers' types: the error statuses each operation can
//! really return, and the constraints core4d enforces that poem-openapi cannot express
//! (`additionalProperties: false`, required fields whose absence gets core4's own phrase, id
//! patterns, parameter ranges).

use std::marker::PhantomData;

use poem_openapi::{
    ApiResponse,
    registry::{MetaResponses, Registry},
    types::Type,
};
use serde_json::{Value, json};

use crate::{envelope::ErrorEnvelope, error::ApiError};

/// The error replies of one operation: each status it can give, with what it means there.
pub trait Failures: Send + Sync + 'static {
    const STATUSES: &'static [(u16, &'static str)];
}

/// An [`ApiError`] documented with the statuses of `F` only.
pub struct Fail<F: Failures>(pub ApiError, PhantomData<F>);

/// The result of an operation whose errors are `F`.
pub type Reply<T, F> = Result<T, Fail<F>>;

impl<F: Failures> From<ApiError> for Fail<F> {
    fn from(e: ApiError) -> Self {
        Self(e, PhantomData)
    }
}

impl<F: Failures> From<sqlx::Error> for Fail<F> {
    fn from(e: sqlx::Error) -> Self {
        Self(e.into(), PhantomData)
    }
}

impl<F: Failures> From<Fail<F>> for poem::Error {
    fn from(f: Fail<F>) -> Self {
        f.0.into()
    }
}

impl<F: Failures> ApiResponse for Fail<F> {
    fn meta() -> MetaResponses {
        crate::error::error_responses(F::STATUSES)
    }

    fn register(registry: &mut Registry) {
        ErrorEnvelope::register(registry);
    }
}

const BAD_INPUT: (u16, &str) = (400, "Invalid input; `error` names the field or argument.");
const NO_TOKEN: (u16, &str) = (
    401,
    "No token, or an invalid, expired or revoked one: log in (again).",
);
const NOT_ALLOWED: (u16, &str) = (403, "The caller lacks the permission this operation needs.");
const NOT_ALLOWED_OR_ORIGIN: (u16, &str) = (
    403,
    "The caller lacks the permission; or the request was authenticated by the `token` cookie \
     alone and came from a page of an origin core4d does not trust.",
);
const NO_SUCH_ID: (u16, &str) = (404, "No user or role has this id.");
const TOO_LARGE: (u16, &str) = (413, "The request body is over 256 KiB.");
const DB_DOWN: (u16, &str) = (503, "The database is not reachable; try again shortly.");
const DB_DOWN_OR_PAGES_BUSY: (u16, &str) = (
    503,
    "The database is not reachable; or this client (two at a time) or all clients build as many \
     large pages as they may, or its large replies wait unread (see `Retry-After`).",
);

macro_rules! failures {
    ($($(#[$doc:meta])* $name:ident: [$($status:expr),* $(,)?];)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Failures for $name {
            const STATUSES: &'static [(u16, &'static str)] = &[$($status),*];
        }
    )*};
}

failures! {
    /// `GET /login`.
    LoginGetFailures: [
        BAD_INPUT,
        (401, "Wrong user name or password (the reply does not say which), an inactive user, \
               or an invalid, expired or revoked token to exchange."),
        (429, "Too many failed logins for this user name or client address; see `Retry-After`."),
        (503, "Too many logins wait for the password hasher (see `Retry-After`), or the \
               database is not reachable."),
    ];
    /// `POST /login`: as GET, plus the body's statuses.
    LoginPostFailures: [
        BAD_INPUT,
        (401, "Wrong user name or password (the reply does not say which), an inactive user, \
               or an invalid, expired or revoked token to exchange."),
        (403, "Authenticated by the `token` cookie alone from a page of an origin core4d does \
               not trust."),
        TOO_LARGE,
        (429, "Too many failed logins for this user name or client address; see `Retry-After`."),
        (503, "Too many logins wait for the password hasher (see `Retry-After`), or the \
               database is not reachable."),
    ];
    /// `GET /logout`.
    LogoutGetFailures: [NO_TOKEN, DB_DOWN];
    /// `POST /logout`.
    LogoutPostFailures: [
        NO_TOKEN,
        (403, "Authenticated by the `token` cookie alone from a page of an origin core4d does \
               not trust."),
        DB_DOWN,
    ];
    /// A read that needs a permission and takes no input.
    ReadFailures: [NO_TOKEN, NOT_ALLOWED, DB_DOWN];
    /// `GET /roles`.
    ListFailures: [BAD_INPUT, NO_TOKEN, NOT_ALLOWED, DB_DOWN];
    /// `GET /roles/{id}`.
    GetFailures: [BAD_INPUT, NO_TOKEN, NOT_ALLOWED, NO_SUCH_ID, DB_DOWN];
    /// `POST /roles`.
    CreateFailures: [
        BAD_INPUT,
        NO_TOKEN,
        (403, "The caller lacks the permission to create, or sets `perm`, `role` or \
               `is_active` without being a `cop`; or the request was authenticated by the \
               `token` cookie alone from a page of an origin core4d does not trust."),
        (404, "A role named in `role` does not exist."),
        (409, "`name or email exists`: the name (case-insensitively or by look-alike) or the \
               email is taken."),
        TOO_LARGE,
        DB_DOWN,
    ];
    /// `PUT /roles/{id}`.
    UpdateFailures: [
        BAD_INPUT,
        NO_TOKEN,
        NOT_ALLOWED_OR_ORIGIN,
        (404, "No user or role has this id, or a role named in `role` does not exist."),
        (409, "The etag is stale (someone changed the object since it was read: read it again), \
               the new name or email is taken, or the change would leave no active `cop`."),
        TOO_LARGE,
        DB_DOWN,
    ];
    /// `DELETE /roles/{id}`.
    DeleteFailures: [
        BAD_INPUT,
        NO_TOKEN,
        NOT_ALLOWED_OR_ORIGIN,
        NO_SUCH_ID,
        (409, "The etag is stale (read the object again), or it is the last active `cop`."),
        DB_DOWN,
    ];
    /// `PUT /profile`.
    ProfileUpdateFailures: [
        BAD_INPUT,
        NO_TOKEN,
        NOT_ALLOWED_OR_ORIGIN,
        (409, "The etag is stale (read the profile again), or the email is taken."),
        TOO_LARGE,
        DB_DOWN,
    ];
    /// `GET /health`.
    HealthFailures: [(503, "The database does not answer.")];
    /// `GET /event`: the WebSocket upgrade.
    SocketFailures: [
        (400, "Not a WebSocket upgrade (no `Sec-WebSocket-Key`, say), or `since` is not a \
               message id."),
        NO_TOKEN,
        (403, "The caller lacks `api://core4.api.v1.request.standard.event.EventHandler`, or \
               the upgrade was authenticated by the `token` cookie alone from a page of an \
               origin core4d does not trust."),
        (429, "The user has `events.max_connections_per_user` sockets and streams open on this \
               instance; see `Retry-After`."),
        (503, "The instance has `events.max_connections` open or is shutting down (see \
               `Retry-After`), or the database is not reachable."),
    ];
    /// `GET /event/stream`.
    StreamFailures: [
        (400, "No `channel`, more channel names than allowed, or `since` (or `Last-Event-ID`) \
               is not a message id."),
        NO_TOKEN,
        (403, "The caller lacks `api://core4.api.v1.request.standard.event.EventHandler`, or \
               the request was authenticated by the `token` cookie alone from a page of an \
               origin core4d does not trust."),
        (429, "The user has `events.max_connections_per_user` sockets and streams open on this \
               instance; see `Retry-After`."),
        (503, "The instance has `events.max_connections` open or is shutting down (see \
               `Retry-After`), or the database is not reachable."),
    ];
    /// `POST /event`.
    PublishFailures: [
        (400, "A malformed message (`error` says what: no `channel` or `text`, an empty \
               `text`, an invalid channel name or key), with the socket's phrases."),
        NO_TOKEN,
        (403, "No `event://<channel>/w` for the channel, no \
               `api://core4.api.v1.request.standard.event.EventHandler`, or the request was \
               authenticated by the `token` cookie alone from a page of an origin core4d does \
               not trust."),
        (413, "The request body is over 256 KiB, or `text` over `events.max_frame_bytes`."),
        (429, "Over the user's message rate (shared with the user's sockets); see \
               `Retry-After`."),
        (503, "The message could not be stored (the database is not reachable, or core4d is \
               shutting down): send it again, with the same key to store it once."),
    ];
    /// `GET /event/history`.
    HistoryFailures: [
        (400, "An invalid channel name, `page` or `per_page`, or a `before`/`after` that is \
               not a message id."),
        NO_TOKEN,
        (403, "No `event://<channel>/r` for the channel, or no \
               `api://core4.api.v1.request.standard.event.EventHistoryHandler`."),
        DB_DOWN_OR_PAGES_BUSY,
    ];
    /// `POST /event/history`.
    HistoryPostFailures: [
        (400, "An invalid channel name, `page` or `per_page`, a `before`/`after` that is \
               not a message id, a body that is not such a JSON object, or a parameter given in \
               the query and the body with different values."),
        TOO_LARGE,
        NO_TOKEN,
        (403, "No `event://<channel>/r` for the channel, no \
               `api://core4.api.v1.request.standard.event.EventHistoryHandler`, or the request was \
               authenticated by the `token` cookie alone from a page of an origin core4d does \
               not trust."),
        DB_DOWN_OR_PAGES_BUSY,
    ];
    /// `GET /event/stats`.
    StatsFailures: [
        NO_TOKEN,
        (403, "The caller is not a `cop`."),
        DB_DOWN,
    ];
}

/// The 24 hex digits of an id, as `ObjectId::parse` accepts them.
pub const ID_PATTERN: &str = "^[0-9a-fA-F]{24}$";

/// Adds to `spec` what core4d enforces beyond the generated schemas. `max_per_page` is the
/// configured largest page.
pub fn refine(spec: &str, max_per_page: u32) -> String {
    let Ok(mut spec) = serde_json::from_str::<Value>(spec) else {
        return spec.to_string();
    };
    let schemas = &mut spec["components"]["schemas"];
    // Bodies parsed with `deny_unknown_fields`: an unknown field is a 400 naming it.
    for name in [
        "RoleCreate",
        "RoleUpdate",
        "ProfileUpdate",
        "PublishRequest",
        "HistoryParams",
    ] {
        if let Some(schema) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            schema.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    // Required, but checked by the handler so that its absence gets core4's phrase
    // (`Missing argument etag`).
    for (name, field) in [
        ("RoleCreate", "name"),
        ("RoleUpdate", "etag"),
        ("ProfileUpdate", "etag"),
    ] {
        if let Some(schema) = schemas.get_mut(name) {
            schema["required"] = json!([field]);
            schema["properties"][field]["minLength"] = json!(1);
        }
    }
    // The body of `POST /event/history` takes the query's bounds.
    if let Some(per_page) = schemas.pointer_mut("/HistoryParams/properties/per_page") {
        per_page["minimum"] = json!(1);
        per_page["maximum"] = json!(max_per_page);
    }
    // A name, when given, is never empty.
    schemas["RoleUpdate"]["properties"]["name"]["minLength"] = json!(1);
    // Checked by the handler after the credentials, with the socket's phrases.
    if let Some(publish) = schemas.get_mut("PublishRequest") {
        publish["required"] = json!(["channel", "text"]);
        publish["properties"]["channel"]["minLength"] = json!(1);
        publish["properties"]["channel"]["example"] = json!("message");
        publish["properties"]["text"]["not"] = json!({"enum": [null, ""]});
        publish["properties"]["text"]["example"] = json!("hello");
        publish["properties"]["key"]["minLength"] = json!(1);
        publish["properties"]["key"]["maxLength"] = json!(core4_proto::MAX_KEY_CHARS);
        // `"key": null` is no key, as on the socket.
        publish["properties"]["key"]["nullable"] = json!(true);
        publish["example"] = json!({"channel": "message", "text": "hello"});
    }
    fold_union_wrappers(&mut spec);
    // Swagger UI builds an example from the first variant; show a whole frame, tag included.
    if let Some(frame) = spec["components"]["schemas"].get_mut("ClientFrame") {
        frame["example"] = json!({"type": "message", "channel": "message", "text": "hello"});
    }
    add_links(&mut spec);
    if let Some(paths) = spec["paths"].as_object_mut() {
        for (path, ops) in paths.iter_mut() {
            let Some(ops) = ops.as_object_mut() else {
                continue;
            };
            for (method, op) in ops.iter_mut() {
                // `get_mut`: indexing would insert `"parameters": null`, which breaks Swagger UI.
                let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                    continue;
                };
                for p in params {
                    refine_parameter(path, method, p, max_per_page);
                }
            }
        }
    }
    serde_json::to_string_pretty(&spec).unwrap_or_default()
}

/// poem-openapi describes each variant of a tagged union as a wrapper schema
/// (`ClientFrame_TokenRequestFrame`: `allOf` of the `type` tag and the variant) that repeats the
/// union's description. The tag is folded into the variant's own schema and the wrapper goes, so
/// every variant shows its own description and no internal name shows; where the variant is also
/// used untagged (`HistoryPage.truncated`), that use gets an inline copy without the tag.
fn fold_union_wrappers(spec: &mut Value) {
    const PREFIX: &str = "#/components/schemas/";
    let Some(schemas) = spec["components"]["schemas"].as_object() else {
        return;
    };
    // (wrapper, variant, tag property)
    let wrappers: Vec<(String, String, Value)> = schemas
        .iter()
        .filter_map(|(name, schema)| {
            let [tag, variant] = schema["allOf"].as_array()?.as_slice() else {
                return None;
            };
            let variant = variant["$ref"].as_str()?.strip_prefix(PREFIX)?;
            let tag = tag["properties"].get("type")?;
            name.ends_with(&format!("_{variant}"))
                .then(|| (name.clone(), variant.to_string(), tag.clone()))
        })
        .collect();
    for (wrapper, variant, tag) in wrappers {
        let schemas = &mut spec["components"]["schemas"];
        if schemas[&variant]["properties"].get("type").is_some() {
            // A variant of two unions keeps its wrappers, with its own description.
            schemas[&wrapper]["description"] = schemas[&variant]["description"].clone();
            continue;
        }
        let mut untagged = schemas[&variant].clone();
        if let Some(map) = untagged.as_object_mut() {
            // The use site says what the field means.
            map.remove("title");
            map.remove("description");
        }
        if let Some(schemas) = schemas.as_object_mut() {
            schemas.remove(&wrapper);
        }
        inline_ref(spec, &format!("{PREFIX}{variant}"), &untagged);
        let own = &mut spec["components"]["schemas"][&variant];
        own["properties"]["type"] = tag;
        let mut required = vec![json!("type")];
        required.extend(own["required"].as_array().cloned().unwrap_or_default());
        own["required"] = Value::Array(required);
        replace_ref(
            spec,
            &format!("{PREFIX}{wrapper}"),
            &format!("{PREFIX}{variant}"),
        );
    }
}

/// Replaces every `{"$ref": target}` in `value` with a copy of `schema`.
fn inline_ref(value: &mut Value, target: &str, schema: &Value) {
    match value {
        Value::Object(map) if map.len() == 1 && map.get("$ref").is_some_and(|r| r == target) => {
            *value = schema.clone()
        }
        Value::Array(items) => items.iter_mut().for_each(|v| inline_ref(v, target, schema)),
        Value::Object(map) => map.values_mut().for_each(|v| inline_ref(v, target, schema)),
        _ => {}
    }
}

/// Points every reference (`$ref`, discriminator mapping) to `from` at `to`.
fn replace_ref(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s == from => *s = to.to_string(),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_ref(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| replace_ref(v, from, to)),
        _ => {}
    }
}

/// OpenAPI links: where the `id` and `etag` of a change or delete come from. Clients (and
/// Schemathesis' stateful phase) follow them from a created or read object to its update.
fn add_links(spec: &mut Value) {
    let update = json!({
        "operationRef": "#/paths/~1roles~1{id}/put",
        "description": "Change this object: its id and current etag.",
        "parameters": {"id": "$response.body#/data/_id"},
        "requestBody": {"etag": "$response.body#/data/etag"},
    });
    let read = json!({
        "operationRef": "#/paths/~1roles~1{id}/get",
        "description": "Read this object again.",
        "parameters": {"id": "$response.body#/data/_id"},
    });
    let delete = json!({
        "operationRef": "#/paths/~1roles~1{id}/delete",
        "description": "Delete this object: its id and current etag.",
        "parameters": {
            "path.id": "$response.body#/data/_id",
            "query.etag": "$response.body#/data/etag",
        },
    });
    let links = json!({"Update": update, "Read": read, "Delete": delete});
    // Not from PUT: its `data` may be the string `no changes`.
    for (path, method) in [("/roles", "post"), ("/roles/{id}", "get")] {
        if let Some(ok) = spec["paths"]
            .get_mut(path)
            .and_then(|p| p.get_mut(method))
            .and_then(|o| o["responses"].get_mut("200"))
        {
            ok["links"] = links.clone();
        }
    }
    // From a listing: its first item.
    if let Some(ok) = spec["paths"]
        .get_mut("/roles")
        .and_then(|p| p.get_mut("get"))
        .and_then(|o| o["responses"].get_mut("200"))
    {
        ok["links"] = json!({"UpdateFirst": {
            "operationRef": "#/paths/~1roles~1{id}/put",
            "description": "Change the first object of the page: its id and current etag.",
            "parameters": {"id": "$response.body#/data/0/_id"},
            "requestBody": {"etag": "$response.body#/data/0/etag"},
        }});
    }
    if let Some(ok) = spec["paths"]
        .get_mut("/profile")
        .and_then(|p| p.get_mut("get"))
        .and_then(|o| o["responses"].get_mut("200"))
    {
        ok["links"] = json!({"Update": {
            "operationRef": "#/paths/~1profile/put",
            "description": "Change your profile: its current etag.",
            "requestBody": {"etag": "$response.body#/data/etag"},
        }});
    }
}

fn refine_parameter(path: &str, method: &str, p: &mut Value, max_per_page: u32) {
    let name = p["name"].as_str().unwrap_or_default().to_string();
    let on_roles = path.starts_with("/roles");
    match (name.as_str(), p["in"].as_str()) {
        ("id", Some("path")) if on_roles => p["schema"]["pattern"] = json!(ID_PATTERN),
        ("etag", _) if on_roles && method == "delete" => {
            p["required"] = json!(true);
            p["schema"]["minLength"] = json!(1);
            p["schema"]["maxLength"] = json!(crate::api::roles::MAX_ETAG_CHARS);
        }
        ("per_page", Some("query")) if path == "/roles" || path == "/event/history" => {
            p["schema"]["minimum"] = json!(1);
            p["schema"]["maximum"] = json!(max_per_page);
        }
        ("order", Some("query")) if path == "/roles" => p["schema"]["enum"] = json!([1, -1]),
        ("sort", Some("query")) if path == "/roles" => {
            p["schema"]["enum"] = json!(["_id", "name", "realname", "email", "created"])
        }
        ("channel", Some("query")) if path.starts_with("/event") => {
            p["example"] = if p["schema"]["type"] == "array" {
                json!(["message"])
            } else {
                json!("message")
            };
        }
        // Refused whatever its value: no value satisfies the schema.
        ("filter", Some("query")) => p["schema"] = json!({"not": {}}),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_body_limit_is_the_enforced_one() {
        assert_eq!(crate::startup::MAX_BODY_BYTES, 256 * 1024);
        assert!(super::TOO_LARGE.1.contains("256 KiB"));
    }
}
