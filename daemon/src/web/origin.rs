//! The origin check against cross-site request forgery. A browser attaches the `token` cookie to
//! requests that pages of other origins trigger (another port or subdomain of the same site is
//! enough under `SameSite=Lax`), so a state-changing request or WebSocket upgrade authenticated
//! by that cookie alone must come from core4d's own origin or a trusted one. Requests carrying a
//! Bearer header or `?token=` (core4's clients) prove their origin by knowing the token and are
//! not checked; nor are requests without `Origin` and `Sec-Fetch-Site` (not from a browser).

use std::sync::Arc;

use poem::{
    Request,
    http::{HeaderMap, Method, header},
};

use super::Client;
use crate::error::ApiError;

const LOGOUT_PATH: &str = "/core4/api/v1/logout";
/// A web origin, `scheme://host[:port]`, lowercased, the scheme's default port left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    scheme: &'static str,
    authority: String,
}

impl Origin {
    /// Parses an `Origin` header value or a configured origin (a trailing `/` is tolerated).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim().to_ascii_lowercase();
        let (scheme, rest) = value
            .split_once("://")
            .ok_or("is not an origin (scheme://host[:port])")?;
        let scheme = match scheme {
            "http" => "http",
            "https" => "https",
            _ => return Err("must start with http:// or https://".into()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty()
            || rest
                .bytes()
                .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\') || b <= b' ')
        {
            return Err("must be scheme://host[:port] without a path".into());
        }
        Ok(Self {
            scheme,
            authority: without_default_port(scheme, rest).to_string(),
        })
    }

    /// Whether this is the origin of a page served by `host` (a `Host` header), over either
    /// scheme: behind a TLS proxy core4d sees plain HTTP for `https://` pages.
    fn is_served_by(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        without_default_port(self.scheme, &host) == self.authority
    }

    /// Whether this is core4d's own origin for `client`: its host, over https when the client
    /// is known to use TLS (no `http://` page is served then), else over either scheme (a TLS
    /// proxy that is not in `trusted_proxies` looks like plain HTTP).
    fn is_own(&self, client: &Client) -> bool {
        client
            .host
            .as_deref()
            .is_some_and(|host| self.is_served_by(host))
            && (!client.https || self.scheme == "https")
    }
}

fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// The origins allowed to use the cookie besides core4d's own (`trusted_origins`).
#[derive(Clone, Default)]
pub struct OriginPolicy {
    trusted: Arc<[Origin]>,
}

impl OriginPolicy {
    /// `trusted` was validated with the settings; an invalid entry would trust nothing.
    pub fn new(trusted: &[String]) -> Self {
        Self {
            trusted: trusted
                .iter()
                .filter_map(|o| Origin::parse(o).ok())
                .collect(),
        }
    }

    /// Refuses (403) a cookie-authenticated, state-changing request (`GET /logout` included),
    /// upgrade or event stream from a page of an untrusted origin; lets everything else through.
    /// `client` says which host and scheme the request was sent to (behind a trusted proxy, the
    /// forwarded ones).
    pub fn check(&self, req: &Request, client: &Client) -> Result<(), ApiError> {
        let headers = req.headers();
        // `GET /logout` ends a session: a cross-site link or image must not do that either. The
        // event stream is a read, but like the socket a lasting one the page keeps open.
        let path = req.uri().path();
        let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
            || headers.contains_key(header::UPGRADE)
            || path == LOGOUT_PATH
            || path.ends_with("/event/stream");
        if !changes_state || !cookie_only(headers, req.uri().query()) {
            return Ok(());
        }
        match headers.get(header::ORIGIN) {
            Some(value) => {
                let text = value.to_str().unwrap_or("<not text>");
                let allowed = Origin::parse(text)
                    .is_ok_and(|o| o.is_own(client) || self.trusted.contains(&o));
                if allowed {
                    Ok(())
                } else {
                    Err(refused(&format!("origin [{}]", cut(text))))
                }
            }
            // Browsers that omit Origin still say where a request came from.
            None => match headers
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("same-origin") | Some("none") => Ok(()),
                Some(other) => Err(refused(&format!(
                    "a {} request without an Origin header",
                    cut(other)
                ))),
            },
        }
    }
}

fn refused(what: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "cross-origin request refused: {what} may not use the login cookie; send the token as a \
         Bearer header, or list the page's origin in trusted_origins"
    ))
}

fn cut(s: &str) -> &str {
    &s[..s.floor_char_boundary(100)]
}

/// Whether the request's credential is the `token` cookie: it carries one, and neither a
/// Bearer header nor `?token=` (which the API prefers over the cookie).
fn cookie_only(headers: &HeaderMap, query: Option<&str>) -> bool {
    let has_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| {
            c.trim()
                .split_once('=')
                .is_some_and(|(k, v)| k.trim() == "token" && !v.trim().is_empty())
        });
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|s| s.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .is_some_and(|t| !t.trim().is_empty());
    let query_token = query.unwrap_or_default().split('&').any(|kv| {
        kv.split_once('=')
            .is_some_and(|(k, v)| k == "token" && !v.is_empty())
    });
    has_cookie && !bearer && !query_token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri(uri.parse().unwrap());
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.finish()
    }

    const COOKIE: (&str, &str) = ("cookie", "a=1; token=abc");
    const HOST: (&str, &str) = ("host", "127.0.0.1:5001");

    fn client(host: &str, https: bool) -> Client {
        Client {
            addr: "127.0.0.1".parse().unwrap(),
            https,
            host: Some(host.into()),
        }
    }

    #[test]
    fn origins_parse_and_normalise() {
        let o = Origin::parse("HTTPS://App.Example.com:443/").unwrap();
        assert_eq!(o, Origin::parse("https://app.example.com").unwrap());
        assert!(o.is_served_by("app.example.com"));
        assert!(o.is_served_by("APP.example.com:443"));
        assert!(!o.is_served_by("app.example.com:8443"));
        for bad in [
            "null",
            "app.example.com",
            "ftp://x",
            "http://",
            "http://a/b",
            "http://u@a",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cookie_writes_from_foreign_origins_are_refused() {
        let policy = OriginPolicy::new(&["https://ui.example.com".into()]);
        let foreign = ("origin", "http://127.0.0.1:5002");
        let own = client("127.0.0.1:5001", false);
        let post = |h: &[(&str, &str)]| policy.check(&request(Method::POST, "/roles", h), &own);
        assert!(post(&[COOKIE, HOST, foreign]).is_err());
        assert!(post(&[COOKIE, HOST, ("origin", "null")]).is_err());
        assert!(post(&[COOKIE, HOST, ("sec-fetch-site", "same-site")]).is_err());
        // Own and trusted origins, and requests not from a browser, pass.
        assert!(post(&[COOKIE, HOST, ("origin", "http://127.0.0.1:5001")]).is_ok());
        assert!(post(&[COOKIE, HOST, ("origin", "https://ui.example.com")]).is_ok());
        assert!(post(&[COOKIE, HOST, ("sec-fetch-site", "same-origin")]).is_ok());
        assert!(post(&[COOKIE, HOST]).is_ok());
        // A token the caller presents itself is no ambient credential.
        assert!(post(&[COOKIE, HOST, foreign, ("authorization", "Bearer x")]).is_ok());
        let with_query = request(Method::DELETE, "/roles/1?token=x", &[COOKIE, HOST, foreign]);
        assert!(policy.check(&with_query, &own).is_ok());
        // Reads are not checked; upgrades are.
        assert!(
            policy
                .check(
                    &request(Method::GET, "/roles", &[COOKIE, HOST, foreign]),
                    &own
                )
                .is_ok()
        );
        let upgrade = request(
            Method::GET,
            "/event",
            &[COOKIE, HOST, foreign, ("upgrade", "websocket")],
        );
        assert!(policy.check(&upgrade, &own).is_err());
        // Without the cookie there is nothing to forge.
        assert!(post(&[HOST, foreign]).is_ok());
    }

    #[test]
    fn the_own_origin_follows_the_clients_host_and_scheme() {
        let policy = OriginPolicy::default();
        let post = |origin: &str, client: &Client| {
            let req = request(Method::POST, "/roles", &[COOKIE, ("origin", origin)]);
            policy.check(&req, client).is_ok()
        };
        // Over TLS only the https origin is core4d's own.
        let tls = client("127.0.0.1:5443", true);
        assert!(post("https://127.0.0.1:5443", &tls));
        assert!(!post("http://127.0.0.1:5443", &tls));
        // Behind a trusted proxy the forwarded host counts, not the inner one.
        let proxied = client("core4.example.com", true);
        assert!(post("https://core4.example.com", &proxied));
        assert!(!post("https://127.0.0.1:5001", &proxied));
        // Plain HTTP: a TLS proxy nobody configured may be in front; either scheme is own.
        let plain = client("core4.example.com", false);
        assert!(post("https://core4.example.com", &plain));
        assert!(post("http://core4.example.com", &plain));
        assert!(!post(
            "http://core4.example.com",
            &Client {
                host: None,
                ..plain
            }
        ));
    }
}
