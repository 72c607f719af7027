//! argon2id hashing, always off the async runtime. Each hash needs `m_cost` KiB of work memory;
//! a fixed set of buffers, one per hashing slot, is reused for every hash, so the process keeps
//! `concurrency × m_cost` KiB however many logins it served (freed 19 MiB buffers used to stay in
//! glibc's per-thread arenas). In front of the slots sits a bounded queue with a share per client
//! address: when it is full the caller gets 503 at once, so a flood of logins costs the flooder
//! and not everyone else. Addresses that gave a correct password recently have a lane of their
//! own that is served first, so a flood from many addresses does not lock out known users.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use tokio::sync::oneshot;

use crate::{domain::Password, error::ApiError, settings::Argon2Settings};

/// Seconds a caller is told to wait when the hashing queue is full: a few hashes' time.
const BUSY_RETRY_AFTER: u64 = 1;
/// How long an address that gave a correct password stays in the known lane, and how many such
/// addresses are remembered (only a correct password adds one).
const KNOWN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
const KNOWN_MAX: usize = 10_000;

#[derive(Clone)]
pub struct Hasher {
    pool: Arc<Pool>,
    /// Verified against when the user does not exist, so timing does not reveal names.
    dummy_hash: Arc<str>,
}

impl Hasher {
    pub async fn new(settings: &Argon2Settings) -> anyhow::Result<Self> {
        let params = Params::new(settings.m_cost, settings.t_cost, settings.p_cost, None)
            .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let slots = match settings.concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let pool = Arc::new(Pool {
            params,
            slots,
            slot_queue: Arc::new(Slots::new(slots)),
            buffers: Mutex::default(),
            admission: Mutex::default(),
            known: Mutex::default(),
            max_in_flight: slots + settings.max_queue,
            max_per_client: settings.max_queue_per_client.max(1),
        });
        let dummy = pool
            .hash(b"core4d dummy password".to_vec(), None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            pool,
            dummy_hash: dummy.into(),
        })
    }

    /// Hashes computed at once (each holds `m_cost` KiB for good).
    pub fn concurrency(&self) -> usize {
        self.pool.slots
    }

    /// A PHC string `$argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>` with the configured costs.
    /// Callers are authenticated, so they wait in the known lane, each `caller` (a user id) with
    /// at most its share of it; 503 when either is full.
    pub async fn hash(
        &self,
        password: &Password,
        caller: Option<&str>,
    ) -> Result<String, ApiError> {
        self.pool
            .hash(
                password.expose().as_bytes().to_vec(),
                caller.map(|c| format!("user:{c}")),
            )
            .await
    }

    /// Checks `password` against `hash` for a login from `client` (an IP address); with no hash
    /// (unknown user) it burns the same time and answers false. 503 when the queue, or this
    /// client's share of it, is full. A correct password puts the client's address in the known
    /// lane.
    pub async fn verify(
        &self,
        client: &str,
        password: &str,
        hash: Option<&str>,
    ) -> Result<bool, ApiError> {
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy_hash.to_string(), str::to_string);
        let password = password.as_bytes().to_vec();
        let client = client_key(client);
        let lane = self.pool.lane_of(&client);
        let ok = self
            .pool
            .run(lane, Some(client.clone()), move |memory| {
                verify_with(&password, &hash, memory)
            })
            .await?
            && known;
        if ok {
            self.pool.remember(client);
        }
        Ok(ok)
    }
}

/// The hashing slots, their buffers and the queue in front of them.
struct Pool {
    params: Params,
    slots: usize,
    slot_queue: Arc<Slots>,
    /// Buffers not in use. A buffer is taken only while holding a slot, so there are never more
    /// than `slots` of them.
    buffers: Mutex<Vec<Box<[Block]>>>,
    admission: Mutex<Admission>,
    /// Client keys that gave a correct password, and when.
    known: Mutex<HashMap<String, Instant>>,
    /// Callers waiting for or holding a slot, per lane.
    max_in_flight: usize,
    /// Callers waiting for or holding a slot, per client.
    max_per_client: usize,
}

/// Known clients (and authenticated callers) first, then everyone else.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Lane {
    Known = 0,
    Other = 1,
}

#[derive(Default)]
struct Admission {
    in_flight: [usize; 2],
    per_client: HashMap<String, usize>,
}

/// A place in the queue or a slot; given back when dropped.
struct Ticket {
    pool: Arc<Pool>,
    lane: Lane,
    client: Option<String>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut admission = self.pool.admission();
        admission.in_flight[self.lane as usize] -= 1;
        if let Some(client) = &self.client
            && let Some(n) = admission.per_client.get_mut(client)
        {
            *n -= 1;
            if *n == 0 {
                admission.per_client.remove(client);
            }
        }
    }
}

impl Pool {
    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lane_of(&self, client: &str) -> Lane {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        match known.get(client) {
            Some(at) if at.elapsed() < KNOWN_FOR => Lane::Known,
            _ => Lane::Other,
        }
    }

    fn remember(&self, client: String) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= KNOWN_MAX && !known.contains_key(&client) {
            known.retain(|_, at| at.elapsed() < KNOWN_FOR);
            if known.len() >= KNOWN_MAX {
                return;
            }
        }
        known.insert(client, Instant::now());
    }

    fn admit(self: &Arc<Self>, lane: Lane, client: Option<String>) -> Result<Ticket, ApiError> {
        let mut admission = self.admission();
        if admission.in_flight[lane as usize] >= self.max_in_flight {
            return Err(busy());
        }
        if let Some(client) = &client {
            let n = admission.per_client.entry(client.clone()).or_default();
            if *n >= self.max_per_client {
                return Err(busy());
            }
            *n += 1;
        }
        admission.in_flight[lane as usize] += 1;
        Ok(Ticket {
            pool: self.clone(),
            lane,
            client,
        })
    }

    /// Runs `job` on a blocking thread with a slot's buffer. The ticket and the slot go along
    /// with the job: a caller that hangs up does not free its slot before the hash is done.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        lane: Lane,
        client: Option<String>,
        job: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let ticket = self.admit(lane, client)?;
        let slot = self.slot_queue.acquire(lane).await?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _held = (ticket, slot);
            let mut memory = pool.take_buffer();
            let out = job(&mut memory);
            pool.buffers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(memory);
            out
        })
        .await
        .map_err(ApiError::internal)
    }

    fn take_buffer(&self) -> Box<[Block]> {
        let free = self
            .buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        free.unwrap_or_else(|| vec![Block::new(); self.params.block_count()].into_boxed_slice())
    }

    async fn hash(
        self: &Arc<Self>,
        password: Vec<u8>,
        caller: Option<String>,
    ) -> Result<String, ApiError> {
        let params = self.params.clone();
        self.run(Lane::Known, caller, move |memory| {
            hash_with(&params, &password, Salt::generate(), memory)
        })
        .await?
        .map_err(|e| ApiError::internal(anyhow::anyhow!("hashing failed: {e}")))
    }
}

/// Hashing slots handed out by lane: every waiting caller of the known lane before any other,
/// first come first served within a lane.
struct Slots {
    state: Mutex<SlotState>,
}

struct SlotState {
    free: usize,
    /// Only non-empty while no slot is free.
    waiting: [VecDeque<oneshot::Sender<()>>; 2],
}

/// A slot; handed to the next waiter when dropped.
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A caller waiting for a slot. Dropped before it got one, it leaves the queue; dropped just
/// after a slot was handed to it, it passes the slot on.
struct Waiting {
    slots: Arc<Slots>,
    rx: oneshot::Receiver<()>,
    served: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.served {
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                self.slots.release();
            }
        }
    }
}

impl Slots {
    fn new(slots: usize) -> Self {
        Self {
            state: Mutex::new(SlotState {
                free: slots,
                waiting: Default::default(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn acquire(self: &Arc<Self>, lane: Lane) -> Result<Slot, ApiError> {
        let rx = {
            let mut state = self.state();
            if state.free > 0 {
                state.free -= 1;
                return Ok(Slot(self.clone()));
            }
            let (tx, rx) = oneshot::channel();
            state.waiting[lane as usize].push_back(tx);
            rx
        };
        let mut waiting = Waiting {
            slots: self.clone(),
            rx,
            served: false,
        };
        (&mut waiting.rx)
            .await
            .map_err(|_| ApiError::internal(anyhow::anyhow!("hashing slot queue closed")))?;
        waiting.served = true;
        Ok(Slot(self.clone()))
    }

    fn release(&self) {
        let mut state = self.state();
        for lane in &mut state.waiting {
            while let Some(tx) = lane.pop_front() {
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        state.free += 1;
    }
}

fn busy() -> ApiError {
    tracing::debug!("password hashing queue full");
    ApiError::Busy {
        message: "the password hasher is busy; try again shortly".into(),
        retry_after: BUSY_RETRY_AFTER,
    }
}

/// The queue share key of a client: its IPv4 address, or the /64 of an IPv6 one (a single host
/// is commonly given a whole /64).
pub(super) fn client_key(client: &str) -> String {
    match client.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(IpAddr::V6(v6)) => v6.to_canonical().to_string(),
        _ => client.to_string(),
    }
}

/// The argon2id PHC string of `password` with `params` and `salt`, computed in `memory` — the
/// same string `Argon2::hash_password_with_salt` produces.
fn hash_with(
    params: &Params,
    password: &[u8],
    salt: Salt,
    memory: &mut [Block],
) -> anyhow::Result<String> {
    let (algorithm, version) = (Algorithm::Argon2id, Version::V0x13);
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    argon2
        .hash_password_into_with_memory(password, &salt, out, memory)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let phc = PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(params).map_err(|e| anyhow::anyhow!("{e}"))?,
        salt: Some(salt),
        hash: Some(Output::new(out).map_err(|e| anyhow::anyhow!("{e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash`, with the algorithm, version and costs the
/// string names. A hash that needs more memory than a slot's buffer (made under a larger
/// `m_cost`) gets a temporary one.
fn verify_with(password: &[u8], hash: &str, memory: &mut [Block]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm.as_str()),
        Version::try_from(parsed.version.unwrap_or(Version::default().into())),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    let hashed = if blocks <= memory.len() {
        argon2.hash_password_into_with_memory(password, salt, out, memory)
    } else {
        argon2.hash_password_into(password, salt, out)
    };
    // `Output`'s equality is constant-time.
    hashed.is_ok() && Output::new(out).is_ok_and(|computed| computed == *expected)
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use super::*;

    fn cheap() -> Argon2Settings {
        Argon2Settings {
            m_cost: 1024,
            t_cost: 1,
            p_cost: 1,
            ..Argon2Settings::default()
        }
    }

    fn plain(m: u32, t: u32, p: u32) -> Argon2<'static> {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(m, t, p, None).unwrap(),
        )
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let h = Hasher::new(&cheap()).await.unwrap();
        let hash = h
            .hash(&Password::parse("very secret").unwrap(), None)
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
        assert!(
            h.verify("1.2.3.4", "very secret", Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !h.verify("1.2.3.4", "very secreT", Some(&hash))
                .await
                .unwrap()
        );
        assert!(!h.verify("1.2.3.4", "very secret", None).await.unwrap());
        assert!(
            !h.verify("1.2.3.4", "very secret", Some("garbage"))
                .await
                .unwrap()
        );
    }

    #[test]
    fn a_reused_buffer_gives_the_plain_crates_string() {
        let params = Params::new(1024, 2, 1, None).unwrap();
        let salt = Salt::new(b"sixteen byte slt").unwrap();
        let mut memory = vec![Block::new(); params.block_count()];
        for password in ["first password", "second password"] {
            let ours = hash_with(&params, password.as_bytes(), salt, &mut memory).unwrap();
            let theirs = plain(1024, 2, 1)
                .hash_password_with_salt(password.as_bytes(), &salt)
                .unwrap()
                .to_string();
            assert_eq!(ours, theirs);
        }
    }

    #[tokio::test]
    async fn pool_hashes_verify_with_the_plain_crate_and_back() {
        let h = Hasher::new(&cheap()).await.unwrap();
        let ours = h
            .hash(&Password::parse("pool made").unwrap(), None)
            .await
            .unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            plain(8, 1, 1)
                .verify_password(b"pool made", &parsed)
                .is_ok()
        );
        assert!(
            plain(8, 1, 1)
                .verify_password(b"pool madE", &parsed)
                .is_err()
        );

        let theirs = plain(1024, 1, 1)
            .hash_password(b"crate made")
            .unwrap()
            .to_string();
        assert!(h.verify("::1", "crate made", Some(&theirs)).await.unwrap());
        assert!(!h.verify("::1", "crate madE", Some(&theirs)).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_with_other_parameters_verify() {
        let h = Hasher::new(&cheap()).await.unwrap();
        // Smaller and larger memory than a slot's buffer, more passes and lanes, argon2i.
        for (m, t, p) in [(64, 1, 1), (4096, 1, 1), (1024, 3, 2)] {
            let hash = plain(m, t, p)
                .hash_password(b"other costs")
                .unwrap()
                .to_string();
            assert!(
                h.verify("10.0.0.1", "other costs", Some(&hash))
                    .await
                    .unwrap(),
                "{hash}"
            );
            assert!(
                !h.verify("10.0.0.1", "other cost", Some(&hash))
                    .await
                    .unwrap(),
                "{hash}"
            );
        }
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(256, 2, 1, None).unwrap(),
        )
        .hash_password(b"other algorithm")
        .unwrap()
        .to_string();
        assert!(
            h.verify("10.0.0.1", "other algorithm", Some(&argon2i))
                .await
                .unwrap()
        );
        assert!(
            !h.verify("10.0.0.1", "other algorithms", Some(&argon2i))
                .await
                .unwrap()
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(client_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(client_key("2001:db8:1:2:ffff::9"), "2001:db8:1:2::/64");
        assert_eq!(client_key("::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(client_key("10.1.2.3"), "10.1.2.3");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_its_places() {
        let h = Hasher::new(&Argon2Settings {
            concurrency: 1,
            max_queue: 1,
            max_queue_per_client: 1,
            ..cheap()
        })
        .await
        .unwrap();
        let pool = &h.pool;
        // Hold the only slot and the only queue place, as two slow logins would.
        let a = pool.admit(Lane::Other, Some("a".into())).unwrap();
        assert!(
            matches!(
                pool.admit(Lane::Other, Some("a".into())),
                Err(ApiError::Busy { retry_after: 1, .. })
            ),
            "a's share is used up"
        );
        let b = pool.admit(Lane::Other, Some("b".into())).unwrap();
        assert!(
            matches!(
                pool.admit(Lane::Other, Some("c".into())),
                Err(ApiError::Busy { .. })
            ),
            "queue full"
        );
        assert!(matches!(
            h.verify("c", "x", None).await,
            Err(ApiError::Busy { .. })
        ));
        // The known lane has places of its own.
        let k = pool.admit(Lane::Known, Some("k".into())).unwrap();
        drop((a, b, k));
        assert!(pool.admission().per_client.is_empty());
        assert_eq!(pool.admission().in_flight, [0, 0]);
        assert!(!h.verify("c", "x", None).await.unwrap());
    }

    #[tokio::test]
    async fn a_correct_password_puts_the_address_in_the_known_lane() {
        let h = Hasher::new(&cheap()).await.unwrap();
        let hash = h
            .hash(&Password::parse("right one").unwrap(), None)
            .await
            .unwrap();
        assert!(
            !h.verify("10.0.0.7", "wrong one", Some(&hash))
                .await
                .unwrap()
        );
        assert!(!h.verify("10.0.0.7", "right one", None).await.unwrap());
        assert_eq!(h.pool.lane_of("10.0.0.7"), Lane::Other);
        assert!(
            h.verify("10.0.0.7", "right one", Some(&hash))
                .await
                .unwrap()
        );
        assert_eq!(h.pool.lane_of("10.0.0.7"), Lane::Known);
        assert_eq!(h.pool.lane_of("10.0.0.8"), Lane::Other);
    }

    /// Waits until `n` callers of `lane` are queued (hang guard: the test's timeout).
    async fn queued(slots: &Slots, lane: Lane, n: usize) {
        while slots.state().waiting[lane as usize].len() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn the_known_lane_is_served_first() {
        let slots = Arc::new(Slots::new(1));
        let held = slots.acquire(Lane::Other).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (lane, n) in [(Lane::Other, 1), (Lane::Other, 2), (Lane::Known, 1)] {
            let (mine, order) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = mine.acquire(lane).await.unwrap();
                order.lock().unwrap().push(lane);
            }));
            queued(&slots, lane, n).await;
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            [Lane::Known, Lane::Other, Lane::Other]
        );
        assert_eq!(slots.state().free, 1);
    }

    #[tokio::test]
    async fn a_caller_that_leaves_the_queue_keeps_no_slot() {
        let slots = Arc::new(Slots::new(1));
        // Leaves while waiting.
        let held = slots.acquire(Lane::Other).await.unwrap();
        let gone = tokio::time::timeout(Duration::from_millis(10), slots.acquire(Lane::Other));
        assert!(gone.await.is_err());
        drop(held);
        assert_eq!(slots.state().free, 1);
        // Leaves after the slot was handed to it, before it looked.
        let held = slots.acquire(Lane::Other).await.unwrap();
        let mut waiter = Box::pin(slots.acquire(Lane::Known));
        let pending = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(waiter.as_mut().poll(cx).is_pending())
        })
        .await;
        assert!(pending);
        drop(held);
        assert_eq!(slots.state().free, 0, "handed to the waiter");
        drop(waiter);
        assert_eq!(slots.state().free, 1);
    }

    #[tokio::test]
    async fn buffers_never_outnumber_the_slots() {
        let h = Hasher::new(&Argon2Settings {
            concurrency: 2,
            max_queue: 100,
            max_queue_per_client: 100,
            ..cheap()
        })
        .await
        .unwrap();
        let logins: Vec<_> = (0..20)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.verify("a", &format!("guess {i}"), None).await })
            })
            .collect();
        for login in logins {
            assert!(!login.await.unwrap().unwrap());
        }
        let buffers = h.pool.buffers.lock().unwrap();
        assert!(
            (1..=2).contains(&buffers.len()),
            "{} buffers",
            buffers.len()
        );
        assert!(buffers.iter().all(|b| b.len() == 1024));
    }
}
