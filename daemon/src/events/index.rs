//! The interest index: which subscribers (sockets and event streams alike) receive which
//! channel. Read once per published batch by the dispatcher, written on interest changes.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, RwLockReadGuard},
};

use super::subscriber::Subscriber;

type Map = HashMap<String, HashMap<u64, Arc<Subscriber>>>;

#[derive(Default)]
pub struct Index {
    map: RwLock<Map>,
}

/// A read view for a round of publishing (interest changes wait until it is dropped).
pub struct View<'a>(RwLockReadGuard<'a, Map>);

impl View<'_> {
    /// The subscribers of `channel`.
    pub fn subscribers(&self, channel: &str) -> impl Iterator<Item = &Arc<Subscriber>> {
        self.0
            .get(channel)
            .into_iter()
            .flat_map(|subs| subs.values())
    }

    /// Whether anyone receives `channel` (saves encoding events nobody gets).
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.0.contains_key(channel)
    }
}

impl Index {
    pub fn view(&self) -> View<'_> {
        View(self.map.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes `sub` off the `left` channels and puts it on the `joined` ones.
    pub fn move_subscriber(&self, sub: &Arc<Subscriber>, left: &[String], joined: &[String]) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for ch in left {
            if let Some(subs) = map.get_mut(ch) {
                subs.remove(&sub.id);
                if subs.is_empty() {
                    map.remove(ch);
                }
            }
        }
        for ch in joined {
            map.entry(ch.clone())
                .or_default()
                .insert(sub.id, sub.clone());
        }
    }
}
