//! The real `core4ctl` binary against a real core4d (in-process, one per test, each on its own
//! database of the shared test cluster), with HOME and the XDG directories pinned to a
//! temporary directory.

mod auth;
mod completions;
mod errors;
mod events;
mod helpers;
mod roles;
mod tls;
mod tty;
