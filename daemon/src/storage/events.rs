//! Events storage: owned by the events module.
