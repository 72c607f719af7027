//! The real `core4ctl` binary against a real core4d (in-process, own embedded PostgreSQL per
//! test), with HOME and the XDG directories pinned to a temporary directory.

mod auth;
mod errors;
// mod events; (enabled once core4d serves the event socket)
mod helpers;
mod roles;
