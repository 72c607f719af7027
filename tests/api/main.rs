//! End-to-end tests: a real PostgreSQL, a real core4d per test, HTTP and WebSocket over loopback.

mod compat;
mod daemon;
mod events;
mod login;
mod permissions;
mod roles;
mod security;
mod security_http;
mod tls_proxy;
