//! Stable memory of one canister: sparse 4 KiB pages with a per-message undo log.
//!
//! Pages are allocated on first write (a canister that grows its stable memory to gigabytes
//! costs nothing until it writes there; unwritten pages read as zeros). Every message starts a
//! transaction ([`StableMemory::begin`]): the first write to a page saves its previous content,
//! so a rollback costs the pages written by the message, never the whole stable memory.

use std::collections::HashMap;

/// Page size of the sparse store and of the undo log.
pub const PAGE: usize = 4096;
/// Stable memory is sized in wasm pages.
pub const WASM_PAGE: u64 = 65536;
/// Largest stable memory the IC allows (500 GiB), in wasm pages.
pub const MAX_WASM_PAGES: u64 = 500 * 1024 * 1024 * 1024 / WASM_PAGE;

type Page = Box<[u8; PAGE]>;

/// Why a stable-memory access failed (becomes a canister trap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds;

#[derive(Default, Clone)]
struct Undo {
    size_pages: u64,
    /// Previous content of each page written since `begin` (`None`: it was not allocated).
    pages: HashMap<u64, Option<Page>>,
}

/// A canister's stable memory.
#[derive(Default, Clone)]
pub struct StableMemory {
    pages: HashMap<u64, Page>,
    size_pages: u64,
    undo: Option<Undo>,
}

impl StableMemory {
    /// Size in wasm pages.
    pub fn size_pages(&self) -> u64 {
        self.size_pages
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_pages * WASM_PAGE
    }

    /// Starts recording changes (a message begins). A transaction still open is committed.
    pub fn begin(&mut self) {
        self.undo = Some(Undo {
            size_pages: self.size_pages,
            pages: HashMap::new(),
        });
    }

    /// Keeps the changes since [`Self::begin`].
    pub fn commit(&mut self) {
        self.undo = None;
    }

    /// Undoes every change since [`Self::begin`].
    pub fn rollback(&mut self) {
        if let Some(undo) = self.undo.take() {
            self.size_pages = undo.size_pages;
            for (index, old) in undo.pages {
                match old {
                    Some(page) => {
                        self.pages.insert(index, page);
                    }
                    None => {
                        self.pages.remove(&index);
                    }
                }
            }
        }
    }

    /// `ic0.stable64_grow`: returns the old size in pages, or `None` if the result would exceed
    /// `max_pages` (the canister then sees -1).
    pub fn grow(&mut self, new_pages: u64, max_pages: u64) -> Option<u64> {
        let old = self.size_pages;
        let new = old.checked_add(new_pages)?;
        if new > max_pages {
            return None;
        }
        self.size_pages = new;
        Some(old)
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes() => Ok(()),
            _ => Err(OutOfBounds),
        }
    }

    /// Copies `[offset, offset + dst.len())` into `dst`.
    pub fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, dst.len() as u64)?;
        let mut done = 0usize;
        while done < dst.len() {
            let pos = offset + done as u64;
            let (index, within) = (pos / PAGE as u64, (pos % PAGE as u64) as usize);
            let n = (PAGE - within).min(dst.len() - done);
            match self.pages.get(&index) {
                Some(page) => dst[done..done + n].copy_from_slice(&page[within..within + n]),
                None => dst[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// How many 4 KiB pages a write of `len` bytes at `offset` would write for the first time
    /// in the current message (the IC charges each such page; outside a message: 0). Counts at
    /// most the pages of the range, whatever its length claims (bounds are checked by the write).
    pub fn pages_first_written_by(&self, offset: u64, len: u64) -> u64 {
        let Some(undo) = &self.undo else {
            return 0;
        };
        if len == 0
            || offset
                .checked_add(len)
                .is_none_or(|end| end > self.size_bytes())
        {
            return 0;
        }
        let first = offset / PAGE as u64;
        let last = (offset + len - 1) / PAGE as u64;
        (first..=last)
            .filter(|index| !undo.pages.contains_key(index))
            .count() as u64
    }

    /// Writes `src` at `offset`.
    pub fn write(&mut self, offset: u64, src: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, src.len() as u64)?;
        let mut done = 0usize;
        while done < src.len() {
            let pos = offset + done as u64;
            let (index, within) = (pos / PAGE as u64, (pos % PAGE as u64) as usize);
            let n = (PAGE - within).min(src.len() - done);
            if let Some(undo) = &mut self.undo {
                undo.pages
                    .entry(index)
                    .or_insert_with(|| self.pages.get(&index).cloned());
            }
            let page = self
                .pages
                .entry(index)
                .or_insert_with(|| Box::new([0u8; PAGE]));
            page[within..within + n].copy_from_slice(&src[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// A copy of the current content without the undo log (upgrades hand it to the new module
    /// while the old one can still roll back).
    pub fn snapshot(&self) -> StableMemory {
        StableMemory {
            pages: self.pages.clone(),
            size_pages: self.size_pages,
            undo: None,
        }
    }

    /// Pages allocated (written at least once), for diagnostics and tests.
    #[cfg(test)]
    pub fn allocated_pages(&self) -> usize {
        self.pages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grown(pages: u64) -> StableMemory {
        let mut m = StableMemory::default();
        assert_eq!(m.grow(pages, MAX_WASM_PAGES), Some(0));
        m
    }

    #[test]
    fn reads_back_writes_across_page_boundaries() {
        let mut m = grown(1);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        m.write(4000, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read(4000, &mut back).unwrap();
        assert_eq!(back, data);
        let mut zeros = [1u8; 16];
        m.read(WASM_PAGE - 16, &mut zeros).unwrap();
        assert_eq!(zeros, [0u8; 16], "unwritten pages read as zero");
    }

    #[test]
    fn pages_are_charged_once_per_message_when_first_written() {
        let mut m = grown(1);
        assert_eq!(m.pages_first_written_by(0, 10), 0, "outside a message");
        m.begin();
        // 4000..14000 touches pages 0, 1, 2, 3.
        assert_eq!(m.pages_first_written_by(4000, 10_000), 4);
        m.write(4000, &[7u8; 10_000]).unwrap();
        assert_eq!(
            m.pages_first_written_by(4096 * 3, 4096 * 2),
            1,
            "page 4 only"
        );
        assert_eq!(
            m.pages_first_written_by(0, 1),
            0,
            "page 0 is already written"
        );
        assert_eq!(m.pages_first_written_by(0, 0), 0);
        assert_eq!(
            m.pages_first_written_by(WASM_PAGE - 1, 2),
            0,
            "out of bounds"
        );
        assert_eq!(m.pages_first_written_by(u64::MAX, 2), 0, "overflow");
        m.commit();
        m.begin();
        assert_eq!(
            m.pages_first_written_by(4000, 10_000),
            4,
            "a new message pays again"
        );
    }

    #[test]
    fn out_of_bounds_is_an_error() {
        let mut m = grown(1);
        assert_eq!(m.write(WASM_PAGE - 1, &[1, 2]), Err(OutOfBounds));
        assert_eq!(m.read(u64::MAX, &mut [0u8; 2]), Err(OutOfBounds));
        assert_eq!(m.grow(MAX_WASM_PAGES, MAX_WASM_PAGES), None);
    }

    #[test]
    fn rollback_restores_content_size_and_allocation() {
        let mut m = grown(1);
        m.write(10, b"committed").unwrap();
        m.begin();
        m.write(10, b"CHANGED!!").unwrap();
        assert_eq!(m.grow(2, MAX_WASM_PAGES), Some(1));
        m.write(WASM_PAGE * 2, b"new page").unwrap();
        m.rollback();
        let mut back = [0u8; 9];
        m.read(10, &mut back).unwrap();
        assert_eq!(&back, b"committed");
        assert_eq!(m.size_pages(), 1);
        assert_eq!(
            m.allocated_pages(),
            1,
            "the page first written by the rolled-back message is freed"
        );
    }

    #[test]
    fn commit_keeps_changes() {
        let mut m = grown(1);
        m.begin();
        m.write(0, b"kept").unwrap();
        m.commit();
        m.rollback(); // no open transaction: nothing to undo
        let mut back = [0u8; 4];
        m.read(0, &mut back).unwrap();
        assert_eq!(&back, b"kept");
    }
}
