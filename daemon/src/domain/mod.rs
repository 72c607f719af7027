//! Validated newtypes: holding one means the value is valid.

mod channel;
mod email;
mod object_id;
mod password;
mod permission;
mod role_name;

pub use channel::Channel;
pub use email::Email;
pub use object_id::ObjectId;
pub use password::{MIN_PASSWORD_CHARS, Password};
pub use permission::{Access, Permission, PermissionSet, RegexCache};
pub use role_name::{MAX_NAME_CHARS, RoleName, looks_like_id};
