//! The outbound-message arena: a size-class allocator over one virtual stable memory.
//!
//! Every retained outbound message is one *chunk* of this arena (header + body, see
//! [`crate::store::MsgHeader`]); a session's retained messages form a singly linked list in
//! sequence order (the client record holds the first and last chunk addresses). Keeping the
//! payloads out of B-tree nodes is what makes a `send` cheap (one write of the new chunk,
//! one 8-byte link write, one 8-byte allocator write) and the per-message overhead small (a
//! 32-byte header plus the rounding of the chunk size, instead of B-tree entries that
//! rewrite their neighbours' payloads on every insert and sit in half-full nodes).
//!
//! Layout of the memory:
//!
//! ```text
//! 0      magic "WSA1", 4 bytes reserved
//! 8      end: u64         first never-allocated byte (bump pointer)
//! 16     heads: [u64; N]  per size class, the first free chunk (0 = none)
//! DATA   chunks
//! ```
//!
//! Reclaiming space: a freed chunk (acknowledged message, deleted session) goes onto the free
//! list of its size class (its `next` field links the list), or lowers `end` when it is the
//! last chunk. An allocation takes the head of its class's free list before bumping `end`,
//! so a steady stream of sends and acks of similar sizes runs in constant space. Size classes
//! are 16-byte steps up to 4 KiB and 16 steps per power of two above (at most 6.25 % rounding);
//! chunks are not split or coalesced, so space freed in one class is reused by later messages
//! of the same class only (the arena's footprint is bounded by the peak retained bytes per
//! class, which the per-session queue limits bound in turn).
//!
//! All addresses read from the memory are bounds-checked: a corrupted or out-of-range address
//! reads as "nothing" and never traps.

use crate::memory::Memory;
use ic_stable_structures::Memory as _;

const MAGIC: &[u8; 4] = b"WSA1";
const WASM_PAGE: u64 = 65_536;
/// Classes of 16-byte steps: sizes 16..=4096.
const SMALL_CLASSES: usize = 256;
const SMALL_LIMIT: u64 = 4096;
/// Classes per power of two above [`SMALL_LIMIT`].
const STEPS: u64 = 16;
/// Largest chunk: 2^32 bytes (classes up to there).
const CLASSES: usize = SMALL_CLASSES + (32 - 12) * STEPS as usize;
const HEADS: u64 = 16;
/// First chunk address (after the header, 16-byte aligned).
pub(crate) const DATA_START: u64 = (HEADS + 8 * CLASSES as u64).div_ceil(16) * 16;
/// Offset of the free-list link in a free chunk (the `next` field of a message header).
const LINK: u64 = 8;

/// The arena could not grow (stable memory exhausted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArenaFull;

/// Size class and chunk size for `need` bytes.
pub(crate) fn class_of(need: u64) -> Option<(u16, u64)> {
    let need = need.max(16);
    if need <= SMALL_LIMIT {
        let size = need.div_ceil(16) * 16;
        return Some(((size / 16 - 1) as u16, size));
    }
    let k = 63 - u64::from((need - 1).leading_zeros());
    if k >= 32 {
        return None;
    }
    let step = (1u64 << k) / STEPS;
    let size = need.div_ceil(step) * step;
    let j = size / step - STEPS - 1;
    let class = SMALL_CLASSES as u64 + (k - 12) * STEPS + j;
    Some((class as u16, size))
}

/// Chunk size of a class (inverse of [`class_of`]).
pub(crate) fn class_size(class: u16) -> Option<u64> {
    let c = u64::from(class);
    if c < SMALL_CLASSES as u64 {
        return Some((c + 1) * 16);
    }
    let c = c - SMALL_CLASSES as u64;
    let k = 12 + c / STEPS;
    if k >= 32 {
        return None;
    }
    let step = (1u64 << k) / STEPS;
    Some((STEPS + 1 + c % STEPS) * step)
}

/// The allocator; `end` and the free-list heads are cached on the heap and written through.
pub(crate) struct Arena {
    mem: Memory,
    end: u64,
    heads: Vec<u64>,
}

impl Arena {
    /// Opens the arena in `mem`, formatting it if it is empty (or not an arena).
    pub(crate) fn init(mem: Memory) -> Arena {
        let mut arena = Arena {
            mem,
            end: DATA_START,
            heads: vec![0; CLASSES],
        };
        let mut magic = [0u8; 4];
        if arena.mem.size() > 0 {
            arena.mem.read(0, &mut magic);
        }
        if &magic == MAGIC {
            let mut header = vec![0u8; DATA_START as usize];
            arena.mem.read(0, &mut header);
            arena.end = u64_at(&header, 8).max(DATA_START);
            for (i, h) in arena.heads.iter_mut().enumerate() {
                *h = u64_at(&header, 16 + 8 * i);
            }
        } else if arena.ensure(DATA_START).is_ok() {
            arena.mem.write(0, MAGIC);
            arena.mem.write(8, &DATA_START.to_be_bytes());
            arena.mem.write(HEADS, &vec![0u8; 8 * CLASSES]);
        }
        arena
    }

    /// Bytes in use by the arena (header + chunks, free ones included).
    #[cfg(test)]
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    fn ensure(&mut self, upto: u64) -> Result<(), ArenaFull> {
        let have = self.mem.size().saturating_mul(WASM_PAGE);
        if upto <= have {
            return Ok(());
        }
        let pages = (upto - have).div_ceil(WASM_PAGE);
        if self.mem.grow(pages) < 0 {
            return Err(ArenaFull);
        }
        Ok(())
    }

    /// Makes room (growing the memory if needed) for one chunk of `need` bytes, so that the
    /// next [`Arena::store`] of that size cannot fail. False if the memory cannot grow.
    pub(crate) fn reserve(&mut self, need: u64) -> bool {
        match class_of(need) {
            Some((_, size)) => self
                .end
                .checked_add(size)
                .is_some_and(|e| self.ensure(e).is_ok()),
            None => false,
        }
    }

    fn set_head(&mut self, class: usize, addr: u64) {
        self.heads[class] = addr;
        self.mem
            .write(HEADS + 8 * class as u64, &addr.to_be_bytes());
    }

    fn set_end(&mut self, end: u64) {
        self.end = end;
        self.mem.write(8, &end.to_be_bytes());
    }

    /// Stores `chunk` in a new chunk of its size class and returns its address. Its first two
    /// bytes are overwritten with the class (read back by [`Arena::free`]).
    pub(crate) fn store(&mut self, chunk: &mut [u8]) -> Result<u64, ArenaFull> {
        let (class, size) = class_of(chunk.len() as u64).ok_or(ArenaFull)?;
        if let Some(c) = chunk.get_mut(..2) {
            c.copy_from_slice(&class.to_be_bytes());
        }
        let c = usize::from(class);
        let head = self.heads[c];
        let addr = if head != 0 && self.in_bounds(head, size) {
            let next = self.read_u64(head + LINK).unwrap_or(0);
            self.set_head(c, next);
            head
        } else {
            let addr = self.end;
            let new_end = addr.checked_add(size).ok_or(ArenaFull)?;
            self.ensure(new_end)?;
            self.set_end(new_end);
            addr
        };
        self.mem.write(addr, chunk);
        Ok(addr)
    }

    /// Frees the chunk at `addr` (reads its class from its first two bytes).
    pub(crate) fn free(&mut self, addr: u64) {
        let mut class = [0u8; 2];
        if !self.read(addr, &mut class) {
            return;
        }
        let class = u16::from_be_bytes(class);
        let Some(size) = class_size(class) else {
            return;
        };
        if !self.in_bounds(addr, size) {
            return;
        }
        if addr + size == self.end {
            self.set_end(addr);
            return;
        }
        let c = usize::from(class);
        self.mem.write(addr + LINK, &self.heads[c].to_be_bytes());
        self.set_head(c, addr);
    }

    fn in_bounds(&self, addr: u64, len: u64) -> bool {
        addr >= DATA_START && addr.checked_add(len).is_some_and(|e| e <= self.end)
    }

    /// Reads `dst.len()` bytes at `addr`; false (and nothing read) if out of the arena.
    pub(crate) fn read(&self, addr: u64, dst: &mut [u8]) -> bool {
        if !self.in_bounds(addr, dst.len() as u64) {
            return false;
        }
        self.mem.read(addr, dst);
        true
    }

    pub(crate) fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_be_bytes(b))
    }

    /// Writes `src` at `addr` (inside an allocated chunk); ignored if out of the arena.
    pub(crate) fn write(&self, addr: u64, src: &[u8]) {
        if self.in_bounds(addr, src.len() as u64) {
            self.mem.write(addr, src);
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    crate::store::Reader::new(b.get(at..).unwrap_or(&[])).u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_stable_structures::memory_manager::{MemoryId, MemoryManager};
    use ic_stable_structures::DefaultMemoryImpl;

    fn memory() -> Memory {
        MemoryManager::init_with_bucket_size(DefaultMemoryImpl::default(), 1).get(MemoryId::new(0))
    }

    #[test]
    fn classes_round_up_and_invert() {
        let mut last = 0;
        for need in (1..20_000u64).chain([1 << 20, (1 << 20) + 1, (1 << 31) + 5]) {
            let (class, size) = class_of(need).unwrap();
            assert!(size >= need, "{need}");
            assert_eq!(class_size(class), Some(size), "{need}");
            assert!(u64::from(class) >= last, "classes grow with the size");
            last = u64::from(class);
            // At most 16 bytes or 6.25 % of rounding.
            assert!(
                size - need.max(16) < 16 || (size - need) * 16 <= need,
                "{need}"
            );
        }
        assert_eq!(class_of(1 << 33), None);
    }

    #[test]
    fn freed_chunks_are_reused_and_state_survives_reload() {
        let mem = memory();
        let mut a = Arena::init(mem.clone());
        let x = a.store(&mut [0; 100]).unwrap();
        let y = a.store(&mut [0; 100]).unwrap();
        let z = a.store(&mut [0; 1000]).unwrap();
        assert!(x >= DATA_START && y >= x + 112 && z >= y + 112);
        a.write(z + 16, b"hello");
        let end = a.end();
        a.free(x);
        a.free(y);
        // Same class: reused, last freed first, without growing.
        assert_eq!(a.store(&mut [0; 110]).unwrap(), y);
        assert_eq!(a.end(), end);
        // Another class does not take them.
        let w = a.store(&mut [0; 500]).unwrap();
        assert_eq!(w, end);
        // A reload (upgrade) sees the same allocator state: x is still free.
        let mut b = Arena::init(mem);
        assert_eq!(b.end(), a.end());
        assert_eq!(b.store(&mut [0; 100]).unwrap(), x);
        let mut buf = [0u8; 5];
        assert!(b.read(z + 16, &mut buf));
        assert_eq!(&buf, b"hello");
        // Freeing the last chunk gives the space back to the end.
        let end = b.end();
        b.free(w);
        assert_eq!(b.end(), end - 512);
        assert_eq!(b.store(&mut [0; 500]).unwrap(), w);
    }

    #[test]
    fn steady_send_ack_runs_in_constant_space() {
        let mut a = Arena::init(memory());
        let mut live = std::collections::VecDeque::new();
        for i in 0..10_000u64 {
            live.push_back(a.store(&mut vec![0; (150 + i % 7) as usize]).unwrap());
            if live.len() > 50 {
                a.free(live.pop_front().unwrap());
            }
        }
        assert!(a.end() <= DATA_START + 51 * 160, "end {}", a.end());
    }

    #[test]
    fn bad_addresses_never_trap() {
        let mut a = Arena::init(memory());
        let x = a.store(&mut [0; 64]).unwrap();
        let mut buf = [0u8; 64];
        assert!(!a.read(u64::MAX - 3, &mut buf));
        assert!(!a.read(a.end(), &mut buf));
        assert_eq!(a.read_u64(3), None);
        a.free(u64::MAX);
        a.free(7);
        a.write(u64::MAX - 1, &[1, 2, 3]);
        // A chunk whose class bytes were overwritten with garbage is not freed.
        a.write(x, &[0xff, 0xff]);
        let end = a.end();
        a.free(x);
        assert_eq!(a.end(), end);
        assert!(a.store(&mut [0; 64]).unwrap() != x);
    }
}
