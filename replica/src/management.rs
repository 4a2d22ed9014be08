//! The management canister (`aaaaa-aa`) as ingress callers (dfx, icp-cli, ic-agent's
//! `ManagementCanister`, PocketIC users) reach it over HTTP.
//!
//! Methods (candid types of the interface specification, from `ic-management-canister-types`):
//! `provisional_create_canister_with_cycles` and `create_canister` (the caller becomes the
//! controller unless `settings.controllers` says otherwise; anonymous callers allowed, as on a
//! local network), `install_code` (install / reinstall / upgrade, see `Engine::install`),
//! `canister_status`, `stop_canister`, `start_canister`, `delete_canister`, `update_settings`
//! (controllers; the other settings are accepted and have no effect: no cycles or memory
//! accounting here), and the wasm chunk store that icp-cli installs through even for small
//! modules (`upload_chunk`, `stored_chunks`, `clear_chunk_store`, `install_chunked_code`;
//! chunks of at most 1 MiB, at most [`MAX_CHUNKS`] per canister, as on the IC). Everything else is rejected with IC0407 naming the method; an argument that
//! does not decode is IC0408; a caller that is not a controller IC0512.
//!
//! Effective canister id (interface specification, "Effective canister id"): any id for the
//! create methods, else the `canister_id` of the argument; the HTTP layer checks it with
//! [`effective_canister_id`] before the call is accepted.

use candid::{CandidType, Nat, Principal};
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInstallMode, CanisterSettings, CanisterStatusType, ChunkHash,
    CreateCanisterArgs, EnvironmentVariable, InstallChunkedCodeArgs, InstallCodeArgs,
    LogVisibility, MemoryMetrics, ProvisionalCreateCanisterWithCyclesArgs, QueryStats,
    SnapshotVisibility, UpdateSettingsArgs, UploadChunkArgs, WasmMemoryPersistence,
};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::engine::{InstallMode, Reject, RejectCode};
use crate::replica::{canister_not_found, Core};

/// The IC's limit on the number of controllers of a canister.
const MAX_CONTROLLERS: usize = 10;

/// Methods served over HTTP (for the "unsupported" message).
const SUPPORTED: &str = "provisional_create_canister_with_cycles, create_canister, install_code, \
     canister_status, stop_canister, start_canister, delete_canister, update_settings, \
     upload_chunk, stored_chunks, clear_chunk_store, install_chunked_code";

/// Largest wasm chunk (the IC's limit: 1 MiB).
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;
/// Most chunks a canister's store holds (the IC's default store: 100 MiB of 1 MiB chunks).
pub const MAX_CHUNKS: usize = 100;

fn reject(code: RejectCode, error_code: u16, message: impl Into<String>) -> Reject {
    Reject {
        code,
        message: message.into(),
        error_code: Some(format!("IC{error_code:04}")),
    }
}

/// IC0407: a method the management canister does not have, or that this replica does not serve.
pub(crate) fn unsupported(method: &str) -> Reject {
    let why = match method {
        "raw_rand" | "http_request" | "ecdsa_public_key" | "sign_with_ecdsa"
        | "schnorr_public_key" | "sign_with_schnorr" | "vetkd_public_key" | "vetkd_derive_key"
        | "deposit_cycles" => {
            "can only be called by canisters, not by ingress messages".to_string()
        }
        _ => format!("is not supported by ic-ws-replica over HTTP (supported: {SUPPORTED})"),
    };
    reject(
        RejectCode::CanisterReject,
        407,
        format!("Management canister method '{method}' {why}"),
    )
}

/// A query to the management canister: `canister_status` (controllers only, as on the IC,
/// where ic-utils issues it as a query by default); anything else is IC0407. The effective
/// canister id must be the argument's `canister_id`.
pub(crate) fn query(
    core: &mut Core,
    ecid: Principal,
    method: &str,
    arg: &[u8],
    sender: Principal,
) -> Result<Vec<u8>, Reject> {
    if method != "canister_status" {
        return Err(reject(
            RejectCode::CanisterReject,
            407,
            format!(
                "Management canister method '{method}' cannot be called as a query on ic-ws-replica \
                 (the only management query served is canister_status)"
            ),
        ));
    }
    let CanisterIdRecord { canister_id } = decode(method, arg)?;
    if canister_id != ecid {
        return Err(reject(
            RejectCode::CanisterReject,
            408,
            format!(
                "Specified CanisterId {canister_id} (the canister_id of the {method} argument) does not match \
                 effective canister id in URL {ecid}"
            ),
        ));
    }
    controlled(core, canister_id, sender, method)?;
    reply(&status(core, canister_id))
}

/// Candid decoding work allowed for one argument (the IC bounds management arguments the same
/// way): a hostile `vec null` of 2^60 elements or deeply nested skipped fields cost at most
/// this much, not minutes of a server thread.
const DECODING_QUOTA: usize = 20_000_000;
const SKIPPING_QUOTA: usize = 10_000;

fn decode<T: CandidType + DeserializeOwned>(method: &str, arg: &[u8]) -> Result<T, Reject> {
    let mut config = candid::de::DecoderConfig::new();
    config
        .set_decoding_quota(DECODING_QUOTA)
        .set_skipping_quota(SKIPPING_QUOTA);
    candid::utils::decode_one_with_config(arg, &config).map_err(|e| {
        reject(
            RejectCode::CanisterReject,
            408,
            format!(
                "Management canister method '{method}': error decoding the candid argument: {e}"
            ),
        )
    })
}

/// The effective canister id a call of `method` with `arg` must be addressed to: `None` when
/// any id is fine (the create methods). Errors: unsupported method, undecodable argument.
pub(crate) fn effective_canister_id(method: &str, arg: &[u8]) -> Result<Option<Principal>, Reject> {
    Ok(match method {
        "provisional_create_canister_with_cycles" => {
            decode::<ProvisionalCreateCanisterWithCyclesArgs>(method, arg)?;
            None
        }
        "create_canister" => {
            decode::<CreateCanisterArgs>(method, arg)?;
            None
        }
        "install_code" => Some(decode::<InstallCodeArgs>(method, arg)?.canister_id),
        "install_chunked_code" => {
            Some(decode::<InstallChunkedCodeArgs>(method, arg)?.target_canister)
        }
        "upload_chunk" => Some(decode::<UploadChunkArgs>(method, arg)?.canister_id),
        "update_settings" => Some(decode::<UpdateSettingsArgs>(method, arg)?.canister_id),
        "canister_status" | "stop_canister" | "start_canister" | "delete_canister"
        | "stored_chunks" | "clear_chunk_store" => {
            Some(decode::<CanisterIdRecord>(method, arg)?.canister_id)
        }
        _ => return Err(unsupported(method)),
    })
}

/// Checks that `canister` exists and `sender` controls it.
fn controlled(
    core: &Core,
    canister: Principal,
    sender: Principal,
    method: &str,
) -> Result<(), Reject> {
    let Some(controllers) = core.engine.controllers(canister) else {
        return Err(canister_not_found(canister));
    };
    if controllers.contains(&sender) {
        Ok(())
    } else {
        Err(reject(
            RejectCode::CanisterError,
            512,
            format!(
                "Only controllers of canister {canister} can call ic00 method {method}; {sender} is not one of them"
            ),
        ))
    }
}

/// Validates the controllers of `settings` (at most 10, no duplicates needed).
fn controllers_of(settings: &CanisterSettings) -> Result<Option<Vec<Principal>>, Reject> {
    let Some(list) = &settings.controllers else {
        return Ok(None);
    };
    if list.len() > MAX_CONTROLLERS {
        return Err(reject(
            RejectCode::CanisterReject,
            408,
            format!(
                "Invalid settings: {} controllers given, at most {MAX_CONTROLLERS} are allowed",
                list.len()
            ),
        ));
    }
    let mut unique = list.clone();
    unique.sort();
    unique.dedup();
    Ok(Some(unique))
}

fn reply<T: CandidType>(value: &T) -> Result<Vec<u8>, Reject> {
    candid::encode_one(value).map_err(|e| {
        reject(
            RejectCode::SysFatal,
            1,
            format!("management canister reply encoding: {e}"),
        )
    })
}

fn create(
    core: &mut Core,
    settings: Option<CanisterSettings>,
    sender: Principal,
) -> Result<Vec<u8>, Reject> {
    let controllers = match &settings {
        Some(s) => controllers_of(s)?,
        None => None,
    }
    .unwrap_or_else(|| vec![sender]);
    let canister_id = core.engine.create_canister(controllers);
    core.canisters.insert(canister_id);
    reply(&CanisterIdRecord { canister_id })
}

/// Executes an ingress call to the management canister as `sender`.
pub(crate) fn execute(
    core: &mut Core,
    method: &str,
    arg: &[u8],
    sender: Principal,
) -> Result<Vec<u8>, Reject> {
    match method {
        "provisional_create_canister_with_cycles" => {
            let args: ProvisionalCreateCanisterWithCyclesArgs = decode(method, arg)?;
            if let Some(id) = args.specified_id {
                return Err(reject(
                    RejectCode::CanisterReject,
                    408,
                    format!(
                        "provisional_create_canister_with_cycles: specified_id ({id}) is not supported by ic-ws-replica \
                         (canister ids are allocated in order)"
                    ),
                ));
            }
            create(core, args.settings, sender)
        }
        "create_canister" => {
            let args: CreateCanisterArgs = decode(method, arg)?;
            create(core, args.settings, sender)
        }
        "install_code" => {
            let args: InstallCodeArgs = decode(method, arg)?;
            let canister = args.canister_id;
            controlled(core, canister, sender, method)?;
            let mode = install_mode(method, args.mode)?;
            core.engine
                .install(canister, &args.wasm_module, &args.arg, mode, sender)?;
            reply(&())
        }
        "upload_chunk" => {
            let args: UploadChunkArgs = decode(method, arg)?;
            controlled(core, args.canister_id, sender, method)?;
            if args.chunk.len() > MAX_CHUNK_BYTES {
                return Err(reject(
                    RejectCode::CanisterReject,
                    408,
                    format!(
                        "upload_chunk: a chunk of {} bytes exceeds the limit of {MAX_CHUNK_BYTES}",
                        args.chunk.len()
                    ),
                ));
            }
            let hash: [u8; 32] = Sha256::digest(&args.chunk).into();
            let store = core.chunks.entry(args.canister_id).or_default();
            if !store.contains_key(&hash) && store.len() >= MAX_CHUNKS {
                return Err(reject(
                    RejectCode::CanisterReject,
                    408,
                    format!("upload_chunk: the chunk store of {} is full ({MAX_CHUNKS} chunks): clear_chunk_store first", args.canister_id),
                ));
            }
            store.insert(hash, args.chunk);
            reply(&ChunkHash {
                hash: hash.to_vec(),
            })
        }
        "stored_chunks" => {
            let CanisterIdRecord { canister_id } = decode(method, arg)?;
            controlled(core, canister_id, sender, method)?;
            let hashes: Vec<ChunkHash> = core
                .chunks
                .get(&canister_id)
                .map(|store| {
                    store
                        .keys()
                        .map(|h| ChunkHash { hash: h.to_vec() })
                        .collect()
                })
                .unwrap_or_default();
            reply(&hashes)
        }
        "clear_chunk_store" => {
            let CanisterIdRecord { canister_id } = decode(method, arg)?;
            controlled(core, canister_id, sender, method)?;
            core.chunks.remove(&canister_id);
            reply(&())
        }
        "install_chunked_code" => {
            let args: InstallChunkedCodeArgs = decode(method, arg)?;
            let target = args.target_canister;
            let store_canister = args.store_canister.unwrap_or(target);
            controlled(core, target, sender, method)?;
            controlled(core, store_canister, sender, method)?;
            let mode = install_mode(method, args.mode)?;
            let wasm = assemble(
                core,
                store_canister,
                &args.chunk_hashes_list,
                &args.wasm_module_hash,
            )?;
            core.engine
                .install(target, &wasm, &args.arg, mode, sender)?;
            reply(&())
        }
        "canister_status" => {
            let CanisterIdRecord { canister_id } = decode(method, arg)?;
            controlled(core, canister_id, sender, method)?;
            reply(&status(core, canister_id))
        }
        "stop_canister" | "start_canister" => {
            let CanisterIdRecord { canister_id } = decode(method, arg)?;
            controlled(core, canister_id, sender, method)?;
            if method == "stop_canister" {
                core.engine.stop_canister(canister_id);
            } else {
                core.engine.start_canister(canister_id);
            }
            reply(&())
        }
        "delete_canister" => {
            let CanisterIdRecord { canister_id } = decode(method, arg)?;
            controlled(core, canister_id, sender, method)?;
            core.engine.delete_canister(canister_id)?;
            core.chunks.remove(&canister_id);
            core.canisters.remove(&canister_id);
            core.tree.remove_canister(canister_id);
            reply(&())
        }
        "update_settings" => {
            let args: UpdateSettingsArgs = decode(method, arg)?;
            controlled(core, args.canister_id, sender, method)?;
            if let Some(controllers) = controllers_of(&args.settings)? {
                core.engine.set_controllers(args.canister_id, controllers);
            }
            reply(&())
        }
        _ => Err(unsupported(method)),
    }
}

/// The install mode of `install_code` / `install_chunked_code`; what this replica cannot do is
/// refused with the reason.
fn install_mode(method: &str, mode: CanisterInstallMode) -> Result<InstallMode, Reject> {
    Ok(match mode {
        CanisterInstallMode::Install => InstallMode::Install,
        CanisterInstallMode::Reinstall => InstallMode::Reinstall,
        CanisterInstallMode::Upgrade(flags) => {
            let flags = flags.unwrap_or_default();
            if flags.skip_pre_upgrade == Some(true) {
                return Err(reject(
                    RejectCode::CanisterReject,
                    408,
                    format!("{method}: upgrade with skip_pre_upgrade = true is not supported by ic-ws-replica"),
                ));
            }
            if flags.wasm_memory_persistence == Some(WasmMemoryPersistence::Keep) {
                return Err(reject(
                    RejectCode::CanisterReject,
                    408,
                    format!(
                        "{method}: wasm_memory_persistence = keep (enhanced orthogonal persistence) is not \
                         supported by ic-ws-replica"
                    ),
                ));
            }
            InstallMode::Upgrade
        }
    })
}

/// The module of `install_chunked_code`: the chunks of `store` named by `hashes`, in order,
/// whose sha256 must be `module_hash` (as on the IC).
fn assemble(
    core: &Core,
    store: Principal,
    hashes: &[ChunkHash],
    module_hash: &[u8],
) -> Result<Vec<u8>, Reject> {
    let invalid = |message: String| reject(RejectCode::CanisterReject, 408, message);
    let chunks = core.chunks.get(&store);
    let mut wasm = Vec::new();
    for (i, h) in hashes.iter().enumerate() {
        let chunk = <[u8; 32]>::try_from(h.hash.as_slice())
            .ok()
            .and_then(|key| chunks.and_then(|c| c.get(&key)))
            .ok_or_else(|| {
                invalid(format!(
                    "install_chunked_code: chunk {i} ({}) is not in the chunk store of {store}",
                    hex::encode(&h.hash)
                ))
            })?;
        wasm.extend_from_slice(chunk);
    }
    let hash: [u8; 32] = Sha256::digest(&wasm).into();
    if hash.as_slice() != module_hash {
        return Err(invalid(format!(
            "install_chunked_code: the assembled module's hash is {}, not the wasm_module_hash {}",
            hex::encode(hash),
            hex::encode(module_hash)
        )));
    }
    Ok(wasm)
}

/// `canister_status` reply. The fields of `ic-management-canister-types` 0.8 plus those of the
/// current interface specification that newer clients require (icp-cli 1.5 fails to decode a
/// reply without `status_visibility` and `minimum_incoming_canister_call_cycles`); older clients ignore extra fields
/// (candid record subtyping).
#[derive(CandidType)]
struct CanisterStatusResult {
    status: CanisterStatusType,
    ready_for_migration: bool,
    version: u64,
    settings: DefiniteCanisterSettings,
    module_hash: Option<Vec<u8>>,
    memory_size: Nat,
    memory_metrics: MemoryMetrics,
    cycles: Nat,
    reserved_cycles: Nat,
    idle_cycles_burned_per_day: Nat,
    query_stats: QueryStats,
}

#[derive(CandidType)]
struct DefiniteCanisterSettings {
    controllers: Vec<Principal>,
    compute_allocation: Nat,
    memory_allocation: Nat,
    freezing_threshold: Nat,
    reserved_cycles_limit: Nat,
    log_visibility: LogVisibility,
    log_memory_limit: Nat,
    snapshot_visibility: SnapshotVisibility,
    wasm_memory_limit: Nat,
    wasm_memory_threshold: Nat,
    environment_variables: Vec<EnvironmentVariable>,
    status_visibility: StatusVisibility,
    minimum_incoming_canister_call_cycles: Nat,
}

/// Who may read `canister_status` (current interface specification).
#[derive(CandidType)]
#[allow(non_camel_case_types)]
enum StatusVisibility {
    controllers,
}

fn status(core: &Core, canister: Principal) -> CanisterStatusResult {
    let engine = &core.engine;
    let nat = |n: u64| Nat::from(n);
    let heap = engine.heap_size(canister).unwrap_or(0);
    let stable = engine.stable_memory_size(canister).unwrap_or(0);
    CanisterStatusResult {
        status: if engine.is_stopped(canister) == Some(true) {
            CanisterStatusType::Stopped
        } else {
            CanisterStatusType::Running
        },
        ready_for_migration: false,
        version: engine.canister_version(canister).unwrap_or(0),
        settings: DefiniteCanisterSettings {
            controllers: engine.controllers(canister).unwrap_or_default(),
            compute_allocation: nat(0),
            memory_allocation: nat(0),
            freezing_threshold: nat(2_592_000),
            reserved_cycles_limit: nat(5_000_000_000_000),
            log_visibility: LogVisibility::Controllers,
            log_memory_limit: nat(4096),
            snapshot_visibility: SnapshotVisibility::Controllers,
            wasm_memory_limit: nat(3_221_225_472),
            wasm_memory_threshold: nat(0),
            environment_variables: Vec::new(),
            status_visibility: StatusVisibility::controllers,
            minimum_incoming_canister_call_cycles: nat(0),
        },
        module_hash: engine.module_hash(canister).map(|h| h.to_vec()),
        memory_size: nat(heap + stable),
        memory_metrics: MemoryMetrics {
            wasm_memory_size: nat(heap),
            stable_memory_size: nat(stable),
            global_memory_size: nat(0),
            wasm_binary_size: nat(0),
            custom_sections_size: nat(0),
            canister_history_size: nat(0),
            wasm_chunk_store_size: nat(0),
            snapshots_size: nat(0),
            log_memory_store_size: nat(0),
        },
        // No cycles accounting: the balance canisters see (ic0.canister_cycle_balance).
        cycles: Nat::from(100_000_000_000_000u128),
        reserved_cycles: nat(0),
        idle_cycles_burned_per_day: nat(0),
        query_stats: QueryStats {
            num_calls_total: nat(0),
            num_instructions_total: nat(0),
            request_payload_bytes_total: nat(0),
            response_payload_bytes_total: nat(0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Replica, ReplicaConfig};

    /// What icp-cli 1.5 requires of the reply (it refuses replies without these fields), and
    /// that ic-utils' older type still decodes it.
    #[test]
    fn status_reply_has_the_current_specification_fields() {
        #[derive(CandidType, candid::Deserialize)]
        #[allow(dead_code)]
        enum Visibility {
            #[serde(rename = "controllers")]
            Controllers,
            #[serde(rename = "public")]
            Public,
            #[serde(rename = "allowed_viewers")]
            AllowedViewers(Vec<Principal>),
        }
        #[derive(CandidType, candid::Deserialize)]
        struct Settings {
            controllers: Vec<Principal>,
            status_visibility: Visibility,
            minimum_incoming_canister_call_cycles: Nat,
        }
        #[derive(CandidType, candid::Deserialize)]
        struct Status {
            settings: Settings,
        }
        let replica = Replica::new(ReplicaConfig::with_seed("status fields"));
        let owner = Principal::from_slice(&[7; 29]);
        let canister = replica.create_canister(vec![owner]);
        let arg = candid::encode_one(CanisterIdRecord {
            canister_id: canister,
        })
        .unwrap();
        let reply = execute(&mut replica.core(), "canister_status", &arg, owner).unwrap();
        let status: Status = candid::decode_one(&reply).unwrap();
        assert_eq!(status.settings.controllers, vec![owner]);
        assert!(matches!(
            status.settings.status_visibility,
            Visibility::Controllers
        ));
        assert_eq!(status.settings.minimum_incoming_canister_call_cycles, 0u64);
        let old: ic_management_canister_types::CanisterStatusResult =
            candid::decode_one(&reply).unwrap();
        assert_eq!(old.status, CanisterStatusType::Running);
        // Not a controller: refused.
        let stranger = Principal::from_slice(&[8; 29]);
        let e = execute(&mut replica.core(), "canister_status", &arg, stranger).unwrap_err();
        assert_eq!(e.error_code.as_deref(), Some("IC0512"));
    }

    /// A record with an extra field `vec null` announcing 2^50 elements (cheap to send, costly
    /// to skip): refused with IC0408 at once. Measured: without the quotas, `candid::decode_one`
    /// of this argument was still running after 60 s.
    #[test]
    fn hostile_candid_is_bounded() {
        fn leb(mut n: u64, out: &mut Vec<u8>) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    return;
                }
                out.push(byte | 0x80);
            }
        }
        let field = |name: &str| {
            candid::types::value::IDLField {
                id: candid::types::Label::Named(name.to_string()),
                val: candid::types::value::IDLValue::Null,
            }
            .id
            .get_id()
        };
        let (canister_id, extra) = (field("canister_id"), field("zzzz"));
        let mut arg = b"DIDL".to_vec();
        // Type table: 0 = record { canister_id: principal; zzzz: 1 }, 1 = vec null.
        arg.push(2);
        arg.push(0x6c);
        arg.push(2);
        let mut fields = [(canister_id, vec![0x68u8]), (extra, vec![1u8])];
        fields.sort();
        for (id, ty) in &fields {
            leb(u64::from(*id), &mut arg);
            arg.extend_from_slice(ty);
        }
        arg.extend_from_slice(&[0x6d, 0x7f]);
        arg.push(1); // one argument
        arg.push(0); // of type 0
                     // Values in field-id order.
        for (id, _) in &fields {
            if *id == canister_id {
                arg.extend_from_slice(&[1, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
            } else {
                leb(1 << 50, &mut arg);
            }
        }
        let started = std::time::Instant::now();
        let e = effective_canister_id("stop_canister", &arg).unwrap_err();
        assert_eq!(e.error_code.as_deref(), Some("IC0408"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
