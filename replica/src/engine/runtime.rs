//! One instantiated canister: its wasmtime store and instance, and the transaction around every
//! message (commit on success, roll back on trap or after a query).
//!
//! # Rollback without copying the heap
//!
//! The runtime keeps a *shadow*: a copy of the heap as of the last committed message (taken in
//! full once, at instantiation). The instrumented module marks every 4 KiB page it writes in the
//! dirty bytemap (see [`super::instrument`]); host functions record the ranges they write. After
//! a message:
//! - commit: copy each dirty page from the heap into the shadow, remember the globals;
//! - roll back: copy each dirty page from the shadow into the heap, restore the globals (which
//!   include the canister-visible heap size, so a grown heap shrinks back in the canister's view).
//!
//! Either way the cost is proportional to the pages the message wrote, not to the heap size.
//! Stable memory has its own undo log ([`super::stable`]); certified data and the global timer
//! are small and are copied.
//!
//! # Instruction counting
//!
//! Each message starts with the instrumented module's counter global set to its limit; the
//! injected code (and [`super::system_api`] for data copies) count it down. Below zero, the
//! next check (function entry, loop header, data copy) traps, and a message that ends with a
//! negative counter failed too: either way it is the instruction limit and is rolled back.
//! The instructions used are `limit - counter` (at most the limit). The counter is not
//! part of the canister's state: it is neither snapshotted nor rolled back, and set afresh by
//! every message, so a query's (or a trap's) count never leaks into the next message.

use std::sync::Arc;

use candid::Principal;
use wasmtime::{Global, Instance, Memory, Store, Table, Trap, Val};

use super::compile::{wasmtime_engine, Compiled};
use super::instrument::{
    InvalidWasm, DIRTY_EXPORT, DIRTY_PAGE_SHIFT, DIRTY_PAGE_SIZE, HEAP_EXPORT, HEAP_PAGES_EXPORT,
    INSTRUCTIONS_EXPORT, START_EXPORT, STORE_SPILL, TABLE_EXPORT, WASM_PAGE_SIZE,
};
use super::system_api::{
    ApiContext, Closure, Exec, Host, HostTrap, OutOfInstructions, OutgoingCall, Response,
};

/// What a message runs.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    /// An exported function (`canister_update foo`, `canister_init`, ...).
    Export(&'a str),
    /// A callback from the function table.
    Callback(Closure),
}

/// What happens to the state changes of a message that did not trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSuccess {
    /// Keep them (updates, callbacks, init, timers).
    Commit,
    /// Discard them (queries, inspect_message).
    Rollback,
    /// Leave the transaction open: the caller commits or rolls back later (pre_upgrade).
    Defer,
}

/// Why a message failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecError {
    /// A host function trapped.
    Host(HostTrap),
    /// The wasm code trapped (description in IC wording).
    Wasm(String),
    /// The instruction counter went below zero (the limit is given).
    InstructionLimit(u64),
    /// Anything else (engine errors).
    Other(String),
}

/// Result of one message.
#[derive(Debug)]
pub struct Outcome {
    /// `Ok` unless the message trapped (its changes are then rolled back).
    pub result: Result<(), ExecError>,
    /// Reply or reject given by the message (none if it trapped).
    pub response: Option<Response>,
    /// Calls performed (none if it trapped).
    pub outgoing: Vec<OutgoingCall>,
    /// Instructions used (original canister operators, plus the charges of data copies; at
    /// most the limit).
    pub instructions: u64,
    /// `accept_message` was called.
    pub accepted: bool,
}

/// Cheap state saved at the start of a message.
struct SmallSnapshot {
    certified_data: Vec<u8>,
    global_timer: u64,
}

/// An instantiated canister.
pub struct Runtime {
    store: Store<Host>,
    instance: Instance,
    compiled: Arc<Compiled>,
    heap: Memory,
    dirty: Memory,
    heap_pages: Global,
    /// The instruction counter (instructions left, counting down).
    counter: Global,
    table: Option<Table>,
    globals: Vec<Global>,
    committed_globals: Vec<Val>,
    /// The heap as of the last commit (length: committed heap size).
    shadow: Vec<u8>,
    /// Open transaction.
    txn: Option<SmallSnapshot>,
}

fn missing(what: &str) -> InvalidWasm {
    InvalidWasm(format!("instrumented module lacks {what}"))
}

impl Runtime {
    /// Instantiates `compiled` with `host` as its system state and runs the start function, if
    /// any, with `limit` instructions.
    pub fn new(compiled: Arc<Compiled>, mut host: Host, limit: u64) -> Result<Self, ExecError> {
        let engine = wasmtime_engine().map_err(|e| ExecError::Other(e.0))?;
        host.exec = Exec::new(
            ApiContext::Start,
            Principal::management_canister(),
            0,
            limit,
        );
        let mut store = Store::new(engine, host);
        // No canister code runs during instantiation: the start section was turned into the
        // `__ic_start` export, called below once the counter is set.
        let instance = compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, limit))?;
        let heap = instance
            .get_memory(&mut store, HEAP_EXPORT)
            .ok_or_else(|| ExecError::Other(missing("a heap").0))?;
        let dirty = instance
            .get_memory(&mut store, DIRTY_EXPORT)
            .ok_or_else(|| ExecError::Other(missing("a dirty map").0))?;
        let heap_pages = instance
            .get_global(&mut store, HEAP_PAGES_EXPORT)
            .ok_or_else(|| ExecError::Other(missing("the heap size global").0))?;
        let counter = instance
            .get_global(&mut store, INSTRUCTIONS_EXPORT)
            .ok_or_else(|| ExecError::Other(missing("the instruction counter").0))?;
        let table = if compiled.has_table {
            instance.get_table(&mut store, TABLE_EXPORT)
        } else {
            None
        };
        let mut globals = Vec::new();
        for name in &compiled.mutable_global_exports {
            let g = instance
                .get_global(&mut store, name)
                .ok_or_else(|| ExecError::Other(missing(name).0))?;
            globals.push(g);
        }
        store.data_mut().heap = Some(heap);
        store.data_mut().heap_pages = Some(heap_pages);
        store.data_mut().instructions = Some(counter);
        let start = if compiled.has_start {
            Some(
                instance
                    .get_typed_func::<(), ()>(&mut store, START_EXPORT)
                    .map_err(|e| ExecError::Other(format!("start function: {e}")))?,
            )
        } else {
            None
        };
        let mut runtime = Runtime {
            store,
            instance,
            compiled,
            heap,
            dirty,
            heap_pages,
            counter,
            table,
            globals,
            committed_globals: Vec::new(),
            shadow: Vec::new(),
            txn: None,
        };
        if let Some(start) = start {
            runtime.set_counter(limit)?;
            if let Err(e) = start.call(&mut runtime.store, ()) {
                return Err(runtime.failure(e, limit));
            }
            runtime.within_limit(limit)?;
        }
        // The one full copy: the shadow starts as the freshly initialised heap.
        let size = runtime.visible_heap_bytes();
        runtime.shadow = runtime.heap.data(&runtime.store)[..size].to_vec();
        runtime.clear_dirty_map_fully();
        runtime.committed_globals = runtime.read_globals();
        Ok(runtime)
    }

    /// The compiled module this runtime runs.
    pub fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }

    /// Read access to the system state.
    pub fn host(&self) -> &Host {
        self.store.data()
    }

    /// Write access to the system state, outside any message (e.g. disarming the timer).
    pub fn host_mut(&mut self) -> &mut Host {
        self.store.data_mut()
    }

    /// Heap size as the canister sees it, in bytes.
    pub fn visible_heap_bytes(&mut self) -> usize {
        let pages = match self.heap_pages.get(&mut self.store) {
            Val::I32(p) => p as u32 as u64,
            _ => 0,
        };
        (pages * WASM_PAGE_SIZE) as usize
    }

    /// Heap size as committed (what the canister sees between messages).
    pub fn committed_heap_bytes(&self) -> usize {
        self.shadow.len()
    }

    /// Runs one message. State changes are kept or discarded as `on_success` says; a trap
    /// always discards them (and the response and calls of the message).
    pub fn execute(&mut self, entry: Entry<'_>, exec: Exec, on_success: OnSuccess) -> Outcome {
        let limit = exec.instruction_limit;
        {
            let host = self.store.data_mut();
            host.exec = exec;
            host.stable.begin();
            self.txn = Some(SmallSnapshot {
                certified_data: host.certified_data.clone(),
                global_timer: host.global_timer,
            });
        }
        let result = self
            .set_counter(limit)
            .and_then(|()| self.call(entry).map_err(|e| self.failure(e, limit)))
            .and_then(|()| self.within_limit(limit));
        let instructions = limit.saturating_sub(self.counter_value().max(0) as u64);
        let exec = &mut self.store.data_mut().exec;
        let accepted = exec.accepted;
        let (response, outgoing) = match &result {
            Ok(()) => (exec.response.take(), std::mem::take(&mut exec.outgoing)),
            Err(_) => (None, Vec::new()),
        };
        // Drop what the message left behind (argument copies can be large).
        exec.arg = Vec::new();
        exec.data_certificate = None;
        match (&result, on_success) {
            (Ok(()), OnSuccess::Commit) => self.commit(),
            (Ok(()), OnSuccess::Defer) => {}
            _ => self.rollback(),
        }
        Outcome {
            result,
            response,
            outgoing,
            instructions,
            accepted,
        }
    }

    /// Gives the next message `limit` instructions.
    fn set_counter(&mut self, limit: u64) -> Result<(), ExecError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.counter
            .set(&mut self.store, Val::I64(limit))
            .map_err(|e| ExecError::Other(format!("instruction counter: {e}")))
    }

    /// Instructions left (negative once the limit was exceeded).
    fn counter_value(&mut self) -> i64 {
        self.counter.get(&mut self.store).i64().unwrap_or(0)
    }

    /// A message that returned normally may still have exceeded the limit in its last
    /// segments (the injected checks sit at function entries and loop headers only).
    fn within_limit(&mut self, limit: u64) -> Result<(), ExecError> {
        if self.counter_value() < 0 {
            Err(ExecError::InstructionLimit(limit))
        } else {
            Ok(())
        }
    }

    /// Classifies a failed call: whatever trapped (the injected `unreachable` or a system
    /// call's charge), a negative counter means the instruction limit.
    fn failure(&mut self, err: wasmtime::Error, limit: u64) -> ExecError {
        if self.counter_value() < 0 {
            ExecError::InstructionLimit(limit)
        } else {
            classify(err, limit)
        }
    }

    fn call(&mut self, entry: Entry<'_>) -> wasmtime::Result<()> {
        match entry {
            Entry::Export(name) => {
                let f = self
                    .instance
                    .get_typed_func::<(), ()>(&mut self.store, name)?;
                f.call(&mut self.store, ())
            }
            Entry::Callback(Closure { fun, env }) => {
                let func = self
                    .table
                    .and_then(|t| t.get(&mut self.store, fun as u64))
                    .and_then(|r| r.as_func().flatten().cloned());
                let Some(func) = func else {
                    return Err(Trap::TableOutOfBounds.into());
                };
                let Ok(typed) = func.typed::<u32, ()>(&self.store) else {
                    return Err(Trap::BadSignature.into());
                };
                typed.call(&mut self.store, env)
            }
        }
    }

    /// Keeps the changes of the open transaction.
    pub fn commit(&mut self) {
        let size = self.visible_heap_bytes();
        // The visible heap only grows within a message; pages it gained are zero unless dirty.
        self.shadow.resize(size.max(self.shadow.len()), 0);
        let pages = self.take_dirty_pages();
        let heap = self.heap.data(&self.store);
        for page in pages {
            let start = page << DIRTY_PAGE_SHIFT;
            let end = (start + DIRTY_PAGE_SIZE + STORE_SPILL)
                .min(size)
                .min(heap.len());
            if start < end {
                self.shadow[start..end].copy_from_slice(&heap[start..end]);
            }
        }
        self.committed_globals = self.read_globals();
        self.store.data_mut().stable.commit();
        self.store.data_mut().host_dirty.clear();
        self.txn = None;
    }

    /// Undoes every change of the open transaction.
    pub fn rollback(&mut self) {
        let pages = self.take_dirty_pages();
        let shadow_len = self.shadow.len();
        let heap = self.heap.data_mut(&mut self.store);
        for page in pages {
            let start = page << DIRTY_PAGE_SHIFT;
            // Pages beyond the committed size are invisible once the size global is restored,
            // and zeroed by the grow helper before the canister can see them again.
            let end = (start + DIRTY_PAGE_SIZE + STORE_SPILL)
                .min(shadow_len)
                .min(heap.len());
            if start < end {
                heap[start..end].copy_from_slice(&self.shadow[start..end]);
            }
        }
        for (global, value) in self.globals.iter().zip(self.committed_globals.iter()) {
            // The globals and values come from the same module: set cannot fail on type.
            let _ = global.set(&mut self.store, *value);
        }
        let host = self.store.data_mut();
        host.stable.rollback();
        host.host_dirty.clear();
        if let Some(snap) = self.txn.take() {
            host.certified_data = snap.certified_data;
            host.global_timer = snap.global_timer;
        }
    }

    fn read_globals(&mut self) -> Vec<Val> {
        self.globals
            .iter()
            .map(|g| g.get(&mut self.store))
            .collect()
    }

    /// Collects the dirty pages (bytemap + host writes) and clears the bytemap.
    fn take_dirty_pages(&mut self) -> Vec<usize> {
        let real_pages = self.heap.data_size(&self.store) >> DIRTY_PAGE_SHIFT;
        let mut pages = Vec::new();
        {
            let map = self.dirty.data_mut(&mut self.store);
            let scan = real_pages.min(map.len());
            let map = &mut map[..scan];
            let mut base = 0;
            for chunk in map.chunks_mut(8) {
                // One 8-byte load per 8 pages (32 KiB of heap): the scan of a 50 MB heap's
                // map is ~1,600 loads.
                let dirty = match <&[u8; 8]>::try_from(&*chunk) {
                    Ok(word) => u64::from_ne_bytes(*word) != 0,
                    Err(_) => chunk.iter().any(|b| *b != 0),
                };
                if dirty {
                    for (i, b) in chunk.iter_mut().enumerate() {
                        if *b != 0 {
                            pages.push(base + i);
                            *b = 0;
                        }
                    }
                }
                base += chunk.len();
            }
        }
        for &(start, len) in &self.store.data().host_dirty {
            let first = (start as usize) >> DIRTY_PAGE_SHIFT;
            let last = (start as usize + len as usize - 1) >> DIRTY_PAGE_SHIFT;
            pages.extend(first..=last);
        }
        pages.sort_unstable();
        pages.dedup();
        pages
    }

    fn clear_dirty_map_fully(&mut self) {
        self.dirty.data_mut(&mut self.store).fill(0);
    }

    /// Number of pages currently marked dirty (tests and diagnostics).
    #[cfg(test)]
    pub fn dirty_page_count(&self) -> usize {
        self.dirty
            .data(&self.store)
            .iter()
            .filter(|b| **b != 0)
            .count()
    }

    /// The heap as the canister sees it.
    #[cfg(test)]
    pub fn heap_bytes(&mut self) -> Vec<u8> {
        let size = self.visible_heap_bytes();
        self.heap.data(&self.store)[..size].to_vec()
    }
}

/// Maps a wasmtime error to the engine's error kinds (root cause, IC wording).
pub fn classify(err: wasmtime::Error, limit: u64) -> ExecError {
    if let Some(h) = err.downcast_ref::<HostTrap>() {
        return ExecError::Host(h.clone());
    }
    if err.downcast_ref::<OutOfInstructions>().is_some() {
        return ExecError::InstructionLimit(limit);
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::UnreachableCodeReached => ExecError::Wasm("unreachable".into()),
            Trap::MemoryOutOfBounds => ExecError::Wasm("heap out of bounds".into()),
            Trap::StackOverflow => ExecError::Wasm("stack overflow".into()),
            Trap::IntegerDivisionByZero => ExecError::Wasm("integer division by 0".into()),
            Trap::IntegerOverflow => ExecError::Wasm("integer overflow".into()),
            Trap::BadConversionToInteger => ExecError::Wasm("invalid conversion to integer".into()),
            Trap::TableOutOfBounds => ExecError::Wasm("table out of bounds".into()),
            Trap::IndirectCallToNull => {
                ExecError::Wasm("indirect call to an uninitialized table element".into())
            }
            Trap::BadSignature => {
                ExecError::Wasm("function invocation does not match its signature".into())
            }
            other => ExecError::Wasm(other.to_string()),
        };
    }
    ExecError::Other(err.root_cause().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::compile::compile;
    use crate::engine::system_api::SubnetInfo;

    const CANISTER: &str = r#"
      (module
        (import "ic0" "msg_arg_data_size" (func $size (result i32)))
        (import "ic0" "msg_arg_data_copy" (func $copy (param i32 i32 i32)))
        (import "ic0" "msg_reply" (func $reply))
        (import "ic0" "trap" (func $trap (param i32 i32)))
        (import "ic0" "not_an_ic0_function" (func $unknown))
        (memory 4)
        (func (export "canister_update write")
          (call $copy (i32.const 70000) (i32.const 0) (call $size))
          (i32.store (i32.const 200000) (i32.const 42))
          (call $reply))
        (func (export "canister_update write_then_trap")
          (call $copy (i32.const 70000) (i32.const 0) (call $size))
          (i32.store (i32.const 200000) (i32.const 99))
          (call $trap (i32.const 0) (i32.const 0)))
        (func (export "canister_update unknown") (call $unknown)))"#;

    fn runtime() -> Runtime {
        let wasm = wat::parse_str(CANISTER).unwrap();
        let compiled = compile(&wasm).unwrap();
        assert_eq!(
            compiled.unsupported_imports,
            vec!["ic0.not_an_ic0_function".to_string()]
        );
        let host = Host::new(
            Principal::anonymous(),
            vec![],
            Arc::new(SubnetInfo::default()),
            Default::default(),
        );
        Runtime::new(compiled, host, 1_000_000).unwrap()
    }

    fn run(rt: &mut Runtime, method: &str, arg: &[u8]) -> Outcome {
        let mut exec = Exec::new(ApiContext::Update, Principal::anonymous(), 0, 1_000_000);
        exec.arg = arg.to_vec();
        exec.can_respond = true;
        rt.execute(
            Entry::Export(&format!("canister_update {method}")),
            exec,
            OnSuccess::Commit,
        )
    }

    #[test]
    fn commit_copies_dirty_pages_into_the_shadow() {
        let mut rt = runtime();
        let out = run(&mut rt, "write", b"hello");
        assert_eq!(out.result, Ok(()));
        assert_eq!(out.response, Some(Response::Reply(vec![])));
        assert_eq!(
            rt.dirty_page_count(),
            0,
            "the bytemap is clean after a commit"
        );
        let heap = rt.heap_bytes();
        assert_eq!(&heap[70000..70005], b"hello", "host write");
        assert_eq!(heap[200000], 42, "wasm write");
        assert_eq!(rt.shadow, heap, "the shadow is the committed heap");
    }

    #[test]
    fn a_trap_restores_host_and_wasm_writes() {
        let mut rt = runtime();
        run(&mut rt, "write", b"hello");
        let committed = rt.heap_bytes();
        let out = run(&mut rt, "write_then_trap", b"HELLO, WORLD");
        assert!(
            matches!(out.result, Err(ExecError::Host(HostTrap::CalledTrap(_)))),
            "{:?}",
            out.result
        );
        assert_eq!(out.response, None);
        assert_eq!(rt.heap_bytes(), committed);
        assert_eq!(rt.dirty_page_count(), 0);
    }

    #[test]
    fn unknown_imports_trap_with_their_name() {
        let mut rt = runtime();
        let out = run(&mut rt, "unknown", b"");
        match out.result {
            Err(ExecError::Host(HostTrap::Unsupported(m))) => {
                assert!(m.contains("ic0.not_an_ic0_function"), "{m}")
            }
            other => panic!("expected an unsupported-import trap, got {other:?}"),
        }
    }

    #[test]
    fn running_out_of_instructions_is_the_instruction_limit() {
        let wasm = wat::parse_str(
            r#"(module (memory 1) (func (export "canister_update spin") (loop (br 0))))"#,
        )
        .unwrap();
        let host = Host::new(
            Principal::anonymous(),
            vec![],
            Arc::new(SubnetInfo::default()),
            Default::default(),
        );
        let mut rt = Runtime::new(compile(&wasm).unwrap(), host, 1_000).unwrap();
        let out = run(&mut rt, "spin", b"");
        assert_eq!(out.result, Err(ExecError::InstructionLimit(1_000_000)));
        assert_eq!(out.instructions, 1_000_000);
    }
}
