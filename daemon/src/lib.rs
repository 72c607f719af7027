//! core4d: the core4 API server over PostgreSQL.

pub mod admin;
pub mod api;
pub mod auth;
pub mod backup;
pub mod domain;
pub mod embedded_pg;
pub mod envelope;
pub mod error;
pub mod events;
pub mod metrics;
pub mod settings;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod web;
