//! The core4 reply envelope (`_id`, `version`, `timestamp`, `message`, `code`, `data`) and the
//! per-request context that fills it.

use std::sync::Mutex;

use poem_openapi::{
    Object,
    payload::Json,
    types::{ParseFromJSON, ToJSON},
};
use time::{OffsetDateTime, format_description::FormatItem, macros::format_description};

use crate::domain::ObjectId;

/// `version` of every reply.
pub const VERSION: &str = concat!("core4d/", env!("CARGO_PKG_VERSION"));

tokio::task_local! {
    static REQUEST: RequestCtx;
}

/// What one request carries besides its parameters: its id and, when the caller's token was
/// refreshed on the way, the fresh token for the `token` response header.
pub struct RequestCtx {
    pub id: String,
    pub refreshed_token: Mutex<Option<String>>,
}

impl RequestCtx {
    pub fn new() -> Self {
        Self {
            id: ObjectId::new().to_string(),
            refreshed_token: Mutex::new(None),
        }
    }

    /// Runs `fut` with this context visible to [`request_id`] and [`set_refreshed_token`];
    /// returns its output and the refreshed token, if any.
    pub async fn scope<F: Future>(self, fut: F) -> (F::Output, Option<String>) {
        REQUEST
            .scope(self, async move {
                let out = fut.await;
                let token =
                    REQUEST.with(|c| c.refreshed_token.lock().ok().and_then(|mut t| t.take()));
                (out, token)
            })
            .await
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// The id of the request being served (a fresh one outside a request).
pub fn request_id() -> String {
    REQUEST
        .try_with(|c| c.id.clone())
        .unwrap_or_else(|_| ObjectId::new().to_string())
}

/// Hands a refreshed token to the response of the current request.
pub fn set_refreshed_token(token: String) {
    let _ = REQUEST.try_with(|c| {
        if let Ok(mut slot) = c.refreshed_token.lock() {
            *slot = Some(token);
        }
    });
}

/// Drops a refreshed token (after logout there is nothing to refresh).
pub fn clear_refreshed_token() {
    let _ = REQUEST.try_with(|c| {
        if let Ok(mut slot) = c.refreshed_token.lock() {
            *slot = None;
        }
    });
}

const TS_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]");

/// core4's timestamp format: naive UTC ISO-8601 with microseconds, e.g. `2018-10-31T06:37:15.734609`.
pub fn format_ts(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(TS_FORMAT)
        .unwrap_or_default()
}

pub fn now_ts() -> String {
    format_ts(OffsetDateTime::now_utc())
}

/// A successful reply.
#[derive(Object)]
pub struct Envelope<T: ParseFromJSON + ToJSON> {
    /// Request id; the same id tags the server's log lines of this request.
    #[oai(rename = "_id")]
    pub id: String,
    /// `core4d/<version>`.
    pub version: String,
    /// Server time of the reply (UTC).
    pub timestamp: String,
    /// HTTP reason phrase.
    pub message: String,
    /// HTTP status code.
    pub code: u16,
    /// The payload.
    pub data: T,
}

/// A page of a listing.
#[derive(Object)]
pub struct Paged<T: ParseFromJSON + ToJSON> {
    /// Request id.
    #[oai(rename = "_id")]
    pub id: String,
    /// `core4d/<version>`.
    pub version: String,
    /// Server time of the reply (UTC).
    pub timestamp: String,
    /// HTTP reason phrase.
    pub message: String,
    /// HTTP status code.
    pub code: u16,
    /// Number of pages for the current filter.
    pub page_count: u64,
    /// Number of items matching the filter.
    pub total_count: u64,
    /// This page (0-based; a negative request counts from the end and is shown resolved; a page
    /// before the first or after the last is empty and shown as requested).
    pub page: i64,
    /// Items per page.
    pub per_page: u32,
    /// Items on this page.
    pub count: u64,
    /// The items.
    pub data: Vec<T>,
}

/// An error reply: the envelope with `error` instead of `data`.
#[derive(Object, Debug)]
pub struct ErrorEnvelope {
    /// Request id; look for it in the server log.
    #[oai(rename = "_id")]
    pub id: String,
    /// `core4d/<version>`.
    pub version: String,
    /// Server time of the reply (UTC).
    pub timestamp: String,
    /// HTTP reason phrase.
    pub message: String,
    /// HTTP status code.
    pub code: u16,
    /// What went wrong, for people.
    pub error: String,
}

/// Longest `error` text, in characters: values are quoted cut short ([`crate::error::quote`]);
/// this bounds any message that quotes one whole all the same.
pub const MAX_ERROR_CHARS: usize = 512;

impl ErrorEnvelope {
    pub fn new(status: poem::http::StatusCode, error: impl Into<String>) -> Self {
        let mut error = error.into();
        if let Some((cut, _)) = error.char_indices().nth(MAX_ERROR_CHARS) {
            error.truncate(cut);
            error.push('…');
        }
        Self {
            id: request_id(),
            version: VERSION.into(),
            timestamp: now_ts(),
            message: status.canonical_reason().unwrap_or("Error").into(),
            code: status.as_u16(),
            error,
        }
    }
}

/// Wraps `data` in a 200 envelope.
pub fn ok<T: ParseFromJSON + ToJSON>(data: T) -> Json<Envelope<T>> {
    Json(Envelope {
        id: request_id(),
        version: VERSION.into(),
        timestamp: now_ts(),
        message: "OK".into(),
        code: 200,
        data,
    })
}

/// The pager of reference §2: validated `page`/`per_page` resolved against a total.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub page: i64,
    pub per_page: u32,
}

impl Page {
    /// `per_page` must be 1..=max; `page` may be negative (from the end).
    pub fn new(
        page: Option<i64>,
        per_page: Option<u32>,
        max: u32,
    ) -> Result<Self, crate::error::ApiError> {
        let per_page = per_page.unwrap_or(10);
        if per_page == 0 || per_page > max {
            return Err(crate::error::ApiError::BadRequest(format!(
                "parameter [per_page] must be between 1 and {max}"
            )));
        }
        Ok(Self {
            page: page.unwrap_or(0),
            per_page,
        })
    }

    /// Resolves a negative page against `total`; returns (page, page_count, offset). A page
    /// outside the listing, after the last or before the first, is empty and keeps its number
    /// as requested (core4 echoed pages past the end; one before the first has no resolved
    /// number worth showing).
    pub fn resolve(&self, total: u64) -> (i64, u64, u64) {
        let page_count = total.div_ceil(self.per_page as u64);
        let resolved = if self.page < 0 {
            page_count as i64 + self.page
        } else {
            self.page
        };
        if resolved < 0 {
            return (self.page, page_count, u64::MAX);
        }
        let offset = (resolved as u64).saturating_mul(self.per_page as u64);
        (resolved, page_count, offset)
    }

    pub fn reply<T: ParseFromJSON + ToJSON>(
        &self,
        page: i64,
        page_count: u64,
        total: u64,
        data: Vec<T>,
    ) -> Json<Paged<T>> {
        Json(Paged {
            id: request_id(),
            version: VERSION.into(),
            timestamp: now_ts(),
            message: "OK".into(),
            code: 200,
            page_count,
            total_count: total,
            page,
            per_page: self.per_page,
            count: data.len() as u64,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_core4_format() {
        let t = time::macros::datetime!(2018-10-31 06:37:15.734609 UTC);
        assert_eq!(format_ts(t), "2018-10-31T06:37:15.734609");
    }

    #[test]
    fn pager_resolves_negative_pages_and_counts() {
        let p = Page::new(Some(-1), Some(5), 100).unwrap();
        assert_eq!(p.resolve(101), (20, 21, 100));
        let p = Page::new(Some(1), Some(5), 100).unwrap();
        assert_eq!(p.resolve(101), (1, 21, 5));
        assert_eq!(p.resolve(0), (1, 0, 5));
        let before_first = Page::new(Some(-99_999_999_999), Some(5), 100).unwrap();
        assert_eq!(before_first.resolve(101), (-99_999_999_999, 21, u64::MAX));
        let empty_last = Page::new(Some(-1), Some(5), 100).unwrap();
        assert_eq!(empty_last.resolve(0), (-1, 0, u64::MAX));
        let far = Page::new(Some(i64::MIN), Some(5), 100).unwrap();
        assert_eq!(far.resolve(u64::MAX).0, i64::MIN);
        assert!(Page::new(None, Some(0), 100).is_err());
        assert!(Page::new(None, Some(101), 100).is_err());
    }
}
