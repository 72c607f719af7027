//! HTTP-level protections around the API: the connection loop with its timeouts and TLS, the
//! client behind trusted proxies, the budget of large replies waiting for slow readers, the origin check against cross-site requests, the security
//! headers and the login cookie.

pub mod held;
pub mod origin;
pub mod proxy;
pub mod server;
pub mod tls;

use poem::{
    Response,
    http::{HeaderValue, header},
};

pub use origin::OriginPolicy;
pub use proxy::{Client, TrustedProxies};

/// Takes `n` off `addr`'s count in a per-address table, forgetting the address at zero (the
/// tables of open connections and held replies stay as small as what is open).
fn count_down(
    counts: &mut std::collections::HashMap<std::net::IpAddr, usize>,
    addr: std::net::IpAddr,
    n: usize,
) {
    if let Some(count) = counts.get_mut(&addr) {
        *count -= n;
        if *count == 0 {
            counts.remove(&addr);
        }
    }
}

/// The `token` cookie that login sets and a refreshed token renews. Built only here: it is
/// `Secure` when the client's connection is TLS (to core4d, or to a trusted proxy that says so),
/// and never over plain HTTP, where a browser would drop it.
pub fn token_cookie(token: &str, max_age_secs: u64, client: &Client) -> String {
    let secure = if client.https { "; Secure" } else { "" };
    format!("token={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age_secs}{secure}")
}

/// The `Set-Cookie` value that removes the `token` cookie (logout).
pub fn cleared_token_cookie(client: &Client) -> String {
    token_cookie("", 0, client)
}

/// How a reply may be framed and stored, by what it is.
pub enum ReplyKind {
    /// Swagger UI: an HTML page with inline scripts and styles.
    DocsPage,
    /// The OpenAPI document: the same for everyone.
    Spec,
    /// Everything else: API replies (per caller, some carrying tokens), `/metrics`, `/`.
    Api,
}

/// Sets the security headers of every reply: no MIME sniffing, no framing, and no storing of
/// anything but the static documentation (API replies are per caller and may carry tokens).
pub fn set_security_headers(resp: &mut Response, kind: ReplyKind) {
    let headers = resp.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let csp = match kind {
        // Only framing is restricted: Swagger UI runs inline scripts and styles.
        ReplyKind::DocsPage => "frame-ancestors 'none'",
        ReplyKind::Spec | ReplyKind::Api => "default-src 'none'; frame-ancestors 'none'",
    };
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if matches!(kind, ReplyKind::Api) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}
