//! End-to-end tests: a real PostgreSQL, a real core4d per test, HTTP and WebSocket over loopback.

mod browser;
mod compat;
mod daemon;
mod docs;
mod events;
mod held_replies;
mod login;
mod metrics;
mod permissions;
mod protocol;
mod readme;
mod retention;
mod roles;
mod search;
mod security;
mod security_hashing;
mod security_http;
mod sse;
mod tls_proxy;
