//! The decided state of recently used accounts, kept in memory so that a command costs
//! no read of its stream (ARCHITECTURE.md, "Where speed comes from").
//!
//! The cache is only ever a guess about the stream: every append still names the
//! cached version as its expected version, so a stale entry (another instance wrote)
//! is caught by the event store, evicted, and reloaded. Entries are therefore never
//! wrong for long, and a lost entry only costs one read.
//!
//! Bounded by [`ACCOUNT_CACHE_CAPACITY`]: past it, the entry inserted longest ago goes
//! (first in, first out). FIFO rather than LRU because it needs no bookkeeping on reads,
//! and hot accounts come straight back with one read.

use std::collections::{HashMap, VecDeque};

use domain::{Account, AccountId};

/// The most accounts kept. An entry is a few hundred bytes, so this is tens of MiB at
/// most, and covers the working set of any benchmark or realistic burst on one instance.
pub const ACCOUNT_CACHE_CAPACITY: usize = 100_000;

/// An account as of a stream version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAccount {
    pub state: Account,
    /// The stream version `state` was folded up to: the expected version of the next append.
    pub version: u64,
}

/// Accounts by id, bounded, with first-in-first-out eviction.
#[derive(Debug)]
pub struct AccountCache {
    capacity: usize,
    entries: HashMap<AccountId, (CachedAccount, u64)>,
    /// Insertion order as (id, generation); a generation that no longer matches the
    /// entry's is a leftover of an evicted entry and is skipped.
    order: VecDeque<(AccountId, u64)>,
    next_generation: u64,
}

impl AccountCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
        }
    }

    pub fn get(&self, id: &AccountId) -> Option<&CachedAccount> {
        self.entries.get(id).map(|(account, _)| account)
    }

    pub fn contains(&self, id: &AccountId) -> bool {
        self.entries.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stores `account` unless a newer version is already cached: a reader that loaded
    /// before a commit must not overwrite what the commit cached.
    pub fn offer(&mut self, id: AccountId, account: CachedAccount) {
        match self.entries.get_mut(&id) {
            Some((cached, _)) => {
                if account.version > cached.version {
                    *cached = account;
                }
            }
            None => self.insert_new(id, account),
        }
    }

    /// Stores `account` as the state after this instance's own commit.
    pub fn put(&mut self, id: AccountId, account: CachedAccount) {
        match self.entries.get_mut(&id) {
            Some((cached, _)) => *cached = account,
            None => self.insert_new(id, account),
        }
    }

    /// Forgets `id`, after a conflict showed the entry stale or a failure left it unknown.
    pub fn evict(&mut self, id: &AccountId) {
        self.entries.remove(id);
    }

    fn insert_new(&mut self, id: AccountId, account: CachedAccount) {
        while self.entries.len() >= self.capacity {
            let Some((oldest, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(&oldest)
                .is_some_and(|(_, current)| *current == generation)
            {
                self.entries.remove(&oldest);
            }
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.entries.insert(id, (account, generation));
        self.order.push_back((id, generation));
        // Leftovers of evicted entries would otherwise pile up in `order`.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(id, generation)| entries.get(id).is_some_and(|(_, current)| current == generation));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{AccountStatus, Balance, Currency, OverdraftLimit};

    fn account(version: u64) -> (AccountId, CachedAccount) {
        let id = AccountId::new_v7();
        (
            id,
            CachedAccount {
                state: Account {
                    id,
                    owner: None,
                    currency: Currency::parse("EUR").expect("EUR is a currency"),
                    balance: Balance::ZERO,
                    overdraft_limit: OverdraftLimit::ZERO,
                    status: AccountStatus::Open,
                    personal_data_erased: false,
                    pending_debits: Balance::ZERO,
                    pending_credits: Balance::ZERO,
                },
                version,
            },
        )
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity_and_drops_the_oldest_first() {
        let mut cache = AccountCache::new(2);
        let (first, a) = account(1);
        let (second, b) = account(1);
        let (third, c) = account(1);
        cache.put(first, a);
        cache.put(second, b);
        cache.put(third, c);
        assert_eq!(cache.len(), 2);
        assert!(!cache.contains(&first));
        assert!(cache.contains(&second) && cache.contains(&third));
    }

    #[test]
    fn an_older_load_does_not_overwrite_a_newer_cached_version() {
        let mut cache = AccountCache::new(10);
        let (id, mut newer) = account(5);
        cache.put(id, newer.clone());
        newer.version = 3;
        cache.offer(id, newer);
        assert_eq!(cache.get(&id).expect("cached").version, 5);
    }

    #[test]
    fn evicting_and_reinserting_keeps_the_order_queue_bounded() {
        let mut cache = AccountCache::new(4);
        let (id, entry) = account(1);
        for _ in 0..100 {
            cache.put(id, entry.clone());
            cache.evict(&id);
        }
        assert!(cache.order.len() <= 8);
    }
}
