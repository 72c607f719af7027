//! `/event` (WebSocket) and `/event/history`. (Being built.)

use poem_openapi::OpenApi;

use super::{ApiTags, AppState};

pub struct EventsApi {
    #[allow(dead_code)]
    state: AppState,
}

impl EventsApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[OpenApi(tag = "ApiTags::Events")]
impl EventsApi {}
