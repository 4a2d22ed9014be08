//! Rewrites canister wasm before compilation so the engine can call callbacks, snapshot globals
//! and roll back the heap cheaply.
//!
//! What the rewrite adds (the canister's own behaviour is unchanged):
//! - **Exports** of the function table (`__ic_table`, callbacks are table indices), of every
//!   mutable global (`__ic_global_<index>`, restored after a trap), of the heap (`__ic_heap`),
//!   as the IC's own instrumentation does.
//! - **Dirty-page tracking**: a second memory (`__ic_dirty`, multi-memory) holds one byte per
//!   4 KiB page of the heap. Every store instruction first writes 1 into the byte of the page its
//!   effective address falls in; `memory.fill` / `memory.copy` / `memory.init` mark every page of
//!   their destination range (through an injected helper function). A store that starts in page
//!   `p` can spill at most [`STORE_SPILL`] bytes into page `p + 1`; the engine copies that many
//!   extra bytes with every dirty page instead of marking two pages per store.
//! - **A virtual heap size**: `memory.size` and `memory.grow` are redirected to a mutable global
//!   (`__ic_heap_pages`) and an injected grow function. Wasm memories cannot shrink, so a message
//!   that grew the heap and is then rolled back leaves the real memory larger than the canister's
//!   view of it; restoring the global restores the view. When the canister grows again into pages
//!   left over by a rolled-back message, the grow function zeroes them first, so the canister
//!   sees fresh zero pages exactly as on the IC.
//!
//! - **Instruction counting** (as the IC does it): a mutable i64 global (`__ic_instructions`)
//!   holds the instructions the message may still execute. At the start of every straight-line
//!   segment of each canister function, the rewrite subtracts what the IC charges for the
//!   segment's *original* operators (see [`operator_cost`] and [`super::costs`]); bulk memory
//!   instructions also subtract their length when they run. Segments end after every branch, `if`,
//!   `else`, `end`, `return`, `unreachable` and at loop headers, so a loop pays its body on
//!   every iteration. Each function works on a copy of the counter in a local (kept in a
//!   register), written back to the global before calls and when leaving the function, and
//!   reloaded after calls. At function entry and loop headers (where every cycle and recursion
//!   passes) the rewrite also traps (`unreachable`) if the count is below zero; the engine
//!   recognises the limit by the negative counter, also after a message that returned. The code the rewrite injects (dirty-page marking,
//!   the helpers, the counter update itself) is not counted: counts do not depend on how many
//!   stores a canister makes. See `ENGINE.md`, "Instruction counting".
//! - **No start section**: the start function is exported as `__ic_start` instead, so the
//!   engine can set the instruction counter before running it.
//!
//! The engine's rollback ([`super::runtime`]) relies on all of this: after a message it copies
//! only the dirty pages (into the committed shadow on success, from it on trap or query).

use std::collections::HashSet;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, MemArg, MemorySection, MemoryType, Module, RawSection, TypeSection,
    ValType,
};
use wasmparser::{
    CompositeInnerType, ExternalKind, FunctionBody, Operator, Parser, Payload, TypeRef,
};

/// Export name of the canister's (only) linear memory.
pub const HEAP_EXPORT: &str = "__ic_heap";
/// Export name of the dirty-page bytemap memory.
pub const DIRTY_EXPORT: &str = "__ic_dirty";
/// Export name of the global holding the canister-visible heap size in wasm pages.
pub const HEAP_PAGES_EXPORT: &str = "__ic_heap_pages";
/// Export name of the function table.
pub const TABLE_EXPORT: &str = "__ic_table";
/// Export name of the i64 global counting down the instructions a message may still execute.
pub const INSTRUCTIONS_EXPORT: &str = "__ic_instructions";
/// Export name of the module's start function (the start section is removed).
pub const START_EXPORT: &str = "__ic_start";
/// Prefix of the exports of mutable globals.
pub const GLOBAL_EXPORT_PREFIX: &str = "__ic_global_";
/// log2 of the dirty-tracking page size.
pub const DIRTY_PAGE_SHIFT: u32 = 12;
/// Dirty-tracking page size (4 KiB).
pub const DIRTY_PAGE_SIZE: usize = 1 << DIRTY_PAGE_SHIFT;
/// Bytes a store that starts in one page can write into the next one (v128 store: 16 - 1).
pub const STORE_SPILL: usize = 16;
/// Size of the bytemap memory: one byte per 4 KiB page of a 4 GiB heap = 1 MiB = 16 wasm pages.
pub const DIRTY_MAP_WASM_PAGES: u64 = 16;
/// Wasm page size.
pub const WASM_PAGE_SIZE: u64 = 65536;
/// Largest 32-bit heap in wasm pages.
const MAX_WASM32_PAGES: u64 = 65536;

/// Why a module could not be instrumented (surfaced as an invalid-wasm reject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidWasm(pub String);

impl std::fmt::Display for InvalidWasm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<wasmparser::BinaryReaderError> for InvalidWasm {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        InvalidWasm(format!("cannot parse wasm: {e}"))
    }
}

impl<E: std::fmt::Display> From<wasm_encoder::reencode::Error<E>> for InvalidWasm {
    fn from(e: wasm_encoder::reencode::Error<E>) -> Self {
        InvalidWasm(format!("cannot re-encode wasm: {e}"))
    }
}

/// The rewritten module and what the engine needs to know about it.
#[derive(Debug, Clone)]
pub struct Instrumented {
    /// Rewritten wasm bytes.
    pub wasm: Vec<u8>,
    /// Names of the exported functions of the original module.
    pub function_exports: Vec<String>,
    /// Export names of all mutable globals (including `__ic_heap_pages`).
    pub mutable_global_exports: Vec<String>,
    /// Whether `__ic_table` is exported.
    pub has_table: bool,
    /// Largest heap the canister may grow to, in wasm pages.
    pub max_heap_pages: u64,
    /// Whether the module had a start function (now exported as `__ic_start`).
    pub has_start: bool,
}

/// What the first pass learns about the module.
#[derive(Default)]
struct Layout {
    /// For each type index: number of params when it is a function type.
    type_params: Vec<Option<u32>>,
    num_types: u32,
    imported_funcs: u32,
    /// The IC's fixed overhead of a call to each imported function (by function index).
    import_overheads: Vec<u64>,
    /// Type index of each function (imported then defined).
    func_types: Vec<u32>,
    imported_globals: u32,
    mutable_globals: Vec<u32>,
    defined_globals: u32,
    has_table: bool,
    memories: Vec<wasmparser::MemoryType>,
    imported_memory: bool,
    function_exports: Vec<String>,
    export_names: HashSet<String>,
    start_func: Option<u32>,
}

impl Layout {
    fn scan(wasm: &[u8]) -> Result<Self, InvalidWasm> {
        let mut l = Layout::default();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(r) => {
                    for group in r {
                        for sub in group?.into_types() {
                            let params = match &sub.composite_type.inner {
                                CompositeInnerType::Func(f) => Some(f.params().len() as u32),
                                _ => None,
                            };
                            l.type_params.push(params);
                        }
                    }
                    l.num_types = l.type_params.len() as u32;
                }
                Payload::ImportSection(r) => {
                    for import in r.into_imports() {
                        {
                            let import = import?;
                            match import.ty {
                                TypeRef::Func(t) | TypeRef::FuncExact(t) => {
                                    l.imported_funcs += 1;
                                    l.import_overheads.push(super::costs::import_overhead(
                                        import.module,
                                        import.name,
                                    ));
                                    l.func_types.push(t);
                                }
                                TypeRef::Global(g) => {
                                    if g.mutable {
                                        l.mutable_globals.push(l.imported_globals);
                                    }
                                    l.imported_globals += 1;
                                }
                                TypeRef::Table(_) => l.has_table = true,
                                TypeRef::Memory(m) => {
                                    l.imported_memory = true;
                                    l.memories.push(m);
                                }
                                TypeRef::Tag(_) => {}
                            }
                        }
                    }
                }
                Payload::FunctionSection(r) => {
                    for t in r {
                        l.func_types.push(t?);
                    }
                }
                Payload::TableSection(r) => l.has_table |= r.count() > 0,
                Payload::MemorySection(r) => {
                    for m in r {
                        l.memories.push(m?);
                    }
                }
                Payload::GlobalSection(r) => {
                    for (i, g) in r.into_iter().enumerate() {
                        if g?.ty.mutable {
                            l.mutable_globals.push(l.imported_globals + i as u32);
                        }
                        l.defined_globals += 1;
                    }
                }
                Payload::StartSection { func, .. } => l.start_func = Some(func),
                Payload::ExportSection(r) => {
                    for e in r {
                        let e = e?;
                        l.export_names.insert(e.name.to_string());
                        if matches!(e.kind, ExternalKind::Func | ExternalKind::FuncExact) {
                            l.function_exports.push(e.name.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if l.imported_memory {
            return Err(InvalidWasm("canisters must not import a memory".into()));
        }
        if l.memories.len() > 1 {
            return Err(InvalidWasm(format!(
                "canisters may define at most one memory, this module defines {}",
                l.memories.len()
            )));
        }
        if let Some(m) = l.memories.first() {
            if m.memory64 {
                return Err(InvalidWasm(
                    "64-bit (memory64) heaps are not supported".into(),
                ));
            }
            if m.shared {
                return Err(InvalidWasm(
                    "shared memories (threads) are not supported".into(),
                ));
            }
        }
        for name in [
            HEAP_EXPORT,
            DIRTY_EXPORT,
            HEAP_PAGES_EXPORT,
            TABLE_EXPORT,
            INSTRUCTIONS_EXPORT,
            START_EXPORT,
        ] {
            if l.export_names.contains(name) {
                return Err(InvalidWasm(format!("export name `{name}` is reserved")));
            }
        }
        if l.export_names
            .iter()
            .any(|n| n.starts_with(GLOBAL_EXPORT_PREFIX))
        {
            return Err(InvalidWasm(format!(
                "export names starting with `{GLOBAL_EXPORT_PREFIX}` are reserved"
            )));
        }
        Ok(l)
    }

    fn defined_funcs(&self) -> u32 {
        self.func_types.len() as u32 - self.imported_funcs
    }

    fn params_of_func(&self, func_index: u32) -> Result<u32, InvalidWasm> {
        self.func_types
            .get(func_index as usize)
            .and_then(|t| self.type_params.get(*t as usize).copied().flatten())
            .ok_or_else(|| InvalidWasm(format!("function {func_index} has no function type")))
    }
}

/// Indices of everything the rewrite injects.
#[derive(Clone, Copy)]
struct Injected {
    /// Type `(i32, i32) -> ()` of the mark-range helper.
    mark_type: u32,
    /// Type `(i32) -> i32` of the grow helper.
    grow_type: u32,
    mark_func: u32,
    grow_func: u32,
    heap_pages_global: u32,
    /// The instruction counter (i64, counts down).
    counter_global: u32,
    /// Bytemap memory index (the canister's heap is memory 0).
    dirty_mem: u32,
    max_heap_pages: u64,
}

/// Section order of the core module format (custom sections excluded).
fn section_rank(id: u8) -> Option<u8> {
    Some(match id {
        1 => 1,   // type
        2 => 2,   // import
        3 => 3,   // function
        4 => 4,   // table
        5 => 5,   // memory
        13 => 6,  // tag
        6 => 7,   // global
        7 => 8,   // export
        8 => 9,   // start
        9 => 10,  // element
        12 => 11, // data count
        10 => 12, // code
        11 => 13, // data
        _ => return None,
    })
}

/// Rewrites `wasm` (see the module documentation).
pub fn instrument(wasm: &[u8]) -> Result<Instrumented, InvalidWasm> {
    // Validating first gives precise errors for broken input, and rejects the proposals the
    // rewrite does not handle (atomics would write memory without marking pages dirty).
    let features = wasmparser::WasmFeatures::default()
        - wasmparser::WasmFeatures::THREADS
        - wasmparser::WasmFeatures::SHARED_EVERYTHING_THREADS
        - wasmparser::WasmFeatures::MEMORY64;
    wasmparser::Validator::new_with_features(features)
        .validate_all(wasm)
        .map_err(|e| InvalidWasm(format!("invalid wasm module: {e}")))?;
    let layout = Layout::scan(wasm)?;
    let max_heap_pages = layout
        .memories
        .first()
        .map(|m| m.maximum.unwrap_or(MAX_WASM32_PAGES).min(MAX_WASM32_PAGES))
        .unwrap_or(0);
    let total_funcs = layout.func_types.len() as u32;
    let inj = Injected {
        mark_type: layout.num_types,
        grow_type: layout.num_types + 1,
        mark_func: total_funcs,
        grow_func: total_funcs + 1,
        heap_pages_global: layout.imported_globals + layout.defined_globals,
        counter_global: layout.imported_globals + layout.defined_globals + 1,
        dirty_mem: 1,
        max_heap_pages,
    };
    let initial_heap_pages = layout.memories.first().map(|m| m.initial).unwrap_or(0);

    let mut mutable_global_exports: Vec<String> = layout
        .mutable_globals
        .iter()
        .map(|g| format!("{GLOBAL_EXPORT_PREFIX}{g}"))
        .collect();
    mutable_global_exports.push(format!("{GLOBAL_EXPORT_PREFIX}{}", inj.heap_pages_global));

    let mut out = Module::new();
    // Sections this rewrite must emit, by rank: emitted in place when the module has them,
    // otherwise created just before the first section of higher rank.
    let mut pending: Vec<u8> = vec![1, 3, 5, 7, 8, 12];
    let mut defined_func_index = layout.imported_funcs;

    let emit_fresh = |out: &mut Module, rank: u8| -> Result<(), InvalidWasm> {
        match rank {
            1 => {
                let mut s = TypeSection::new();
                add_helper_types(&mut s);
                out.section(&s);
            }
            3 => {
                let mut s = FunctionSection::new();
                s.function(inj.mark_type).function(inj.grow_type);
                out.section(&s);
            }
            5 => {
                let mut s = MemorySection::new();
                // A module without memory gets an empty heap so the layout is always the same.
                s.memory(heap_memory_type(0, None));
                s.memory(dirty_memory_type());
                out.section(&s);
            }
            7 => {
                let mut s = GlobalSection::new();
                add_globals(&mut s, initial_heap_pages);
                out.section(&s);
            }
            8 => {
                let mut s = ExportSection::new();
                add_exports(&mut s, &layout, &inj);
                out.section(&s);
            }
            12 => {
                let mut s = CodeSection::new();
                add_helper_bodies(&mut s, &inj);
                out.section(&s);
            }
            _ => {}
        }
        Ok(())
    };

    let mut reencoder = RoundtripReencoder;
    let mut code_section: Option<CodeSection> = None;
    let total_bodies = layout.defined_funcs();
    let mut bodies_seen = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Payload::CodeSectionEntry(body) = &payload {
            let section = code_section
                .as_mut()
                .ok_or_else(|| InvalidWasm("code entry outside the code section".into()))?;
            let params = layout.params_of_func(defined_func_index)?;
            defined_func_index += 1;
            bodies_seen += 1;
            section.function(&rewrite_body(body, params, &inj, &layout.import_overheads)?);
            if bodies_seen == total_bodies {
                add_helper_bodies(section, &inj);
                out.section(&*section);
            }
            continue;
        }
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        if let Some(rank) = section_rank(id) {
            while let Some(&first) = pending.first() {
                if first < rank {
                    emit_fresh(&mut out, first)?;
                    pending.remove(0);
                } else {
                    break;
                }
            }
            pending.retain(|r| *r != rank);
        }
        match payload {
            Payload::TypeSection(r) => {
                let mut s = TypeSection::new();
                reencoder.parse_type_section(&mut s, r)?;
                add_helper_types(&mut s);
                out.section(&s);
            }
            Payload::FunctionSection(r) => {
                let mut s = FunctionSection::new();
                reencoder.parse_function_section(&mut s, r)?;
                s.function(inj.mark_type).function(inj.grow_type);
                out.section(&s);
            }
            Payload::MemorySection(r) => {
                let mut s = MemorySection::new();
                if r.count() == 0 {
                    s.memory(heap_memory_type(0, None));
                }
                for m in r {
                    let m = m?;
                    s.memory(heap_memory_type(m.initial, m.maximum));
                }
                s.memory(dirty_memory_type());
                out.section(&s);
            }
            Payload::GlobalSection(r) => {
                let mut s = GlobalSection::new();
                reencoder.parse_global_section(&mut s, r)?;
                add_globals(&mut s, initial_heap_pages);
                out.section(&s);
            }
            Payload::ExportSection(r) => {
                let mut s = ExportSection::new();
                reencoder.parse_export_section(&mut s, r)?;
                add_exports(&mut s, &layout, &inj);
                out.section(&s);
            }
            // Exported as `__ic_start` instead (see the module documentation).
            Payload::StartSection { .. } => {}
            Payload::CodeSectionStart { count, .. } => {
                let mut section = CodeSection::new();
                if count == 0 {
                    add_helper_bodies(&mut section, &inj);
                    out.section(&section);
                } else {
                    code_section = Some(section);
                }
            }
            _ => {
                out.section(&RawSection {
                    id,
                    data: &wasm[range],
                });
            }
        }
    }
    for rank in pending {
        emit_fresh(&mut out, rank)?;
    }
    let wasm = out.finish();
    Ok(Instrumented {
        wasm,
        function_exports: layout.function_exports,
        mutable_global_exports,
        has_table: layout.has_table,
        max_heap_pages,
        has_start: layout.start_func.is_some(),
    })
}

fn heap_memory_type(initial: u64, maximum: Option<u64>) -> MemoryType {
    MemoryType {
        minimum: initial,
        maximum,
        memory64: false,
        shared: false,
        page_size_log2: None,
    }
}

fn dirty_memory_type() -> MemoryType {
    MemoryType {
        minimum: DIRTY_MAP_WASM_PAGES,
        maximum: Some(DIRTY_MAP_WASM_PAGES),
        memory64: false,
        shared: false,
        page_size_log2: None,
    }
}

fn add_helper_types(s: &mut TypeSection) {
    s.ty().function([ValType::I32, ValType::I32], []);
    s.ty().function([ValType::I32], [ValType::I32]);
}

/// The heap size global, then the instruction counter (0 until the engine sets it: code run
/// without a limit set traps at once).
fn add_globals(s: &mut GlobalSection, initial_pages: u64) {
    s.global(
        GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i32_const(initial_pages as i32),
    );
    s.global(
        GlobalType {
            val_type: ValType::I64,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i64_const(0),
    );
}

fn add_exports(s: &mut ExportSection, layout: &Layout, inj: &Injected) {
    s.export(HEAP_EXPORT, ExportKind::Memory, 0);
    s.export(DIRTY_EXPORT, ExportKind::Memory, inj.dirty_mem);
    s.export(HEAP_PAGES_EXPORT, ExportKind::Global, inj.heap_pages_global);
    s.export(INSTRUCTIONS_EXPORT, ExportKind::Global, inj.counter_global);
    if let Some(start) = layout.start_func {
        s.export(START_EXPORT, ExportKind::Func, start);
    }
    if layout.has_table {
        s.export(TABLE_EXPORT, ExportKind::Table, 0);
    }
    for g in layout
        .mutable_globals
        .iter()
        .chain(std::iter::once(&inj.heap_pages_global))
    {
        s.export(
            &format!("{GLOBAL_EXPORT_PREFIX}{g}"),
            ExportKind::Global,
            *g,
        );
    }
}

fn dirty_memarg(inj: &Injected) -> MemArg {
    MemArg {
        offset: 0,
        align: 0,
        memory_index: inj.dirty_mem,
    }
}

/// `mark(dst, len)`: marks every 4 KiB page of `[dst, dst + len)` dirty (nothing if `len` is 0).
/// An overflowing range makes the `memory.fill` below trap, as the instrumented bulk operation
/// would have trapped anyway.
fn mark_body(inj: &Injected) -> Function {
    let (dst, len) = (0, 1);
    let mut f = Function::new([]);
    f.instructions()
        .local_get(len)
        .i32_eqz()
        .if_(BlockType::Empty)
        .return_()
        .end()
        // destination: first page
        .local_get(dst)
        .i32_const(DIRTY_PAGE_SHIFT as i32)
        .i32_shr_u()
        .i32_const(1)
        // count: last page - first page + 1
        .local_get(dst)
        .local_get(len)
        .i32_add()
        .i32_const(1)
        .i32_sub()
        .i32_const(DIRTY_PAGE_SHIFT as i32)
        .i32_shr_u()
        .local_get(dst)
        .i32_const(DIRTY_PAGE_SHIFT as i32)
        .i32_shr_u()
        .i32_sub()
        .i32_const(1)
        .i32_add()
        .memory_fill(inj.dirty_mem)
        .end();
    f
}

/// `grow(delta) -> old | -1`: grows the canister-visible heap (see the module documentation).
fn grow_body(inj: &Injected) -> Function {
    let delta = 0;
    let (old, real, new) = (1, 2, 3); // i32 locals
    let new64 = 4; // i64 local
    let mut f = Function::new([(3, ValType::I32), (1, ValType::I64)]);
    f.instructions()
        .global_get(inj.heap_pages_global)
        .local_set(old)
        // new64 = old + delta (unsigned, no overflow in 64 bits)
        .local_get(old)
        .i64_extend_i32_u()
        .local_get(delta)
        .i64_extend_i32_u()
        .i64_add()
        .local_tee(new64)
        .i64_const(inj.max_heap_pages as i64)
        .i64_gt_u()
        .if_(BlockType::Empty)
        .i32_const(-1)
        .return_()
        .end()
        .local_get(new64)
        .i32_wrap_i64()
        .local_set(new)
        .memory_size(0)
        .local_set(real)
        // grow the real memory when the canister needs more than it has
        .local_get(new)
        .local_get(real)
        .i32_gt_u()
        .if_(BlockType::Empty)
        .local_get(new)
        .local_get(real)
        .i32_sub()
        .memory_grow(0)
        .i32_const(-1)
        .i32_eq()
        .if_(BlockType::Empty)
        .i32_const(-1)
        .return_()
        .end()
        .end()
        // recycled = min(new, real): pages [old, recycled) hold leftovers of rolled-back
        // messages and must read as zero again
        .local_get(new)
        .local_get(real)
        .local_get(new)
        .local_get(real)
        .i32_lt_u()
        .select()
        .local_set(real)
        .local_get(real)
        .local_get(old)
        .i32_gt_u()
        .if_(BlockType::Empty)
        .local_get(old)
        .i32_const(16)
        .i32_shl()
        .i32_const(0)
        .local_get(real)
        .local_get(old)
        .i32_sub()
        .i32_const(16)
        .i32_shl()
        .memory_fill(0)
        .local_get(old)
        .i32_const(16)
        .i32_shl()
        .local_get(real)
        .local_get(old)
        .i32_sub()
        .i32_const(16)
        .i32_shl()
        .call(inj.mark_func)
        .end()
        .local_get(new)
        .global_set(inj.heap_pages_global)
        .local_get(old)
        .end();
    f
}

fn add_helper_bodies(s: &mut CodeSection, inj: &Injected) {
    s.function(&mark_body(inj));
    s.function(&grow_body(inj));
}

/// Value type a store instruction writes, and how many bytes.
fn store_kind(op: &Operator<'_>) -> Option<(wasmparser::MemArg, ValType)> {
    use Operator as O;
    Some(match op {
        O::I32Store { memarg } | O::I32Store8 { memarg } | O::I32Store16 { memarg } => {
            (*memarg, ValType::I32)
        }
        O::I64Store { memarg }
        | O::I64Store8 { memarg }
        | O::I64Store16 { memarg }
        | O::I64Store32 { memarg } => (*memarg, ValType::I64),
        O::F32Store { memarg } => (*memarg, ValType::F32),
        O::F64Store { memarg } => (*memarg, ValType::F64),
        O::V128Store { memarg }
        | O::V128Store8Lane { memarg, .. }
        | O::V128Store16Lane { memarg, .. }
        | O::V128Store32Lane { memarg, .. }
        | O::V128Store64Lane { memarg, .. } => (*memarg, ValType::V128),
        _ => return None,
    })
}

/// Instructions one execution of an original operator costs on the IC: its weight
/// ([`super::costs::operator_cost`]) plus, for a call to an imported system function, that
/// call's fixed overhead (`import_overheads`, by imported function index).
pub fn operator_cost(op: &Operator<'_>, import_overheads: &[u64]) -> u64 {
    let weight = super::costs::operator_cost(op);
    match op {
        Operator::Call { function_index } => weight.saturating_add(
            import_overheads
                .get(*function_index as usize)
                .copied()
                .unwrap_or(0),
        ),
        _ => weight,
    }
}

/// Whether the operator after `op` starts a new straight-line segment: `op` branches, or the
/// next operator can be reached from elsewhere (a loop header, the start of a then/else arm,
/// the join point after `end`), or is dead code. Calls do not end a segment (as on the IC):
/// the code after a call runs when the call returns, so it is charged with the code before it.
fn ends_segment(op: &Operator<'_>) -> bool {
    use Operator as O;
    matches!(
        op,
        O::Loop { .. }
            | O::If { .. }
            | O::Else
            | O::End
            | O::Br { .. }
            | O::BrIf { .. }
            | O::BrTable { .. }
            | O::Return
            | O::Unreachable
            | O::ReturnCall { .. }
            | O::ReturnCallIndirect { .. }
            | O::ReturnCallRef { .. }
            | O::BrOnNull { .. }
            | O::BrOnNonNull { .. }
            | O::BrOnCast { .. }
            | O::BrOnCastFail { .. }
            | O::Throw { .. }
            | O::ThrowRef
            | O::Rethrow { .. }
            | O::TryTable { .. }
            | O::Try { .. }
            | O::Catch { .. }
            | O::CatchAll
            | O::Delegate { .. }
    )
}

/// For each operator index (and one past the end), the cost of the segment starting there
/// (0 where no segment starts or the segment is empty).
fn segment_costs(ops: &[Operator<'_>], import_overheads: &[u64]) -> Vec<u64> {
    let mut costs = vec![0u64; ops.len() + 1];
    let mut start = 0;
    // Every function call starts with a charge of its own, as on the IC.
    let mut cost = super::costs::FUNCTION_ENTRY;
    for (i, op) in ops.iter().enumerate() {
        cost += operator_cost(op, import_overheads);
        if ends_segment(op) {
            costs[start] = cost;
            start = i + 1;
            cost = 0;
        }
    }
    costs[start] = cost;
    costs
}

/// `count -= cost` on the function's cached copy of the counter (a local, so Cranelift keeps
/// it in a register), then, where `check`, `if count < 0 { counter = count; unreachable }`
/// (the engine reads the negative counter as the instruction limit).
fn charge(f: &mut Function, inj: &Injected, count: u32, cost: u64, check: bool) {
    let mut sink = f.instructions();
    sink.local_get(count);
    if cost > 0 {
        sink.i64_const(cost as i64).i64_sub();
    }
    if !check {
        sink.local_set(count);
        return;
    }
    if cost > 0 {
        sink.local_tee(count);
    }
    sink.i64_const(0)
        .i64_lt_s()
        .if_(BlockType::Empty)
        .local_get(count)
        .global_set(inj.counter_global)
        .unreachable()
        .end();
}

/// Where the cached count must be written back to the counter global before `op` (calls: the
/// callee and the host read it; leaving the function: the caller or the engine does), and
/// whether it must be reloaded after `op` (a call returned: the callee or the host charged).
/// `depth` is the number of blocks open inside the function body before `op`.
fn flush_around(op: &Operator<'_>, depth: u32, last: bool) -> (bool, bool) {
    use Operator as O;
    match op {
        O::Call { .. } | O::CallIndirect { .. } | O::CallRef { .. } => (true, true),
        O::Return
        | O::ReturnCall { .. }
        | O::ReturnCallIndirect { .. }
        | O::ReturnCallRef { .. }
        | O::BrTable { .. }
        | O::BrOnNull { .. }
        | O::BrOnNonNull { .. }
        | O::BrOnCast { .. }
        | O::BrOnCastFail { .. } => (true, false),
        O::Br { relative_depth } | O::BrIf { relative_depth } => (*relative_depth == depth, false),
        O::End => (last, false),
        _ => (false, false),
    }
}

/// Temporary locals appended to a function.
struct Temps {
    a: u32,
    b: u32,
    c: u32,
    i64_: u32,
    f32_: u32,
    f64_: u32,
    /// The new counter value of [`charge`].
    count: u32,
    v128: Option<u32>,
}

impl Temps {
    fn for_value(&self, ty: ValType) -> Result<u32, InvalidWasm> {
        Ok(match ty {
            ValType::I32 => self.b,
            ValType::I64 => self.i64_,
            ValType::F32 => self.f32_,
            ValType::F64 => self.f64_,
            ValType::V128 => self
                .v128
                .ok_or_else(|| InvalidWasm("v128 temp missing".into()))?,
            ValType::Ref(_) => return Err(InvalidWasm("reference-typed store".into())),
        })
    }
}

fn rewrite_body(
    body: &FunctionBody<'_>,
    params: u32,
    inj: &Injected,
    import_overheads: &[u64],
) -> Result<Function, InvalidWasm> {
    let mut reencoder = RoundtripReencoder;
    let mut locals: Vec<(u32, ValType)> = Vec::new();
    let mut next_local = params;
    for local in body.get_locals_reader()? {
        let (count, ty) = local?;
        next_local = next_local
            .checked_add(count)
            .ok_or_else(|| InvalidWasm("too many locals".into()))?;
        locals.push((count, reencoder.val_type(ty)?));
    }
    let mut ops = Vec::new();
    let mut reader = body.get_operators_reader()?;
    while !reader.eof() {
        ops.push(reader.read()?);
    }
    reader.finish()?;
    let uses_v128_store = ops
        .iter()
        .any(|op| matches!(store_kind(op), Some((_, ValType::V128))));
    let temps = Temps {
        a: next_local,
        b: next_local + 1,
        c: next_local + 2,
        i64_: next_local + 3,
        f32_: next_local + 4,
        f64_: next_local + 5,
        count: next_local + 6,
        v128: uses_v128_store.then_some(next_local + 7),
    };
    locals.extend([
        (3, ValType::I32),
        (1, ValType::I64),
        (1, ValType::F32),
        (1, ValType::F64),
        (1, ValType::I64),
    ]);
    if uses_v128_store {
        locals.push((1, ValType::V128));
    }
    let costs = segment_costs(&ops, import_overheads);
    let last = ops.len().saturating_sub(1);
    let mut f = Function::new(locals);
    f.instructions()
        .global_get(inj.counter_global)
        .local_set(temps.count);
    let mut after_loop = false;
    let mut depth: u32 = 0;
    for (i, op) in ops.into_iter().enumerate() {
        // Checks where control can come back (function entry, loop headers): every cycle and
        // every recursion passes one. Elsewhere only decrement (see the module documentation).
        let check = i == 0 || after_loop;
        if costs[i] > 0 || i == 0 {
            charge(&mut f, inj, temps.count, costs[i], check);
        }
        after_loop = matches!(op, Operator::Loop { .. });
        let (flush, reload) = flush_around(&op, depth, i == last);
        if flush {
            f.instructions()
                .local_get(temps.count)
                .global_set(inj.counter_global);
        }
        match op {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. }
            | Operator::Try { .. } => depth += 1,
            Operator::End => depth = depth.saturating_sub(1),
            _ => {}
        }
        if let Some((memarg, ty)) = store_kind(&op) {
            if memarg.memory != 0 {
                return Err(InvalidWasm("store to a memory other than 0".into()));
            }
            let value = temps.for_value(ty)?;
            let mut sink = f.instructions();
            sink.local_set(value).local_tee(temps.a);
            if memarg.offset != 0 {
                // Wrapping is harmless: an address that wraps makes the store itself trap.
                sink.i32_const(memarg.offset as u32 as i32).i32_add();
            }
            sink.i32_const(DIRTY_PAGE_SHIFT as i32)
                .i32_shr_u()
                .i32_const(1)
                .i32_store8(dirty_memarg(inj))
                .local_get(temps.a)
                .local_get(value);
            f.instruction(&reencoder.instruction(op)?);
            continue;
        }
        match op {
            Operator::MemoryFill { mem: 0 }
            | Operator::MemoryCopy {
                dst_mem: 0,
                src_mem: 0,
            }
            | Operator::MemoryInit { mem: 0, .. } => {
                // Stack: [dst, value|src, len]. The IC charges the length on top of the
                // operator's weight, before the operation runs (a length past the limit traps
                // without copying).
                f.instructions()
                    .local_set(temps.c)
                    .local_set(temps.b)
                    .local_set(temps.a)
                    .local_get(temps.count)
                    .local_get(temps.c)
                    .i64_extend_i32_u()
                    .i64_sub()
                    .local_set(temps.count);
                charge(&mut f, inj, temps.count, 0, true);
                f.instructions()
                    .local_get(temps.a)
                    .local_get(temps.c)
                    .call(inj.mark_func)
                    .local_get(temps.a)
                    .local_get(temps.b)
                    .local_get(temps.c);
                f.instruction(&reencoder.instruction(op)?);
            }
            Operator::MemorySize { mem: 0 } => {
                f.instructions().global_get(inj.heap_pages_global);
            }
            Operator::MemoryGrow { mem: 0 } => {
                f.instructions().call(inj.grow_func);
            }
            Operator::MemoryFill { .. }
            | Operator::MemoryCopy { .. }
            | Operator::MemoryInit { .. }
            | Operator::MemorySize { .. }
            | Operator::MemoryGrow { .. }
            | Operator::MemoryDiscard { .. } => {
                return Err(InvalidWasm(format!(
                    "unsupported memory instruction {op:?}"
                )));
            }
            op => {
                f.instruction(&reencoder.instruction(op)?);
                if reload {
                    f.instructions()
                        .global_get(inj.counter_global)
                        .local_set(temps.count);
                }
            }
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Instance, Module, Store, Val};

    const PROBE: &str = r#"
      (module
        (memory 2)
        (global $g (mut i32) (i32.const 5))
        (table 2 funcref)
        (func (export "store") (param i32 i32) (i32.store offset=4 (local.get 0) (local.get 1)))
        (func (export "store64") (param i32 i64) (i64.store (local.get 0) (local.get 1)))
        (func (export "fill") (param i32 i32 i32) (memory.fill (local.get 0) (local.get 1) (local.get 2)))
        (func (export "copy") (param i32 i32 i32) (memory.copy (local.get 0) (local.get 1) (local.get 2)))
        (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
        (func (export "size") (result i32) (memory.size))
        (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
        (func (export "bump") (global.set $g (i32.add (global.get $g) (i32.const 1))))
      )"#;

    struct Probe {
        store: Store<()>,
        instance: Instance,
    }

    impl Probe {
        fn new(wat_src: &str) -> (Probe, Instrumented) {
            let wasm = wat::parse_str(wat_src).unwrap();
            let out = instrument(&wasm).unwrap();
            let engine = super::super::compile::wasmtime_engine().unwrap();
            let module = Module::new(engine, &out.wasm).unwrap();
            let mut store = Store::new(engine, ());
            let instance = Instance::new(&mut store, &module, &[]).unwrap();
            let mut probe = Probe { store, instance };
            probe.set_counter(i64::MAX);
            (probe, out)
        }

        fn counter(&mut self) -> i64 {
            let g = self
                .instance
                .get_global(&mut self.store, INSTRUCTIONS_EXPORT)
                .unwrap();
            g.get(&mut self.store).i64().unwrap()
        }

        fn set_counter(&mut self, value: i64) {
            let g = self
                .instance
                .get_global(&mut self.store, INSTRUCTIONS_EXPORT)
                .unwrap();
            g.set(&mut self.store, Val::I64(value)).unwrap();
        }

        /// Instructions counted by a call of `name`.
        fn cost(&mut self, name: &str, args: &[Val]) -> i64 {
            self.set_counter(i64::MAX);
            self.call(name, args);
            i64::MAX - self.counter()
        }

        fn call(&mut self, name: &str, args: &[Val]) -> Option<i32> {
            let f = self.instance.get_func(&mut self.store, name).unwrap();
            let mut results = vec![Val::I32(0); f.ty(&self.store).results().len()];
            f.call(&mut self.store, args, &mut results).unwrap();
            results.first().and_then(Val::i32)
        }

        fn dirty_pages(&mut self) -> Vec<usize> {
            let map = self
                .instance
                .get_memory(&mut self.store, DIRTY_EXPORT)
                .unwrap();
            let pages = map
                .data(&self.store)
                .iter()
                .enumerate()
                .filter(|(_, b)| **b != 0)
                .map(|(i, _)| i)
                .collect();
            map.data_mut(&mut self.store).fill(0);
            pages
        }

        fn heap(&mut self) -> Vec<u8> {
            let heap = self
                .instance
                .get_memory(&mut self.store, HEAP_EXPORT)
                .unwrap();
            heap.data(&self.store).to_vec()
        }

        fn set_heap_pages(&mut self, pages: i32) {
            let g = self
                .instance
                .get_global(&mut self.store, HEAP_PAGES_EXPORT)
                .unwrap();
            g.set(&mut self.store, Val::I32(pages)).unwrap();
        }
    }

    /// Two loops with the same cost per iteration, one storing to the heap (each store gets ~8
    /// injected operators), one only loading. With the IC's weights: function entry 1 (`block`
    /// and `loop` are free); per iteration the loop header's segment `local.get local.get
    /// i32.ge_u br_if` (1 + 1 + 1 + 2), then the body: 2 x 3 operators of stores or loads (1
    /// each), `local.get i32.const i32.add local.set` (4) and `br` (2): 12. The last header
    /// check costs 5 more: 1 + 17 K + 5.
    const COUNTING: &str = r#"
      (module
        (memory 1)
        (func (export "stores") (param $k i32) (local $i i32)
          (block $done
            (loop $top
              (br_if $done (i32.ge_u (local.get $i) (local.get $k)))
              (i32.store (local.get $i) (local.get $i))
              (i32.store offset=8192 (i32.const 0) (local.get $i))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $top))))
        (func (export "loads") (param $k i32) (local $i i32)
          (block $done
            (loop $top
              (br_if $done (i32.ge_u (local.get $i) (local.get $k)))
              (drop (i32.load (local.get $i)))
              (drop (i32.load offset=8192 (i32.const 0)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $top))))
        (func (export "branch") (param i32)
          (if (local.get 0) (then (nop) (nop) (nop)) (else (nop))))
        (func (export "bulk")
          (memory.fill (i32.const 0) (i32.const 1) (i32.const 50000))
          (drop (memory.grow (i32.const 1)))
          (drop (memory.size)))
        (func $callee (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
        (func (export "calls") (drop (call $callee (call $callee (i32.const 1)))))
      )"#;

    #[test]
    fn loops_are_charged_per_iteration_and_stores_cost_what_loads_cost() {
        let (mut p, _) = Probe::new(COUNTING);
        for k in [0, 1, 7, 1000] {
            let expected = 17 * k as i64 + 6;
            assert_eq!(
                p.cost("stores", &[Val::I32(k)]),
                expected,
                "stores, K = {k}"
            );
            assert_eq!(p.cost("loads", &[Val::I32(k)]), expected, "loads, K = {k}");
        }
        assert!(
            p.dirty_pages().contains(&2),
            "the stores did run (and were tracked)"
        );
    }

    #[test]
    fn only_the_taken_arm_of_an_if_is_charged() {
        let (mut p, _) = Probe::new(COUNTING);
        // Entry 1, `local.get if` (1 + 2), then `nop nop nop` (3) or `nop` (1); `else` and `end`
        // are free.
        assert_eq!(p.cost("branch", &[Val::I32(1)]), 7);
        assert_eq!(p.cost("branch", &[Val::I32(0)]), 5);
    }

    #[test]
    fn injected_helpers_cost_only_the_original_operator() {
        let (mut p, _) = Probe::new(COUNTING);
        // Entry 1, `i32.const x3` (3) `memory.fill` (100 + its 50,000 bytes), `i32.const
        // memory.grow drop` (1 + 300 + 1), `memory.size drop` (20 + 1): the mark and grow
        // helpers (and the fill of 13 pages of the bytemap) are free.
        assert_eq!(p.cost("bulk", &[]), 1 + 3 + 100 + 50_000 + 302 + 21);
        // Entry 1, `i32.const call call drop` (1 + 5 + 5 + 1) + twice the callee's entry and
        // `local.get i32.const i32.add` (1 + 3).
        assert_eq!(p.cost("calls", &[]), 13 + 2 * 4);
    }

    #[test]
    fn bulk_memory_is_charged_per_byte_before_it_runs() {
        let (mut p, _) = Probe::new(PROBE);
        // Entry 1, `local.get x3` (3), `memory.fill` (100) + the length.
        for len in [0, 1, 4096, 100_000] {
            assert_eq!(
                p.cost("fill", &[Val::I32(0), Val::I32(7), Val::I32(len)]),
                104 + len as i64,
                "fill of {len} bytes"
            );
        }
        // A fill whose length the counter cannot pay traps before writing anything.
        p.set_counter(104 + 4095);
        let f = p.instance.get_func(&mut p.store, "fill").unwrap();
        let args = [Val::I32(0), Val::I32(9), Val::I32(4096)];
        assert!(f.call(&mut p.store, &args, &mut []).is_err());
        assert!(p.counter() < 0);
        assert_eq!(
            p.heap()[0],
            7,
            "nothing was written (7 from the fills before)"
        );
    }

    #[test]
    fn system_calls_cost_their_ic_overhead() {
        let wasm = wat::parse_str(
            r#"(module
                (import "ic0" "time" (func $time (result i64)))
                (import "ic0" "call_perform" (func $perform (result i32)))
                (import "ic0" "stable64_size" (func $ssize (result i64)))
                (func (export "t") (drop (call $time)))
                (func (export "p") (drop (call $perform)))
                (func (export "s") (drop (call $ssize))))"#,
        )
        .unwrap();
        let out = instrument(&wasm).unwrap();
        let engine = super::super::compile::wasmtime_engine().unwrap();
        let module = Module::new(engine, &out.wasm).unwrap();
        let mut store = Store::new(engine, ());
        let imports = [
            wasmtime::Func::wrap(&mut store, || 0i64).into(),
            wasmtime::Func::wrap(&mut store, || 0i32).into(),
            wasmtime::Func::wrap(&mut store, || 0i64).into(),
        ];
        let instance = Instance::new(&mut store, &module, &imports).unwrap();
        let mut p = Probe { store, instance };
        p.set_counter(i64::MAX);
        // Entry 1, `call` 5, `drop` 1, plus the call's overhead from the IC's table.
        assert_eq!(p.cost("t", &[]), 7 + 500);
        assert_eq!(p.cost("p", &[]), 7 + 5_000);
        assert_eq!(
            p.cost("s", &[]),
            7,
            "wasm-native stable memory: size is free"
        );
    }

    #[test]
    fn the_counter_traps_when_it_would_go_below_zero() {
        let (mut p, _) = Probe::new(COUNTING);
        // K = 1 needs 23 instructions: 23 are enough, 22 are not.
        p.set_counter(23);
        p.call("stores", &[Val::I32(1)]);
        assert_eq!(p.counter(), 0);
        p.set_counter(22);
        let f = p.instance.get_func(&mut p.store, "stores").unwrap();
        let err = f.call(&mut p.store, &[Val::I32(1)], &mut []).unwrap_err();
        assert_eq!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::UnreachableCodeReached)
        );
        assert!(
            p.counter() < 0,
            "the engine recognises the limit by the sign"
        );
        // An infinite loop stops too.
        let (mut p, _) = Probe::new(r#"(module (func (export "spin") (loop (br 0))))"#);
        p.set_counter(1_000_000);
        let f = p.instance.get_func(&mut p.store, "spin").unwrap();
        assert!(f.call(&mut p.store, &[], &mut []).is_err());
        assert_eq!(
            p.counter(),
            -1,
            "one `br` (2) per iteration after the entry's 1"
        );
    }

    #[test]
    fn the_start_function_becomes_an_export() {
        let (mut p, out) = Probe::new(
            r#"(module (memory 1) (global $g (mut i32) (i32.const 0))
                (func $s (global.set $g (i32.const 9))) (start $s)
                (func (export "get") (result i32) (global.get $g)))"#,
        );
        assert!(out.has_start);
        assert_eq!(p.call("get", &[]), Some(0), "instantiation ran nothing");
        p.call(START_EXPORT, &[]);
        assert_eq!(p.call("get", &[]), Some(9));
    }

    // The spill copied along with a dirty page covers what any store writes past its page.
    const _: () = assert!(STORE_SPILL >= 16 - 1);

    #[test]
    fn stores_mark_the_page_of_their_effective_address() {
        let (mut p, _) = Probe::new(PROBE);
        assert!(p.dirty_pages().is_empty(), "instantiation marks nothing");
        p.call("store", &[Val::I32(4096 * 3 - 4), Val::I32(0x1234)]); // offset 4: address 3 * 4096
        assert_eq!(p.dirty_pages(), vec![3]);
        p.call("store64", &[Val::I32(4096 * 5 - 2), Val::I64(-1)]);
        assert_eq!(
            p.dirty_pages(),
            vec![4],
            "a straddling store marks its first page (the spill is copied along)"
        );
        assert_eq!(p.heap()[4096 * 3..4096 * 3 + 4], 0x1234u32.to_le_bytes());
    }

    #[test]
    fn bulk_operations_mark_their_whole_destination() {
        let (mut p, _) = Probe::new(PROBE);
        p.call("fill", &[Val::I32(4000), Val::I32(7), Val::I32(10_000)]);
        assert_eq!(p.dirty_pages(), vec![0, 1, 2, 3]);
        p.call("copy", &[Val::I32(65536 + 10), Val::I32(0), Val::I32(100)]);
        assert_eq!(p.dirty_pages(), vec![16]);
        p.call("fill", &[Val::I32(8192), Val::I32(7), Val::I32(0)]);
        assert!(p.dirty_pages().is_empty(), "an empty range marks nothing");
    }

    #[test]
    fn memory_size_and_grow_are_virtualised() {
        let (mut p, out) = Probe::new(PROBE);
        assert_eq!(out.max_heap_pages, 65536);
        assert_eq!(p.call("size", &[]), Some(2));
        assert_eq!(p.call("grow", &[Val::I32(1)]), Some(2));
        assert_eq!(p.call("size", &[]), Some(3));
        p.call(
            "fill",
            &[Val::I32(2 * 65536), Val::I32(0xEE), Val::I32(65536)],
        );
        // Roll back the canister's view to 2 pages: the real memory keeps its 3 pages.
        p.set_heap_pages(2);
        p.dirty_pages();
        assert_eq!(p.call("size", &[]), Some(2));
        assert_eq!(p.heap().len(), 3 * 65536);
        // Growing again hands out the leftover page zeroed, and marks it dirty.
        assert_eq!(p.call("grow", &[Val::I32(2)]), Some(2));
        assert_eq!(p.call("size", &[]), Some(4));
        assert!(
            p.heap()[2 * 65536..].iter().all(|b| *b == 0),
            "recycled and new pages read as zero"
        );
        let dirty = p.dirty_pages();
        assert_eq!(
            dirty.first(),
            Some(&32),
            "the recycled page was marked: {dirty:?}"
        );
    }

    #[test]
    fn grow_respects_the_declared_maximum() {
        let (mut p, out) = Probe::new(
            r#"(module (memory 1 3)
            (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
            (func (export "size") (result i32) (memory.size)))"#,
        );
        assert_eq!(out.max_heap_pages, 3);
        assert_eq!(p.call("grow", &[Val::I32(5)]), Some(-1));
        assert_eq!(p.call("size", &[]), Some(1));
        assert_eq!(p.call("grow", &[Val::I32(2)]), Some(1));
        assert_eq!(p.call("grow", &[Val::I32(1)]), Some(-1));
    }

    #[test]
    fn table_and_mutable_globals_are_exported() {
        let (mut p, out) = Probe::new(PROBE);
        assert!(out.has_table);
        assert_eq!(
            out.mutable_global_exports,
            vec!["__ic_global_0".to_string(), "__ic_global_1".to_string()]
        );
        assert!(p.instance.get_table(&mut p.store, TABLE_EXPORT).is_some());
        p.call("bump", &[]);
        let g = p
            .instance
            .get_global(&mut p.store, "__ic_global_0")
            .unwrap();
        assert_eq!(g.get(&mut p.store).i32(), Some(6));
        let heap_pages = p
            .instance
            .get_global(&mut p.store, "__ic_global_1")
            .unwrap();
        assert_eq!(
            heap_pages.get(&mut p.store).i32(),
            Some(2),
            "the heap size global is one of them"
        );
        assert!(out.function_exports.contains(&"store".to_string()));
    }

    #[test]
    fn a_module_without_memory_gets_an_empty_heap() {
        let (mut p, out) = Probe::new(r#"(module (func (export "canister_update f")))"#);
        assert_eq!(out.max_heap_pages, 0);
        assert!(p.heap().is_empty());
        assert!(!out.has_table);
    }

    #[test]
    fn unsupported_modules_are_refused_with_a_reason() {
        let cases = [
            (
                r#"(module (memory 1) (func (export "__ic_heap")))"#,
                "reserved",
            ),
            (
                r#"(module (memory 1) (global (export "__ic_global_0") i32 (i32.const 0)))"#,
                "reserved",
            ),
            (
                r#"(module (memory (import "env" "m") 1))"#,
                "import a memory",
            ),
            (r#"(module (memory 1) (memory 1))"#, "at most one memory"),
            (r#"(module (memory i64 1))"#, "invalid wasm module"),
            (
                r#"(module (memory 1 1 shared) (func (drop (i32.atomic.load (i32.const 0)))))"#,
                "invalid wasm module",
            ),
        ];
        for (src, reason) in cases {
            let wasm = wat::parse_str(src).unwrap();
            let err = instrument(&wasm).unwrap_err();
            assert!(err.0.contains(reason), "{src}: {err}");
        }
        assert!(instrument(b"\0asm\x01\0\0\0\x01")
            .unwrap_err()
            .0
            .contains("invalid wasm"));
    }
}
