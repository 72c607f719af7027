//! `/login` and `/logout`.

use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi,
    param::Query,
    payload::Json,
    registry::{MetaMediaType, MetaRequest, Registry},
    types::{Example, Type},
};

use super::{
    ApiTags, AppState,
    spec::{LoginGetFailures, LoginPostFailures, LogoutGetFailures, LogoutPostFailures, Reply},
};
use crate::{
    auth::{LoginAuth, TokenAuth},
    envelope::{Envelope, ok},
    error::{ApiError, ApiResult},
    web::Client,
};

pub struct LoginApi {
    state: AppState,
}

impl LoginApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// A fresh token.
#[derive(Object)]
pub struct TokenData {
    /// JWT (HS512); send it as `Authorization: Bearer <token>`, `?token=` or the `token` cookie.
    pub token: String,
}

#[derive(ApiResponse)]
pub enum LoginResponse {
    /// Logged in. The token is in `data.token`, the `token` header and an HttpOnly cookie.
    #[oai(status = 200)]
    Ok(
        Json<Envelope<TokenData>>,
        /// The same token as `data.token`.
        #[oai(header = "token")]
        String,
        /// `token=<jwt>; HttpOnly; SameSite=Lax; Path=/; Max-Age=<token lifetime>`, and
        /// `; Secure` when the client connected over TLS (to core4d or a trusted proxy).
        #[oai(header = "Set-Cookie")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum LogoutResponse {
    /// Logged out: the token is revoked everywhere and the cookie cleared.
    #[oai(status = 200)]
    Ok(
        Json<Envelope<String>>,
        /// Clears the `token` cookie.
        #[oai(header = "Set-Cookie")]
        String,
    ),
}

/// The credentials of `POST /login`: a user name and password, or a token to exchange for a
/// fresh one. The body is read leniently, as core4 did: other fields, values that are not
/// strings and bodies that are not a JSON object or form are ignored (the login then fails
/// with 401 unless the query or an `Authorization` header has credentials).
#[derive(Object)]
#[oai(example, skip_serializing_if_is_none)]
pub struct LoginBody {
    /// User name (case-insensitive).
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// A valid token, instead of user name and password.
    pub token: Option<String>,
}

impl Example for LoginBody {
    fn example() -> Self {
        Self {
            username: Some("admin".into()),
            password: Some("the admin password".into()),
            token: None,
        }
    }
}

/// Username and password from a JSON object or form body, whatever the Content-Type says
/// (core4 merged any JSON-object body into its arguments). Documented as [`LoginBody`].
#[derive(Default)]
struct BodyCredentials {
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

impl<'a> ApiExtractor<'a> for BodyCredentials {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        LoginBody::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some(
                "Optional: the credentials may come as query arguments or HTTP Basic instead.",
            ),
            content: ["application/json", "application/x-www-form-urlencoded"]
                .into_iter()
                .map(|content_type| MetaMediaType {
                    content_type,
                    schema: LoginBody::schema_ref(),
                })
                .collect(),
            required: false,
        })
    }

    async fn from_request(
        _req: &'a Request,
        body: &mut RequestBody,
        _opts: ExtractParamOptions<()>,
    ) -> poem::Result<Self> {
        let Some(body) = body.take().ok() else {
            return Ok(Self::default());
        };
        let bytes = body
            .into_bytes()
            .await
            .map_err(|_| ApiError::BadRequest("unreadable request body".into()))?;
        let get =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && v.is_object()
        {
            return Ok(Self {
                username: get(&v, "username"),
                password: get(&v, "password"),
                token: get(&v, "token"),
            });
        }
        let mut out = Self::default();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            for pair in text.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = form_decode(v);
                match k {
                    "username" => out.username = Some(v),
                    "password" => out.password = Some(v),
                    "token" => out.token = Some(v),
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl LoginApi {
    fn cookie(&self, token: &str, client: &Client) -> String {
        crate::web::token_cookie(token, self.state.settings.token_expiration, client)
    }

    async fn login(
        &self,
        auth: LoginAuth,
        username: Option<String>,
        password: Option<String>,
        body: BodyCredentials,
        client: &Client,
    ) -> ApiResult<LoginResponse> {
        let auth_state = &self.state.auth;
        // A header decides alone; otherwise body values win over the query, as in core4.
        let (token, user, pass) = match auth {
            LoginAuth::Basic(b) => (None, Some(b.0.username), Some(b.0.password)),
            LoginAuth::Bearer(b) => (Some(b.0.token), None, None),
            other => {
                let user = body.username.or(username);
                let pass = body.password.or(password);
                let token = body
                    .token
                    .or_else(|| TokenAuth::from(other).token().map(str::to_string));
                (token, user, pass)
            }
        };
        let (token, _claims) = match (
            user.filter(|u| !u.is_empty()),
            pass.filter(|p| !p.is_empty()),
            token,
        ) {
            (Some(u), Some(p), _) => auth_state.login(&u, &p, &client.addr.to_string()).await?,
            (_, _, Some(t)) => {
                let me = auth_state.verify_token(&t).await?;
                auth_state
                    .keys()
                    .issue(&me.id, &me.name, me.claims.ver, Some(&me.claims.sid))?
            }
            _ => {
                return Err(ApiError::Unauthorized(
                    "invalid username or password".into(),
                ));
            }
        };
        let cookie = self.cookie(&token, client);
        Ok(LoginResponse::Ok(
            ok(TokenData {
                token: token.clone(),
            }),
            token,
            cookie,
        ))
    }
}

impl From<LoginAuth> for TokenAuth {
    fn from(a: LoginAuth) -> Self {
        match a {
            LoginAuth::Bearer(b) => TokenAuth::Bearer(b),
            LoginAuth::Query(q) => TokenAuth::Query(q),
            LoginAuth::Cookie(c) => TokenAuth::Cookie(c),
            LoginAuth::Basic(_) | LoginAuth::Missing => TokenAuth::Missing,
        }
    }
}

#[OpenApi(tag = "ApiTags::Login")]
impl LoginApi {
    /// Log in
    ///
    /// Credentials may come as HTTP Basic, as `username` and `password` query arguments, or
    /// (POST) as a JSON object or form body `{"username": ..., "password": ...}`. A valid token
    /// (Bearer, `?token=`, cookie, or `token` in the body) is exchanged for a fresh one.
    /// Failed logins are limited per user name and per client address (429 with `Retry-After`);
    /// the reply to a wrong password does not reveal whether the user exists. Password checks
    /// wait in a bounded queue (`argon2.max_queue`, and `argon2.max_queue_per_client` per client
    /// address): when it is full the login gets 503 with `Retry-After` at once. Addresses that
    /// logged in successfully before are served first.
    #[oai(path = "/login", method = "get", operation_id = "login_get")]
    async fn login_get(
        &self,
        auth: LoginAuth,
        /// User name.
        username: Query<Option<String>>,
        /// Password.
        password: Query<Option<String>>,
        client: Client,
    ) -> Reply<LoginResponse, LoginGetFailures> {
        self.login(
            auth,
            username.0,
            password.0,
            BodyCredentials::default(),
            &client,
        )
        .await
        .map_err(Into::into)
    }

    /// Log in (POST)
    ///
    /// As `GET /login`; the body may be a JSON object or a form with `username` and
    /// `password` (or `token`), with or without a Content-Type. Body values win over query
    /// arguments; an `Authorization` header (Basic or Bearer) decides alone.
    #[oai(path = "/login", method = "post", operation_id = "login_post")]
    async fn login_post(
        &self,
        auth: LoginAuth,
        /// User name.
        username: Query<Option<String>>,
        /// Password.
        password: Query<Option<String>>,
        client: Client,
        body: BodyCredentials,
    ) -> Reply<LoginResponse, LoginPostFailures> {
        Ok(self
            .login(auth, username.0, password.0, body, &client)
            .await?)
    }

    /// Log out
    ///
    /// Revokes the presented token on every core4d instance and clears the cookie. Open event
    /// sockets using it are closed within a second.
    #[oai(path = "/logout", method = "get", operation_id = "logout_get")]
    async fn logout_get(
        &self,
        auth: TokenAuth,
        client: Client,
    ) -> Reply<LogoutResponse, LogoutGetFailures> {
        Ok(self.logout(auth, &client).await?)
    }

    /// Log out (POST)
    ///
    /// As `GET /logout`.
    #[oai(path = "/logout", method = "post", operation_id = "logout_post")]
    async fn logout_post(
        &self,
        auth: TokenAuth,
        client: Client,
    ) -> Reply<LogoutResponse, LogoutPostFailures> {
        Ok(self.logout(auth, &client).await?)
    }
}

impl LoginApi {
    async fn logout(&self, auth: TokenAuth, client: &Client) -> ApiResult<LogoutResponse> {
        let me = self.state.auth.authenticate(&auth).await?;
        self.state.auth.revoke(&me.claims).await?;
        crate::envelope::clear_refreshed_token();
        Ok(LogoutResponse::Ok(
            ok("OK".to_string()),
            crate::web::cleared_token_cookie(client),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::form_decode;

    #[test]
    fn form_values_are_percent_and_plus_decoded() {
        assert_eq!(form_decode("very+secret"), "very secret");
        assert_eq!(form_decode("a%3Ab%25"), "a:b%");
        assert_eq!(form_decode("bad%zz%"), "bad%zz%");
    }
}
