//! Who sent a request: the TCP peer, or, when that peer is one of `trusted_proxies`, the client
//! its `Forwarded` / `X-Forwarded-*` headers name. Resolved once per request by the outermost
//! middleware; handlers take [`Client`] as a parameter. Headers from other peers are ignored,
//! so nobody can pick their own address by sending them.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use poem::{
    FromRequest, Request, RequestBody,
    http::{HeaderMap, header, uri::Scheme},
};

/// The client of a request as far as core4d can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the login limiter's key and the request log's `client`.
    pub addr: IpAddr,
    /// Whether the client's own connection is TLS (to core4d or to a trusted proxy): the
    /// login cookie is then `Secure`.
    pub https: bool,
    /// The host the client asked for (`Host`, or the forwarded host from a trusted proxy).
    pub host: Option<String>,
}

impl<'a> FromRequest<'a> for Client {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        Ok(match req.extensions().get::<Client>() {
            Some(client) => client.clone(),
            // Outside the middleware (never in core4d's app) nothing is trusted.
            None => TrustedProxies::default().resolve(req),
        })
    }
}

/// Parses one `trusted_proxies` entry: a CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_net(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| "is neither a CIDR (10.0.0.0/8, fd00::/8) nor an address".to_string())
}

/// The peers whose forwarding headers are believed (`trusted_proxies`).
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
}

impl TrustedProxies {
    /// `entries` were validated with the settings; an invalid one would trust nothing.
    pub fn new(entries: &[String]) -> Self {
        Self {
            nets: entries.iter().filter_map(|e| parse_net(e).ok()).collect(),
        }
    }

    pub fn trusts(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.nets.iter().any(|n| n.contains(&addr))
    }

    /// The client of `req`, from its peer address, its scheme and (from a trusted peer) its
    /// forwarding headers.
    pub fn resolve(&self, req: &Request) -> Client {
        let peer = req
            .remote_addr()
            .as_socket_addr()
            .map(|a| canonical(a.ip()))
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let tls = *req.scheme() == Scheme::HTTPS;
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        self.resolve_parts(peer, tls, host, req.headers())
    }

    fn resolve_parts(
        &self,
        peer: IpAddr,
        tls: bool,
        host: Option<String>,
        headers: &HeaderMap,
    ) -> Client {
        let direct = Client {
            addr: peer,
            https: tls,
            host,
        };
        if !self.trusts(peer) {
            return direct;
        }
        let hops = forwarded_hops(headers);
        if hops.is_empty() {
            return direct;
        }
        // Right to left: each trusted proxy appended the peer it saw; the first hop that is not
        // a trusted proxy is the client. Anything left of it is the client's own say.
        let mut chosen = hops.len() - 1;
        let mut last_trusted = peer;
        for (i, hop) in hops.iter().enumerate().rev() {
            chosen = i;
            match hop.addr {
                Some(addr) if self.trusts(addr) => last_trusted = addr,
                _ => break,
            }
        }
        let hop = &hops[chosen];
        Client {
            // An unparseable hop ("unknown", an obfuscated name) is known only by its proxy.
            addr: hop.addr.unwrap_or(last_trusted),
            https: hop
                .proto
                .as_deref()
                .map_or(tls, |p| p.eq_ignore_ascii_case("https")),
            host: hop.host.clone().or(direct.host),
        }
    }
}

/// One proxy hop as the headers describe it.
#[derive(Debug, Default, PartialEq)]
struct Hop {
    addr: Option<IpAddr>,
    proto: Option<String>,
    host: Option<String>,
}

/// The hops of `Forwarded` (RFC 7239) if present, else of `X-Forwarded-For`, whose hops all get
/// the right-most `X-Forwarded-Proto` and `X-Forwarded-Host` (what the nearest proxy says).
fn forwarded_hops(headers: &HeaderMap) -> Vec<Hop> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .map(|element| {
                let mut hop = Hop::default();
                for pair in element.split(';') {
                    let Some((key, value)) = pair.split_once('=') else {
                        continue;
                    };
                    let value = value.trim().trim_matches('"');
                    match key.trim().to_ascii_lowercase().as_str() {
                        "for" => hop.addr = parse_node(value),
                        "proto" => hop.proto = Some(value.to_string()),
                        "host" => hop.host = Some(value.to_string()),
                        _ => {}
                    }
                }
                hop
            })
            .collect();
    }
    let proto = values("x-forwarded-proto").pop();
    let host = values("x-forwarded-host").pop();
    values("x-forwarded-for")
        .iter()
        .map(|v| Hop {
            addr: parse_node(v),
            proto: proto.clone(),
            host: host.clone(),
        })
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_node(value: &str) -> Option<IpAddr> {
    let value = value.trim();
    value
        .parse::<IpAddr>()
        .or_else(|_| value.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| {
            value
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .unwrap_or("")
                .parse::<IpAddr>()
        })
        .ok()
        .map(canonical)
}

/// `::ffff:192.0.2.1` (an IPv4 client on a dual-stack socket) is `192.0.2.1`.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(&["127.0.0.1/32".into(), "10.0.0.0/8".into(), "fd00::1".into()])
    }

    #[test]
    fn entries_parse_as_cidrs_or_addresses() {
        assert!(parse_net("10.0.0.0/8").is_ok());
        assert!(parse_net("192.0.2.7").is_ok());
        assert!(parse_net("fd00::/8").is_ok());
        for bad in ["10.0.0.0/33", "10.0.0", "localhost", "", "10.0.0.0/8/8"] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_of_untrusted_peers_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=198.51.100.8;proto=https"),
        ]);
        let client = proxies().resolve_parts(ip("192.0.2.1"), false, Some("h".into()), &h);
        assert_eq!(
            client,
            Client {
                addr: ip("192.0.2.1"),
                https: false,
                host: Some("h".into())
            }
        );
        // Nothing is trusted by default.
        let client = TrustedProxies::default().resolve_parts(ip("127.0.0.1"), false, None, &h);
        assert_eq!(client.addr, ip("127.0.0.1"));
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let p = proxies();
        let from_proxy = |h: &HeaderMap| p.resolve_parts(ip("127.0.0.1"), false, None, h);
        // The client's own claim (left) does not count: the proxy appended the real peer.
        let c = from_proxy(&headers(&[(
            "x-forwarded-for",
            "203.0.113.5, 198.51.100.9, 10.1.2.3",
        )]));
        assert_eq!(c.addr, ip("198.51.100.9"));
        assert!(!c.https);
        let c = from_proxy(&headers(&[
            ("x-forwarded-for", "198.51.100.9"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "http, https"),
            ("x-forwarded-host", "core4.example.com"),
        ]));
        assert_eq!(
            c,
            Client {
                addr: ip("198.51.100.9"),
                https: true,
                host: Some("core4.example.com".into())
            }
        );
        // Only proxies in the chain: the left-most one is as far as anyone can tell.
        let c = from_proxy(&headers(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]));
        assert_eq!(c.addr, ip("10.0.0.3"));
        // An unknown hop is known by the proxy that reported it.
        let c = from_proxy(&headers(&[("x-forwarded-for", "unknown, 10.0.0.2")]));
        assert_eq!(c.addr, ip("10.0.0.2"));
        // No header: the peer itself.
        assert_eq!(from_proxy(&HeaderMap::new()).addr, ip("127.0.0.1"));
    }

    #[test]
    fn forwarded_wins_and_carries_proto_and_host_per_hop() {
        let h = headers(&[
            (
                "forwarded",
                "for=203.0.113.5, for=\"[2001:db8::17]:4711\";proto=https;host=core4.example.com",
            ),
            ("forwarded", "for=10.0.0.2;proto=http"),
            ("x-forwarded-for", "198.51.100.9"),
        ]);
        let c = proxies().resolve_parts(ip("127.0.0.1"), false, Some("inner:5001".into()), &h);
        assert_eq!(
            c,
            Client {
                addr: ip("2001:db8::17"),
                https: true,
                host: Some("core4.example.com".into())
            }
        );
        assert_eq!(parse_node("192.0.2.1:80"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("[::ffff:192.0.2.1]"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("_hidden"), None);
    }

    #[test]
    fn a_tls_connection_is_https_without_any_header() {
        let c = proxies().resolve_parts(ip("192.0.2.1"), true, None, &HeaderMap::new());
        assert!(c.https);
    }
}
