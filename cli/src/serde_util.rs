//! Deserialising helpers for the wire types.

use serde::{Deserialize, Deserializer};

/// Treats `null` like an absent field (the server sends `null` for unset lists).
pub fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
