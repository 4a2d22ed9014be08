//! Stable memory layout: which `MemoryId`s the runtime uses and how the app gets its own.
//!
//! The canister's stable memory is split by one ic-stable-structures [`MemoryManager`] (there
//! can only be one per canister), owned by this module. The runtime uses the
//! [`WS_MEMORY_COUNT`] ids starting at the base id (default [`DEFAULT_BASE_MEMORY_ID`] = 239,
//! i.e. ids 239..=254); every other id (0..=238 by default) is the app's, obtained with
//! [`get`]:
//!
//! ```
//! use ic_stable_structures::{memory_manager::MemoryId, StableBTreeMap};
//! // The app's own map, beside the ws runtime's structures in the same stable memory.
//! let scores: StableBTreeMap<u64, u64, _> =
//!     StableBTreeMap::init(ic_ws_canister::memory::get(MemoryId::new(0)));
//! ```
//!
//! An app that needs other ids for the runtime calls [`set_base_memory_id`] before anything
//! else touches the runtime (first thing in `#[init]` *and* `#[post_upgrade]`, with the same
//! value every time).

use crate::Error;
use ic_stable_structures::memory_manager::{MemoryId, MemoryManager, VirtualMemory};
use ic_stable_structures::DefaultMemoryImpl;
use std::cell::{Cell, RefCell};

/// The memory type of every structure (the canister's stable memory on wasm, a vector in
/// native tests).
pub type Memory = VirtualMemory<DefaultMemoryImpl>;

/// How many consecutive memory ids the runtime reserves.
pub const WS_MEMORY_COUNT: u8 = 16;
/// Default first id of the runtime's range (the range is `239..=254`).
pub const DEFAULT_BASE_MEMORY_ID: u8 = 239;
/// Highest id a `MemoryManager` supports.
const MAX_MEMORY_ID: u8 = 254;

/// Default bucket size of the memory manager (ic-stable-structures' default: 128 pages = 8 MiB).
pub const DEFAULT_BUCKET_SIZE_PAGES: u16 = 128;

thread_local! {
    static MANAGER: RefCell<Option<MemoryManager<DefaultMemoryImpl>>> = const { RefCell::new(None) };
    static BUCKET: Cell<u16> = const { Cell::new(DEFAULT_BUCKET_SIZE_PAGES) };
    static BASE: Cell<u8> = const { Cell::new(DEFAULT_BASE_MEMORY_ID) };
    static FROZEN: RefCell<bool> = const { RefCell::new(false) };
}

/// A virtual memory of the shared memory manager, for the app's own stable structures.
///
/// Ids in the runtime's range are the runtime's: use them and you corrupt its state (the
/// runtime cannot stop you; [`is_reserved`] tells you).
pub fn get(id: MemoryId) -> Memory {
    MANAGER.with(|m| {
        m.borrow_mut()
            .get_or_insert_with(|| {
                MemoryManager::init_with_bucket_size(
                    DefaultMemoryImpl::default(),
                    BUCKET.with(Cell::get),
                )
            })
            .get(id)
    })
}

/// Sets the memory manager's bucket size (the unit in which each structure's memory grows;
/// smaller buckets waste less for small canisters but cap the total at 32 768 buckets, i.e.
/// 2 GiB with 1-page buckets). Only effective when called before the first use of stable
/// memory on a *fresh* canister (first thing in `#[init]`); an existing layout keeps the
/// bucket size it was created with. Fails once the manager exists.
pub fn set_bucket_size_pages(pages: u16) -> Result<(), Error> {
    if pages == 0 {
        return Err(Error::InvalidArgument(
            "bucket size must be positive".into(),
        ));
    }
    if MANAGER.with(|m| m.borrow().is_some()) {
        return Err(Error::InvalidArgument(
            "set_bucket_size_pages must be called before stable memory is used".into(),
        ));
    }
    BUCKET.with(|b| b.set(pages));
    Ok(())
}

/// True if memory id `id` is in the runtime's range.
pub fn is_reserved(id: u8) -> bool {
    let base = BASE.with(Cell::get);
    id >= base && id - base < WS_MEMORY_COUNT
}

/// Moves the runtime's range to `base..base + WS_MEMORY_COUNT`. Must be called before the
/// runtime is first used in this canister instance (and with the same value after every
/// upgrade); afterwards it fails with [`Error::InvalidArgument`].
pub fn set_base_memory_id(base: u8) -> Result<(), Error> {
    if FROZEN.with(|f| *f.borrow()) {
        return Err(Error::InvalidArgument(
            "set_base_memory_id must be called before the ws runtime is used".into(),
        ));
    }
    if u16::from(base) + u16::from(WS_MEMORY_COUNT) > u16::from(MAX_MEMORY_ID) + 1 {
        return Err(Error::InvalidArgument(format!(
            "base memory id {base}: the range must end at or below {MAX_MEMORY_ID}"
        )));
    }
    BASE.with(|b| b.set(base));
    Ok(())
}

/// The runtime's memory number `offset` (freezes the base).
pub(crate) fn ws_memory(offset: u8) -> Memory {
    FROZEN.with(|f| *f.borrow_mut() = true);
    let base = BASE.with(Cell::get);
    get(MemoryId::new(base + offset))
}

/// Which runtime structure uses which offset from the base id.
pub(crate) mod slot {
    pub const COUNTERS: u8 = 0;
    pub const CONFIG: u8 = 1;
    pub const APP_HASH: u8 = 2;
    pub const CLIENTS: u8 = 3;
    pub const KEYS: u8 = 4;
    pub const GATEWAYS: u8 = 5;
    pub const GATEWAY_IDS: u8 = 6;
    /// The outbound-message arena ([`crate::arena`]).
    pub const OUTBOX: u8 = 7;
    /// Issue 10: sessions' verified principals (`runtime/identity.rs`). Slot 8 held the
    /// delivery log before the arena layout (c95fd93), which no canister of an earlier
    /// layout can be upgraded from; no version since has written it, so it is empty in every
    /// canister that upgrades to this one.
    pub const IDENTITIES: u8 = 8;
    pub const SHARED: u8 = 9;
    pub const SUBS: u8 = 10;
    pub const CLIENT_SUBS: u8 = 11;
    pub const TOPICS: u8 = 12;
    /// Unused: the activity index (open sessions by last activity) was a stable map here; it
    /// is on the heap now, rebuilt at load, and a canister upgraded from an earlier version
    /// has this map emptied at its first load (`State::forget_stable_activity_index`).
    pub const ACTIVITY: u8 = 13;
    pub const CLOSED: u8 = 14;
    pub const PENDING_CLOSE: u8 = 15;
}
