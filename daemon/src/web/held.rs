//! Large replies waiting for their clients to read them, bounded per client address and in all.
//!
//! A reply is built in memory before it is sent; a client that asks for big pages (history of
//! 64 KiB messages, 1,000 to a page) and never reads them would otherwise keep that memory for
//! as long as its connection lives, once per connection. Replies over [`LARGE`] bytes hold their
//! size against both budgets until the last byte is handed to the connection (or the client
//! leaves); a reply over a budget that is not free gets a 503 with `Retry-After` instead. A
//! client holding nothing may always have one reply, whatever its size, so a big page still
//! works for the one reading it.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use poem::{Body, Response};

use crate::metrics::Metrics;

/// Replies up to this size are not counted: they are many and cheap.
pub const LARGE: usize = 64 * 1024;
/// A held reply goes out in pieces of this size, so that its hold lasts until the connection
/// has taken (almost) all of it.
const PIECE: usize = 64 * 1024;

/// The budgets, shared by every connection.
pub struct HeldReplies {
    max_total: usize,
    max_per_address: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// `core4d_http_held_reply_bytes` follows the total.
    metrics: Option<Metrics>,
}

/// Bytes held for one reply; given back when dropped.
struct Hold {
    budget: Arc<HeldReplies>,
    addr: IpAddr,
    bytes: usize,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self
            .budget
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.0 -= self.bytes;
        self.budget.publish(held.0);
        super::count_down(&mut held.1, self.addr, self.bytes);
    }
}

/// Why a reply was not sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This client holds its budget already.
    Client,
    /// All clients together do.
    Everyone,
}

impl HeldReplies {
    pub fn new(max_total: usize, max_per_address: usize, metrics: Option<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            held: Mutex::default(),
            metrics,
        })
    }

    fn publish(&self, total: usize) {
        if let Some(m) = &self.metrics {
            m.held_reply_bytes
                .store(total as i64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Bytes held now, in all and by `addr` (for tests and metrics).
    pub fn held(&self, addr: IpAddr) -> (usize, usize) {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        (held.0, held.1.get(&addr).copied().unwrap_or(0))
    }

    fn hold(self: &Arc<Self>, addr: IpAddr, bytes: usize) -> Result<Hold, Refusal> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = held.1.get(&addr).copied().unwrap_or(0);
        if mine > 0 && mine + bytes > self.max_per_address {
            return Err(Refusal::Client);
        }
        if held.0 > 0 && held.0 + bytes > self.max_total {
            return Err(Refusal::Everyone);
        }
        held.0 += bytes;
        *held.1.entry(addr).or_default() += bytes;
        self.publish(held.0);
        Ok(Hold {
            budget: self.clone(),
            addr,
            bytes,
        })
    }

    /// Lets `resp` through unchanged when its body is small or of unknown length (a stream);
    /// otherwise holds its size for `addr` until it is sent, or refuses it.
    pub async fn admit(self: &Arc<Self>, addr: IpAddr, resp: &mut Response) -> Result<(), Refusal> {
        let body: http_body_util::combinators::BoxBody<Bytes, std::io::Error> =
            resp.take_body().into();
        let size = http_body::Body::size_hint(&body).exact();
        let Some(size) = size.and_then(|s| usize::try_from(s).ok()) else {
            resp.set_body(Body::from(body));
            return Ok(());
        };
        if size <= LARGE {
            resp.set_body(Body::from(body));
            return Ok(());
        }
        let hold = self.hold(addr, size)?;
        // The body is in memory already (its size is exact): collecting it does not wait.
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                resp.set_body(Body::from_bytes_stream(futures_util::stream::once(
                    async move { Err::<Bytes, _>(e) },
                )));
                return Ok(());
            }
        };
        let pieces = futures_util::stream::unfold(
            (bytes, 0usize, Some(hold)),
            |(bytes, at, mut hold)| async move {
                if at >= bytes.len() {
                    hold.take();
                    return None;
                }
                let end = (at + PIECE).min(bytes.len());
                let piece = bytes.slice(at..end);
                Some((Ok::<_, std::io::Error>(piece), (bytes, end, hold)))
            },
        );
        resp.set_body(Body::from_bytes_stream(pieces));
        // Still one body of a known length: keep telling the client so.
        resp.headers_mut()
            .insert(poem::http::header::CONTENT_LENGTH, size.into());
        Ok(())
    }
}

/// Pages that may be large are built a few at a time: a reply is only counted against the
/// budgets above once it is built, and a page of 64 KiB messages can be tens of MB, so many
/// built at once (most of them refused afterwards) would reach that size times their number.
pub struct PageBuilds {
    all: tokio::sync::Semaphore,
    per_address: usize,
    building: Mutex<HashMap<IpAddr, usize>>,
}

/// A page being built; its slots are given back when dropped.
pub struct Building<'a> {
    _mine: ClientSlot<'a>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

/// One of a client's pages being built (or waiting for a slot in all).
struct ClientSlot<'a> {
    gate: &'a PageBuilds,
    addr: IpAddr,
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        let mut building = self
            .gate
            .building
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        super::count_down(&mut building, self.addr, 1);
    }
}

impl PageBuilds {
    /// Pages whose worst case is at most this many bytes are built without a slot.
    pub const SMALL: usize = 1 << 20;

    pub fn new(at_once: usize, per_address: usize) -> Self {
        Self {
            all: tokio::sync::Semaphore::new(at_once.max(1)),
            per_address: per_address.max(1),
            building: Mutex::default(),
        }
    }

    /// A slot to build a page for `addr`: refused at once when that client builds its share
    /// already, else waited for up to `wait`.
    pub async fn enter(
        &self,
        addr: IpAddr,
        wait: std::time::Duration,
    ) -> Result<Building<'_>, Refusal> {
        let mine = {
            let mut building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
            let n = building.entry(addr).or_default();
            if *n >= self.per_address {
                return Err(Refusal::Client);
            }
            *n += 1;
            ClientSlot { gate: self, addr }
        };
        // Refused from here on, `mine` gives the client's slot back as it is dropped.
        match tokio::time::timeout(wait, self.all.acquire()).await {
            Ok(Ok(permit)) => Ok(Building {
                _mine: mine,
                _permit: permit,
            }),
            _ => Err(Refusal::Everyone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holding_nothing_may_have_one_reply_of_any_size() {
        let metrics = Metrics::default();
        let budget = HeldReplies::new(100, 10, Some(metrics.clone()));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let big = budget.hold(a, 50).expect("the first is always let through");
        assert_eq!(budget.hold(a, 1).err(), Some(Refusal::Client));
        let other = budget
            .hold(b, 50)
            .expect("another client has its own budget");
        assert_eq!(
            budget.hold("192.0.2.3".parse().unwrap(), 1).err(),
            Some(Refusal::Everyone)
        );
        assert_eq!(
            metrics
                .held_reply_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            100
        );
        drop(big);
        assert_eq!(budget.held(a), (50, 0));
        let again = budget.hold(a, 5).expect("free again");
        drop((other, again));
        assert_eq!(budget.held(a), (0, 0));
    }

    #[tokio::test]
    async fn large_pages_are_built_a_few_at_a_time_and_a_client_only_its_share() {
        let gate = PageBuilds::new(2, 1);
        let wait = std::time::Duration::from_millis(50);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = gate.enter(a, wait).await.expect("a slot");
        assert_eq!(gate.enter(a, wait).await.err(), Some(Refusal::Client));
        let second = gate.enter(b, wait).await.expect("another client");
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(gate.enter(c, wait).await.err(), Some(Refusal::Everyone));
        drop(first);
        let again = gate.enter(a, wait).await.expect("free again");
        drop((second, again));
        assert!(gate.building.lock().unwrap().is_empty());
    }
}
