//! The `ic0` system API: host functions, the per-message execution state they read and write,
//! and the IC's rules about which function may be called from which context.
//!
//! Each canister has one wasmtime `Store<Host>`; [`Host`] holds the canister's system state
//! (stable memory, certified data, global timer, controllers) and the state of the message being
//! executed ([`Exec`]). Rolling back a message is the runtime's job ([`super::runtime`]); the
//! host functions only record what they change (heap ranges written by the host, stable-memory
//! undo log) so the runtime can undo it.
//!
//! Availability follows the interface specification's table ("Overview of imports"): calling a
//! function from a context where the IC does not allow it traps with a contract violation
//! (`IC0504`), e.g. `certified_data_set` in a query or `msg_reply` after the call was answered.

use std::sync::Arc;

use candid::Principal;
use wasmtime::{Caller, Global, Linker, Memory, Val};

use super::costs;
use super::instrument::WASM_PAGE_SIZE;
use super::stable::{StableMemory, MAX_WASM_PAGES as MAX_STABLE_PAGES};

/// Largest reply or inter-canister payload (2 MiB, as on the IC).
pub const MAX_PAYLOAD: usize = 2 * 1024 * 1024;
/// Largest `certified_data`.
pub const MAX_CERTIFIED_DATA: usize = 32;
/// Cycles every canister pretends to hold (cycles are not accounted; calls must not fail for
/// lack of them).
pub const CYCLE_BALANCE: u128 = 100_000_000_000_000;

/// The context a message runs in (interface spec: I, G, U, RQ, NRQ, CQ, Ry, Rt, C, F, T, s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiContext {
    /// `(start)` function during instantiation.
    Start,
    /// `canister_init` or `canister_post_upgrade` (I).
    Init,
    /// `canister_pre_upgrade` (G).
    PreUpgrade,
    /// `canister_update` (U).
    Update,
    /// `canister_query` called as an update or by a canister (RQ).
    ReplicatedQuery,
    /// `canister_query` called as a query (NRQ).
    NonReplicatedQuery,
    /// `canister_composite_query` (CQ).
    CompositeQuery,
    /// Reply callback (Ry).
    ReplyCallback,
    /// Reject callback (Rt).
    RejectCallback,
    /// Cleanup callback (C).
    Cleanup,
    /// `canister_inspect_message` (F).
    InspectMessage,
    /// `canister_global_timer` or `canister_heartbeat` (T).
    SystemTask,
}

impl ApiContext {
    const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// How the IC names the context in contract-violation messages.
    pub fn describe(self) -> &'static str {
        match self {
            ApiContext::Start => "start",
            ApiContext::Init => "init",
            ApiContext::PreUpgrade => "pre upgrade",
            ApiContext::Update => "update",
            ApiContext::ReplicatedQuery => "replicated query",
            ApiContext::NonReplicatedQuery => "non replicated query",
            ApiContext::CompositeQuery => "composite query",
            ApiContext::ReplyCallback => "reply callback",
            ApiContext::RejectCallback => "reject callback",
            ApiContext::Cleanup => "cleanup",
            ApiContext::InspectMessage => "inspect message",
            ApiContext::SystemTask => "system task",
        }
    }

    /// Whether state changes of this context are kept (queries and inspection never are).
    pub fn is_replicated(self) -> bool {
        !matches!(
            self,
            ApiContext::NonReplicatedQuery
                | ApiContext::CompositeQuery
                | ApiContext::InspectMessage
        )
    }
}

mod ctx {
    use super::ApiContext::*;
    pub const I: u32 = Init.bit();
    pub const G: u32 = PreUpgrade.bit();
    pub const U: u32 = Update.bit();
    pub const RQ: u32 = ReplicatedQuery.bit();
    pub const NRQ: u32 = NonReplicatedQuery.bit();
    pub const CQ: u32 = CompositeQuery.bit();
    pub const RY: u32 = ReplyCallback.bit();
    pub const RT: u32 = RejectCallback.bit();
    pub const C: u32 = Cleanup.bit();
    pub const F: u32 = InspectMessage.bit();
    pub const T: u32 = SystemTask.bit();
    pub const S: u32 = Start.bit();
    /// `*` in the spec: everything but `(start)`.
    pub const STAR: u32 = I | G | U | RQ | NRQ | CQ | RY | RT | C | F | T;
    pub const ANY: u32 = STAR | S;
    pub const ARG: u32 = I | U | RQ | NRQ | CQ | RY | F;
    pub const RESPOND: u32 = U | RQ | NRQ | CQ | RY | RT;
    pub const CALL: u32 = U | CQ | RY | RT | T;
    pub const CYCLES: u32 = U | RY | RT;
    pub const CERTIFY: u32 = I | G | U | RY | RT | T;
    pub const TIMER: u32 = I | G | U | RY | RT | C | T;
}

/// A trap raised by a host function. The engine maps each kind to the IC's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTrap {
    /// `ic0.trap` (IC0503).
    CalledTrap(String),
    /// The canister broke a system API rule (IC0504).
    ContractViolation(String),
    /// A runtime fault detected by the host, e.g. stable memory out of bounds (IC0502).
    Trapped(String),
    /// A system API function this replica does not implement (IC0504).
    Unsupported(String),
}

impl std::fmt::Display for HostTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostTrap::CalledTrap(m) => write!(f, "Canister called `ic0.trap` with message: '{m}'"),
            HostTrap::ContractViolation(m) => write!(f, "Canister violated contract: {m}"),
            HostTrap::Trapped(m) => write!(f, "Canister trapped: {m}"),
            HostTrap::Unsupported(m) => write!(f, "Canister violated contract: {m}"),
        }
    }
}

impl std::error::Error for HostTrap {}

/// A system call's charge took the instruction counter below zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfInstructions;

impl std::fmt::Display for OutOfInstructions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("instruction limit exceeded")
    }
}

impl std::error::Error for OutOfInstructions {}

/// Instructions the message may still execute (the counter global; negative once the limit
/// was exceeded). A canister without counter (never the case after instantiation) has none.
pub fn instructions_left(c: &mut Caller<'_, Host>) -> i64 {
    match c.data().instructions {
        Some(g) => g.get(&mut *c).i64().unwrap_or(0),
        None => 0,
    }
}

type HostResult<T> = wasmtime::Result<T>;

fn violation<T>(msg: impl Into<String>) -> HostResult<T> {
    Err(wasmtime::Error::new(HostTrap::ContractViolation(
        msg.into(),
    )))
}

fn trapped<T>(msg: impl Into<String>) -> HostResult<T> {
    Err(wasmtime::Error::new(HostTrap::Trapped(msg.into())))
}

/// The answer a message gave to its call context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `msg_reply` with the assembled data.
    Reply(Vec<u8>),
    /// `msg_reject` with its message.
    Reject(String),
}

/// A (reply or reject or cleanup) callback: table index and environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closure {
    /// Function table index.
    pub fun: u32,
    /// Argument passed to the function.
    pub env: u32,
}

/// A call made with `call_new` .. `call_perform`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingCall {
    /// Callee (canister or management canister).
    pub callee: Principal,
    /// Method name.
    pub method: String,
    /// Argument bytes.
    pub arg: Vec<u8>,
    /// Reply callback.
    pub reply: Closure,
    /// Reject callback.
    pub reject: Closure,
    /// Cleanup callback.
    pub cleanup: Option<Closure>,
    /// Best-effort timeout, if requested (accepted and ignored: responses always arrive).
    pub timeout_seconds: Option<u32>,
}

/// Subnet-wide facts a canister can ask for.
#[derive(Clone, Debug, Default)]
pub struct SubnetInfo {
    /// `ic0.subnet_self`.
    pub subnet_id: Option<Principal>,
    /// `ic0.root_key` (DER).
    pub root_key: Vec<u8>,
}

/// State of the message being executed.
#[derive(Debug)]
pub struct Exec {
    /// Which context (decides what the canister may call).
    pub context: ApiContext,
    /// `msg_arg_data` (the call argument, or the reply in a reply callback).
    pub arg: Vec<u8>,
    /// `msg_caller`.
    pub caller: Principal,
    /// `msg_method_name` (inspect_message only).
    pub method_name: String,
    /// `msg_reject_code` (0 outside reject callbacks).
    pub reject_code: u32,
    /// `msg_reject_msg`.
    pub reject_message: String,
    /// Whether the call context still waits for an answer.
    pub can_respond: bool,
    reply_buf: Vec<u8>,
    /// The answer given by this message, if any.
    pub response: Option<Response>,
    /// Certificate offered to non-replicated queries.
    pub data_certificate: Option<Vec<u8>>,
    pending_call: Option<OutgoingCall>,
    /// Calls performed by this message (dropped if it traps).
    pub outgoing: Vec<OutgoingCall>,
    /// `ic0.time`, constant within the message.
    pub time_ns: u64,
    /// Instruction limit of the message (the instruction counter counts down from it).
    pub instruction_limit: u64,
    /// Instructions of earlier messages of the same call context (`performance_counter(1)`).
    pub call_context_instructions: u64,
    /// `accept_message` was called (inspect_message).
    pub accepted: bool,
}

impl Exec {
    /// A fresh execution state for `context`.
    pub fn new(
        context: ApiContext,
        caller: Principal,
        time_ns: u64,
        instruction_limit: u64,
    ) -> Self {
        Exec {
            context,
            arg: Vec::new(),
            caller,
            method_name: String::new(),
            reject_code: 0,
            reject_message: String::new(),
            can_respond: false,
            reply_buf: Vec::new(),
            response: None,
            data_certificate: None,
            pending_call: None,
            outgoing: Vec::new(),
            time_ns,
            instruction_limit,
            call_context_instructions: 0,
            accepted: false,
        }
    }
}

/// Store data of a canister instance.
pub struct Host {
    /// `canister_self`.
    pub canister_id: Principal,
    /// Used by `is_controller`.
    pub controllers: Vec<Principal>,
    /// Subnet facts.
    pub subnet: Arc<SubnetInfo>,
    /// Stable memory.
    pub stable: StableMemory,
    /// Certified data (at most 32 bytes).
    pub certified_data: Vec<u8>,
    /// Global timer deadline (0: disarmed).
    pub global_timer: u64,
    /// `canister_version`.
    pub version: u64,
    /// Heap memory (set after instantiation).
    pub heap: Option<Memory>,
    /// Global holding the canister-visible heap size in wasm pages.
    pub heap_pages: Option<Global>,
    /// The instruction counter global (instructions the message may still execute).
    pub instructions: Option<Global>,
    /// Heap ranges written by host functions during the message (merged with the bytemap).
    pub host_dirty: Vec<(u32, u32)>,
    /// `debug_print` output not yet collected by the engine.
    pub logs: Vec<String>,
    /// The message being executed.
    pub exec: Exec,
}

impl Host {
    /// Host state of a canister that has not executed anything yet.
    pub fn new(
        canister_id: Principal,
        controllers: Vec<Principal>,
        subnet: Arc<SubnetInfo>,
        stable: StableMemory,
    ) -> Self {
        Host {
            canister_id,
            controllers,
            subnet,
            stable,
            certified_data: Vec::new(),
            global_timer: 0,
            version: 0,
            heap: None,
            heap_pages: None,
            instructions: None,
            host_dirty: Vec::new(),
            logs: Vec::new(),
            exec: Exec::new(ApiContext::Start, Principal::management_canister(), 0, 0),
        }
    }
}

/// Maximum `debug_print` lines kept per canister between two collections.
const MAX_PENDING_LOGS: usize = 10_000;

fn check(c: &Caller<'_, Host>, allowed: u32, name: &str) -> HostResult<()> {
    let context = c.data().exec.context;
    if allowed & context.bit() == 0 {
        return violation(format!(
            "\"ic0_{name}\" cannot be executed in {} mode",
            context.describe()
        ));
    }
    Ok(())
}

/// Charges the run-time part of a system call's cost (bytes copied or transmitted, stable
/// pages dirtied; see [`super::costs`]: the fixed overhead is charged by the instrumentation
/// with the calling segment) to the counter (below zero: the instruction limit trap; the
/// counter stays negative so the engine reports the limit).
fn charge(c: &mut Caller<'_, Host>, cost: u64) -> HostResult<()> {
    let Some(counter) = c.data().instructions else {
        return Err(OutOfInstructions.into());
    };
    let left = instructions_left(c).saturating_sub(i64::try_from(cost).unwrap_or(i64::MAX));
    counter.set(&mut *c, Val::I64(left))?;
    if left < 0 {
        return Err(OutOfInstructions.into());
    }
    Ok(())
}

/// Heap memory and the canister-visible heap size in bytes.
fn heap(c: &mut Caller<'_, Host>) -> HostResult<(Memory, usize)> {
    let (Some(mem), Some(pages)) = (c.data().heap, c.data().heap_pages) else {
        return trapped("the canister has no heap yet");
    };
    let pages = match pages.get(&mut *c) {
        Val::I32(p) => p as u32 as u64,
        _ => return trapped("heap size global has the wrong type"),
    };
    Ok((mem, (pages * WASM_PAGE_SIZE) as usize))
}

fn range(ptr: u64, len: u64, limit: usize) -> HostResult<std::ops::Range<usize>> {
    match ptr.checked_add(len) {
        Some(end) if end <= limit as u64 => Ok(ptr as usize..end as usize),
        _ => trapped(format!(
            "heap out of bounds: [{ptr}, {ptr}+{len}) outside a heap of {limit} bytes"
        )),
    }
}

fn read_heap(c: &mut Caller<'_, Host>, src: u64, len: u64) -> HostResult<Vec<u8>> {
    let (mem, limit) = heap(c)?;
    let r = range(src, len, limit)?;
    Ok(mem.data(&*c)[r].to_vec())
}

fn write_heap(c: &mut Caller<'_, Host>, dst: u64, bytes: &[u8]) -> HostResult<()> {
    let (mem, limit) = heap(c)?;
    let r = range(dst, bytes.len() as u64, limit)?;
    let start = r.start as u32;
    mem.data_mut(&mut *c)[r].copy_from_slice(bytes);
    if !bytes.is_empty() {
        c.data_mut().host_dirty.push((start, bytes.len() as u32));
    }
    Ok(())
}

/// `*_copy(dst, offset, size)`: copies `blob[offset..offset+size]` to the heap.
fn copy_out(
    c: &mut Caller<'_, Host>,
    dst: u32,
    offset: u32,
    size: u32,
    blob: &[u8],
    what: &str,
) -> HostResult<()> {
    let (o, s) = (offset as usize, size as usize);
    let Some(part) = o.checked_add(s).and_then(|end| blob.get(o..end)) else {
        return violation(format!(
            "{what}: offset {o} + size {s} exceeds the {} available bytes",
            blob.len()
        ));
    };
    let part = part.to_vec();
    charge(c, costs::PER_BYTE.saturating_mul(part.len() as u64))?;
    write_heap(c, dst as u64, &part)
}

fn write_u128(c: &mut Caller<'_, Host>, dst: u32, value: u128) -> HostResult<()> {
    write_heap(c, dst as u64, &value.to_le_bytes())
}

fn principal_from(bytes: &[u8], what: &str) -> HostResult<Principal> {
    Principal::try_from_slice(bytes)
        .or_else(|e| violation(format!("{what}: invalid principal: {e}")))
}

fn respond(
    c: &mut Caller<'_, Host>,
    name: &str,
    response: impl FnOnce(&mut Exec) -> Response,
) -> HostResult<()> {
    check(c, ctx::RESPOND, name)?;
    let exec = &mut c.data_mut().exec;
    if !exec.can_respond {
        return violation(format!(
            "\"ic0_{name}\": the call was already answered or does not need an answer"
        ));
    }
    let r = response(exec);
    exec.response = Some(r);
    exec.can_respond = false;
    Ok(())
}

fn stable_read_into(c: &mut Caller<'_, Host>, dst: u64, offset: u64, size: u64) -> HostResult<()> {
    charge(c, costs::PER_BYTE.saturating_mul(size))?;
    let (mem, limit) = heap(c)?;
    let r = range(dst, size, limit)?;
    let start = r.start as u32;
    let (data, host) = mem.data_and_store_mut(&mut *c);
    if host.stable.read(offset, &mut data[r]).is_err() {
        return trapped("stable memory out of bounds");
    }
    if size > 0 {
        host.host_dirty.push((start, size as u32));
    }
    Ok(())
}

fn stable_write_from(c: &mut Caller<'_, Host>, offset: u64, src: u64, size: u64) -> HostResult<()> {
    let dirtied = c.data().stable.pages_first_written_by(offset, size);
    charge(
        c,
        costs::PER_BYTE
            .saturating_mul(size)
            .saturating_add(costs::DIRTY_STABLE_PAGE.saturating_mul(dirtied)),
    )?;
    let (mem, limit) = heap(c)?;
    let r = range(src, size, limit)?;
    let (data, host) = mem.data_and_store_mut(&mut *c);
    if host.stable.write(offset, &data[r]).is_err() {
        return trapped("stable memory out of bounds");
    }
    Ok(())
}

/// Builds the linker with every implemented `ic0` function. Imports it does not define are
/// added per module by the runtime as functions that trap with a clear message.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Host>> {
    let mut l = Linker::<Host>::new(engine);
    define_message_api(&mut l)?;
    define_canister_api(&mut l)?;
    define_call_api(&mut l)?;
    define_stable_api(&mut l)?;
    define_misc_api(&mut l)?;
    Ok(l)
}

fn define_message_api(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "ic0",
        "msg_arg_data_size",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::ARG, "msg_arg_data_size")?;
            Ok(c.data().exec.arg.len() as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_arg_data_copy",
        |mut c: Caller<'_, Host>, dst: u32, off: u32, size: u32| {
            check(&c, ctx::ARG, "msg_arg_data_copy")?;
            let arg = std::mem::take(&mut c.data_mut().exec.arg);
            let r = copy_out(&mut c, dst, off, size, &arg, "msg_arg_data_copy");
            c.data_mut().exec.arg = arg;
            r
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_caller_size",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::STAR, "msg_caller_size")?;
            Ok(c.data().exec.caller.as_slice().len() as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_caller_copy",
        |mut c: Caller<'_, Host>, dst: u32, off: u32, size: u32| {
            check(&c, ctx::STAR, "msg_caller_copy")?;
            let caller = c.data().exec.caller;
            copy_out(&mut c, dst, off, size, caller.as_slice(), "msg_caller_copy")
        },
    )?;
    // Caller info (signed sender information) is never attached by this replica: size 0.
    for name in ["msg_caller_info_data", "msg_caller_info_signer"] {
        l.func_wrap(
            "ic0",
            &format!("{name}_size"),
            |c: Caller<'_, Host>| -> HostResult<u32> {
                check(&c, ctx::STAR, "msg_caller_info_size")?;
                Ok(0)
            },
        )?;
        l.func_wrap(
            "ic0",
            &format!("{name}_copy"),
            |mut c: Caller<'_, Host>, dst: u32, off: u32, size: u32| {
                check(&c, ctx::STAR, "msg_caller_info_copy")?;
                copy_out(&mut c, dst, off, size, &[], "msg_caller_info_copy")
            },
        )?;
    }
    l.func_wrap(
        "ic0",
        "msg_reject_code",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::RY | ctx::RT, "msg_reject_code")?;
            Ok(c.data().exec.reject_code)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_reject_msg_size",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::RT, "msg_reject_msg_size")?;
            Ok(c.data().exec.reject_message.len() as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_reject_msg_copy",
        |mut c: Caller<'_, Host>, dst: u32, off: u32, size: u32| {
            check(&c, ctx::RT, "msg_reject_msg_copy")?;
            let m = c.data().exec.reject_message.clone();
            copy_out(&mut c, dst, off, size, m.as_bytes(), "msg_reject_msg_copy")
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_deadline",
        |c: Caller<'_, Host>| -> HostResult<u64> {
            check(&c, ctx::STAR, "msg_deadline")?;
            Ok(0) // every call is a guaranteed-response call here
        },
    )?;
    l.func_wrap("ic0", "msg_reply_data_append", |mut c: Caller<'_, Host>, src: u32, size: u32| {
        check(&c, ctx::RESPOND, "msg_reply_data_append")?;
        if !c.data().exec.can_respond {
            return violation("\"ic0_msg_reply_data_append\": the call was already answered or does not need an answer");
        }
        if c.data().exec.reply_buf.len() + size as usize > MAX_PAYLOAD {
            return violation(format!("msg_reply_data_append: reply exceeds the maximum of {MAX_PAYLOAD} bytes"));
        }
        charge(&mut c, costs::PER_TRANSMITTED_BYTE.saturating_mul(size as u64))?;
        let data = read_heap(&mut c, src as u64, size as u64)?;
        c.data_mut().exec.reply_buf.extend_from_slice(&data);
        Ok(())
    })?;
    l.func_wrap("ic0", "msg_reply", |mut c: Caller<'_, Host>| {
        respond(&mut c, "msg_reply", |e| {
            Response::Reply(std::mem::take(&mut e.reply_buf))
        })
    })?;
    l.func_wrap(
        "ic0",
        "msg_reject",
        |mut c: Caller<'_, Host>, src: u32, size: u32| {
            check(&c, ctx::RESPOND, "msg_reject")?;
            charge(
                &mut c,
                costs::PER_TRANSMITTED_BYTE.saturating_mul(size as u64),
            )?;
            let data = read_heap(&mut c, src as u64, size as u64)?;
            let Ok(message) = String::from_utf8(data) else {
                return violation("msg_reject: the message is not valid UTF-8");
            };
            respond(&mut c, "msg_reject", |e| {
                e.reply_buf.clear();
                Response::Reject(message)
            })
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_method_name_size",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::F, "msg_method_name_size")?;
            Ok(c.data().exec.method_name.len() as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_method_name_copy",
        |mut c: Caller<'_, Host>, dst: u32, off: u32, size: u32| {
            check(&c, ctx::F, "msg_method_name_copy")?;
            let m = c.data().exec.method_name.clone();
            copy_out(&mut c, dst, off, size, m.as_bytes(), "msg_method_name_copy")
        },
    )?;
    l.func_wrap("ic0", "accept_message", |mut c: Caller<'_, Host>| {
        check(&c, ctx::F, "accept_message")?;
        let exec = &mut c.data_mut().exec;
        if exec.accepted {
            return violation("accept_message called twice");
        }
        exec.accepted = true;
        Ok(())
    })?;
    // Cycles are not accounted: nothing is attached to calls, nothing can be accepted.
    l.func_wrap(
        "ic0",
        "msg_cycles_available128",
        |mut c: Caller<'_, Host>, dst: u32| {
            check(&c, ctx::CYCLES, "msg_cycles_available128")?;
            write_u128(&mut c, dst, 0)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_cycles_refunded128",
        |mut c: Caller<'_, Host>, dst: u32| {
            check(&c, ctx::RY | ctx::RT, "msg_cycles_refunded128")?;
            write_u128(&mut c, dst, 0)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_cycles_accept128",
        |mut c: Caller<'_, Host>, _hi: u64, _lo: u64, dst: u32| {
            check(&c, ctx::CYCLES, "msg_cycles_accept128")?;
            write_u128(&mut c, dst, 0)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_cycles_available",
        |c: Caller<'_, Host>| -> HostResult<u64> {
            check(&c, ctx::CYCLES, "msg_cycles_available")?;
            Ok(0)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_cycles_refunded",
        |c: Caller<'_, Host>| -> HostResult<u64> {
            check(&c, ctx::RY | ctx::RT, "msg_cycles_refunded")?;
            Ok(0)
        },
    )?;
    l.func_wrap(
        "ic0",
        "msg_cycles_accept",
        |c: Caller<'_, Host>, _max: u64| -> HostResult<u64> {
            check(&c, ctx::CYCLES, "msg_cycles_accept")?;
            Ok(0)
        },
    )?;
    Ok(())
}

fn define_canister_api(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "ic0",
        "canister_self_size",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::STAR, "canister_self_size")?;
            Ok(c.data().canister_id.as_slice().len() as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "canister_self_copy",
        |mut c: Caller<'_, Host>, dst: u32, off: u32, size: u32| {
            check(&c, ctx::STAR, "canister_self_copy")?;
            let id = c.data().canister_id;
            copy_out(&mut c, dst, off, size, id.as_slice(), "canister_self_copy")
        },
    )?;
    l.func_wrap(
        "ic0",
        "canister_cycle_balance",
        |c: Caller<'_, Host>| -> HostResult<u64> {
            check(&c, ctx::STAR, "canister_cycle_balance")?;
            Ok(CYCLE_BALANCE as u64)
        },
    )?;
    for name in [
        "canister_cycle_balance128",
        "canister_liquid_cycle_balance128",
    ] {
        l.func_wrap("ic0", name, |mut c: Caller<'_, Host>, dst: u32| {
            check(&c, ctx::STAR, "canister_cycle_balance128")?;
            write_u128(&mut c, dst, CYCLE_BALANCE)
        })?;
    }
    l.func_wrap(
        "ic0",
        "cycles_burn128",
        |mut c: Caller<'_, Host>, hi: u64, lo: u64, dst: u32| {
            check(
                &c,
                ctx::I | ctx::G | ctx::U | ctx::RY | ctx::RT | ctx::C | ctx::T,
                "cycles_burn128",
            )?;
            let amount = ((hi as u128) << 64) | lo as u128;
            write_u128(&mut c, dst, amount.min(CYCLE_BALANCE))
        },
    )?;
    l.func_wrap(
        "ic0",
        "canister_status",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::STAR, "canister_status")?;
            Ok(1) // running
        },
    )?;
    l.func_wrap(
        "ic0",
        "canister_version",
        |c: Caller<'_, Host>| -> HostResult<u64> {
            check(&c, ctx::STAR, "canister_version")?;
            Ok(c.data().version)
        },
    )?;
    l.func_wrap(
        "ic0",
        "subnet_self_size",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::STAR, "subnet_self_size")?;
            Ok(c.data()
                .subnet
                .subnet_id
                .map(|s| s.as_slice().len() as u32)
                .unwrap_or(0))
        },
    )?;
    l.func_wrap(
        "ic0",
        "subnet_self_copy",
        |mut c: Caller<'_, Host>, dst: u32, off: u32, size: u32| {
            check(&c, ctx::STAR, "subnet_self_copy")?;
            let id = c
                .data()
                .subnet
                .subnet_id
                .map(|s| s.as_slice().to_vec())
                .unwrap_or_default();
            copy_out(&mut c, dst, off, size, &id, "subnet_self_copy")
        },
    )?;
    l.func_wrap(
        "ic0",
        "subnet_self_node_count",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::STAR, "subnet_self_node_count")?;
            Ok(1)
        },
    )?;
    l.func_wrap(
        "ic0",
        "root_key_size",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::STAR, "root_key_size")?;
            Ok(c.data().subnet.root_key.len() as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "root_key_copy",
        |mut c: Caller<'_, Host>, dst: u32, off: u32, size: u32| {
            check(&c, ctx::STAR, "root_key_copy")?;
            let subnet = c.data().subnet.clone();
            copy_out(&mut c, dst, off, size, &subnet.root_key, "root_key_copy")
        },
    )?;
    l.func_wrap(
        "ic0",
        "is_controller",
        |mut c: Caller<'_, Host>, src: u32, size: u32| -> HostResult<u32> {
            check(&c, ctx::ANY, "is_controller")?;
            let bytes = read_heap(&mut c, src as u64, size as u64)?;
            let p = principal_from(&bytes, "is_controller")?;
            Ok(c.data().controllers.contains(&p) as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "certified_data_set",
        |mut c: Caller<'_, Host>, src: u32, size: u32| {
            check(&c, ctx::CERTIFY, "certified_data_set")?;
            if size as usize > MAX_CERTIFIED_DATA {
                return violation(format!(
                    "certified_data_set: {size} bytes given, at most {MAX_CERTIFIED_DATA} allowed"
                ));
            }
            charge(&mut c, costs::PER_BYTE.saturating_mul(size as u64))?;
            let data = read_heap(&mut c, src as u64, size as u64)?;
            c.data_mut().certified_data = data;
            Ok(())
        },
    )?;
    l.func_wrap(
        "ic0",
        "data_certificate_present",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::STAR, "data_certificate_present")?;
            Ok(c.data().exec.data_certificate.is_some() as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "data_certificate_size",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::NRQ | ctx::CQ, "data_certificate_size")?;
            match &c.data().exec.data_certificate {
                Some(cert) => Ok(cert.len() as u32),
                None => violation("data_certificate_size: no data certificate is available"),
            }
        },
    )?;
    l.func_wrap(
        "ic0",
        "data_certificate_copy",
        |mut c: Caller<'_, Host>, dst: u32, off: u32, size: u32| {
            check(&c, ctx::NRQ | ctx::CQ, "data_certificate_copy")?;
            let Some(cert) = c.data().exec.data_certificate.clone() else {
                return violation("data_certificate_copy: no data certificate is available");
            };
            copy_out(&mut c, dst, off, size, &cert, "data_certificate_copy")
        },
    )?;
    Ok(())
}

fn define_call_api(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "ic0",
        "call_new",
        |mut c: Caller<'_, Host>,
         callee_src: u32,
         callee_size: u32,
         name_src: u32,
         name_size: u32,
         reply_fun: u32,
         reply_env: u32,
         reject_fun: u32,
         reject_env: u32| {
            check(&c, ctx::CALL, "call_new")?;
            if c.data().exec.context == ApiContext::CompositeQuery {
                return Err(wasmtime::Error::new(HostTrap::Unsupported(
                    "calls from composite queries are not supported by ic-ws-replica".into(),
                )));
            }
            let callee = read_heap(&mut c, callee_src as u64, callee_size as u64)?;
            let callee = principal_from(&callee, "call_new")?;
            let name = read_heap(&mut c, name_src as u64, name_size as u64)?;
            let Ok(method) = String::from_utf8(name) else {
                return violation("call_new: the method name is not valid UTF-8");
            };
            // A call under construction that was never performed is discarded (spec).
            c.data_mut().exec.pending_call = Some(OutgoingCall {
                callee,
                method,
                arg: Vec::new(),
                reply: Closure {
                    fun: reply_fun,
                    env: reply_env,
                },
                reject: Closure {
                    fun: reject_fun,
                    env: reject_env,
                },
                cleanup: None,
                timeout_seconds: None,
            });
            Ok(())
        },
    )?;
    l.func_wrap(
        "ic0",
        "call_on_cleanup",
        |mut c: Caller<'_, Host>, fun: u32, env: u32| {
            check(&c, ctx::CALL, "call_on_cleanup")?;
            let Some(call) = c.data_mut().exec.pending_call.as_mut() else {
                return violation("call_on_cleanup: no call is being constructed");
            };
            if call.cleanup.is_some() {
                return violation("call_on_cleanup: called twice for the same call");
            }
            call.cleanup = Some(Closure { fun, env });
            Ok(())
        },
    )?;
    l.func_wrap(
        "ic0",
        "call_with_best_effort_response",
        |mut c: Caller<'_, Host>, timeout: u32| {
            check(&c, ctx::CALL, "call_with_best_effort_response")?;
            let Some(call) = c.data_mut().exec.pending_call.as_mut() else {
                return violation("call_with_best_effort_response: no call is being constructed");
            };
            if call.timeout_seconds.is_some() {
                return violation("call_with_best_effort_response: called twice for the same call");
            }
            call.timeout_seconds = Some(timeout.max(1));
            Ok(())
        },
    )?;
    l.func_wrap(
        "ic0",
        "call_data_append",
        |mut c: Caller<'_, Host>, src: u32, size: u32| {
            check(&c, ctx::CALL, "call_data_append")?;
            charge(
                &mut c,
                costs::PER_TRANSMITTED_BYTE.saturating_mul(size as u64),
            )?;
            let data = read_heap(&mut c, src as u64, size as u64)?;
            let Some(call) = c.data_mut().exec.pending_call.as_mut() else {
                return violation("call_data_append: no call is being constructed");
            };
            if call.arg.len() + data.len() > MAX_PAYLOAD {
                return violation(format!(
                    "call_data_append: argument exceeds the maximum of {MAX_PAYLOAD} bytes"
                ));
            }
            call.arg.extend_from_slice(&data);
            Ok(())
        },
    )?;
    l.func_wrap(
        "ic0",
        "call_cycles_add128",
        |c: Caller<'_, Host>, _hi: u64, _lo: u64| {
            check(
                &c,
                ctx::U | ctx::RY | ctx::RT | ctx::T,
                "call_cycles_add128",
            )?;
            if c.data().exec.pending_call.is_none() {
                return violation("call_cycles_add128: no call is being constructed");
            }
            Ok(()) // cycles are not accounted
        },
    )?;
    l.func_wrap(
        "ic0",
        "call_cycles_add",
        |c: Caller<'_, Host>, _amount: u64| {
            check(&c, ctx::U | ctx::RY | ctx::RT | ctx::T, "call_cycles_add")?;
            if c.data().exec.pending_call.is_none() {
                return violation("call_cycles_add: no call is being constructed");
            }
            Ok(())
        },
    )?;
    l.func_wrap(
        "ic0",
        "call_perform",
        |mut c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::CALL, "call_perform")?;
            let exec = &mut c.data_mut().exec;
            let Some(call) = exec.pending_call.take() else {
                return violation("call_perform: no call is being constructed");
            };
            exec.outgoing.push(call);
            Ok(0)
        },
    )?;
    Ok(())
}

fn define_stable_api(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "ic0",
        "stable64_size",
        |c: Caller<'_, Host>| -> HostResult<u64> {
            check(&c, ctx::ANY, "stable64_size")?;
            Ok(c.data().stable.size_pages())
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable64_grow",
        |mut c: Caller<'_, Host>, pages: u64| -> HostResult<u64> {
            check(&c, ctx::ANY, "stable64_grow")?;
            Ok(c.data_mut()
                .stable
                .grow(pages, MAX_STABLE_PAGES)
                .unwrap_or(u64::MAX))
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable64_write",
        |mut c: Caller<'_, Host>, offset: u64, src: u64, size: u64| {
            check(&c, ctx::ANY, "stable64_write")?;
            stable_write_from(&mut c, offset, src, size)
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable64_read",
        |mut c: Caller<'_, Host>, dst: u64, offset: u64, size: u64| {
            check(&c, ctx::ANY, "stable64_read")?;
            stable_read_into(&mut c, dst, offset, size)
        },
    )?;
    // Deprecated 32-bit API: limited to 4 GiB of stable memory.
    const MAX_32BIT_PAGES: u64 = 65536;
    l.func_wrap(
        "ic0",
        "stable_size",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::ANY, "stable_size")?;
            let pages = c.data().stable.size_pages();
            if pages > MAX_32BIT_PAGES {
                return trapped(
                    "stable_size: stable memory is larger than the 32-bit API can address",
                );
            }
            Ok(pages as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable_grow",
        |mut c: Caller<'_, Host>, pages: u32| -> HostResult<i32> {
            check(&c, ctx::ANY, "stable_grow")?;
            let stable = &mut c.data_mut().stable;
            if stable.size_pages() > MAX_32BIT_PAGES {
                return trapped(
                    "stable_grow: stable memory is larger than the 32-bit API can address",
                );
            }
            Ok(stable
                .grow(pages as u64, MAX_32BIT_PAGES)
                .map(|old| old as i32)
                .unwrap_or(-1))
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable_write",
        |mut c: Caller<'_, Host>, offset: u32, src: u32, size: u32| {
            check(&c, ctx::ANY, "stable_write")?;
            stable_write_from(&mut c, offset as u64, src as u64, size as u64)
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable_read",
        |mut c: Caller<'_, Host>, dst: u32, offset: u32, size: u32| {
            check(&c, ctx::ANY, "stable_read")?;
            stable_read_into(&mut c, dst as u64, offset as u64, size as u64)
        },
    )?;
    Ok(())
}

fn define_misc_api(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap("ic0", "time", |c: Caller<'_, Host>| -> HostResult<u64> {
        check(&c, ctx::STAR, "time")?;
        Ok(c.data().exec.time_ns)
    })?;
    l.func_wrap(
        "ic0",
        "global_timer_set",
        |mut c: Caller<'_, Host>, ts: u64| -> HostResult<u64> {
            check(&c, ctx::TIMER, "global_timer_set")?;
            Ok(std::mem::replace(&mut c.data_mut().global_timer, ts))
        },
    )?;
    l.func_wrap(
        "ic0",
        "performance_counter",
        |mut c: Caller<'_, Host>, kind: u32| -> HostResult<u64> {
            check(&c, ctx::ANY, "performance_counter")?;
            let left = instructions_left(&mut c).max(0) as u64;
            let exec = &c.data().exec;
            let used = exec.instruction_limit.saturating_sub(left);
            match kind {
                0 => Ok(used),
                1 => Ok(exec.call_context_instructions + used),
                _ => violation(format!("performance_counter: unknown counter type {kind}")),
            }
        },
    )?;
    l.func_wrap(
        "ic0",
        "in_replicated_execution",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::ANY, "in_replicated_execution")?;
            Ok(c.data().exec.context.is_replicated() as u32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "cost_call",
        |mut c: Caller<'_, Host>, name_len: u64, payload_len: u64, dst: u32| {
            check(&c, ctx::ANY, "cost_call")?;
            // 13-node subnet prices: 260k base (transmission + callback) + 1k per byte.
            let cost = 260_000u128 + 1_000u128 * (name_len as u128 + payload_len as u128);
            write_u128(&mut c, dst, cost)
        },
    )?;
    l.func_wrap(
        "ic0",
        "cost_create_canister",
        |mut c: Caller<'_, Host>, dst: u32| {
            check(&c, ctx::ANY, "cost_create_canister")?;
            write_u128(&mut c, dst, 500_000_000_000)
        },
    )?;
    l.func_wrap(
        "ic0",
        "env_var_count",
        |c: Caller<'_, Host>| -> HostResult<u32> {
            check(&c, ctx::ANY, "env_var_count")?;
            Ok(0) // this replica sets no canister environment variables
        },
    )?;
    l.func_wrap(
        "ic0",
        "env_var_name_exists",
        |c: Caller<'_, Host>, _src: u32, _size: u32| -> HostResult<u32> {
            check(&c, ctx::ANY, "env_var_name_exists")?;
            Ok(0)
        },
    )?;
    // With no variables, every index is out of range and every name unknown: these trap, as
    // they do on the IC for a bad index or name.
    l.func_wrap(
        "ic0",
        "env_var_name_size",
        |c: Caller<'_, Host>, index: u32| -> HostResult<u32> {
            check(&c, ctx::ANY, "env_var_name_size")?;
            violation(format!(
                "env_var_name_size: index {index} out of range (0 environment variables)"
            ))
        },
    )?;
    l.func_wrap(
        "ic0",
        "env_var_name_copy",
        |c: Caller<'_, Host>, index: u32, _dst: u32, _off: u32, _size: u32| {
            check(&c, ctx::ANY, "env_var_name_copy")?;
            violation::<()>(format!(
                "env_var_name_copy: index {index} out of range (0 environment variables)"
            ))
        },
    )?;
    l.func_wrap(
        "ic0",
        "env_var_value_size",
        |mut c: Caller<'_, Host>, src: u32, size: u32| -> HostResult<u32> {
            check(&c, ctx::ANY, "env_var_value_size")?;
            let name = read_heap(&mut c, src as u64, size as u64)?;
            violation(format!(
                "env_var_value_size: no environment variable `{}`",
                String::from_utf8_lossy(&name)
            ))
        },
    )?;
    l.func_wrap(
        "ic0",
        "env_var_value_copy",
        |mut c: Caller<'_, Host>, src: u32, size: u32, _dst: u32, _off: u32, _len: u32| {
            check(&c, ctx::ANY, "env_var_value_copy")?;
            let name = read_heap(&mut c, src as u64, size as u64)?;
            violation::<()>(format!(
                "env_var_value_copy: no environment variable `{}`",
                String::from_utf8_lossy(&name)
            ))
        },
    )?;
    l.func_wrap(
        "ic0",
        "debug_print",
        |mut c: Caller<'_, Host>, src: u32, size: u32| {
            check(&c, ctx::ANY, "debug_print")?;
            charge(&mut c, costs::PER_BYTE.saturating_mul(size as u64))?;
            let bytes = read_heap(&mut c, src as u64, size as u64)?;
            let line = String::from_utf8_lossy(&bytes).into_owned();
            let logs = &mut c.data_mut().logs;
            if logs.len() >= MAX_PENDING_LOGS {
                logs.remove(0);
            }
            logs.push(line);
            Ok(())
        },
    )?;
    l.func_wrap(
        "ic0",
        "trap",
        |mut c: Caller<'_, Host>, src: u32, size: u32| -> HostResult<()> {
            check(&c, ctx::ANY, "trap")?;
            // A bad pointer still traps, with the heap error instead of the message.
            let bytes = read_heap(&mut c, src as u64, size as u64)?;
            Err(wasmtime::Error::new(HostTrap::CalledTrap(
                String::from_utf8_lossy(&bytes).into_owned(),
            )))
        },
    )?;
    Ok(())
}

/// Definition for an import this replica does not implement: traps with a message naming it.
pub fn unsupported_import_trap(module: &str, name: &str) -> HostTrap {
    HostTrap::Unsupported(format!(
        "\"{module}.{name}\" is not supported by ic-ws-replica"
    ))
}
