//! Compiling canister wasm, once per module per process.
//!
//! All engines of the process share one wasmtime engine (multi-memory for the dirty-page
//! bytemap; no fuel metering: the instrumentation counts instructions itself) and one cache of
//! compiled modules keyed by the SHA-256 of the (decompressed) wasm, so a test suite that
//! installs the same canister in a hundred engines compiles it once.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};
use wasmtime::{Config, ExternType, InstancePre, Linker, Module, OptLevel, Store};

use super::instrument::{instrument, InvalidWasm};
use super::system_api::{linker, unsupported_import_trap, Host, SubnetInfo};
use super::MethodKind;

/// Largest accepted wasm module after decompression (the IC allows 100 MiB).
pub const MAX_WASM_SIZE: usize = 100 * 1024 * 1024;
/// Compiled modules kept in the process-wide cache before it is emptied.
const CACHE_CAPACITY: usize = 64;

/// A compiled, instrumented canister module, ready to instantiate.
pub struct Compiled {
    /// Instantiation template (imports resolved).
    pub pre: InstancePre<Host>,
    /// Exported methods by name.
    pub methods: HashMap<String, MethodKind>,
    /// Every exported function name of the original module.
    pub exports: HashSet<String>,
    /// Export names of the mutable globals to snapshot.
    pub mutable_global_exports: Vec<String>,
    /// Whether the function table is exported.
    pub has_table: bool,
    /// Whether the module has a start function (exported as `__ic_start`).
    pub has_start: bool,
    /// Imports that trap when called because this replica does not implement them.
    pub unsupported_imports: Vec<String>,
    /// The module's canister metadata: custom sections named `icp:public <name>` or
    /// `icp:private <name>` (as ic-wasm, dfx and icp-cli write them), served under
    /// `/canister/<id>/metadata/<name>` by `read_state`.
    pub metadata: Vec<Metadata>,
}

/// One canister metadata section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The name after the visibility (`candid:service`, ...).
    pub name: String,
    /// `icp:public`: anyone may read it; `icp:private`: controllers only.
    pub public: bool,
    /// The section's content.
    pub content: Vec<u8>,
}

/// The `icp:public` / `icp:private` custom sections of `wasm`. A name given twice is refused,
/// as the IC refuses such a module.
pub fn metadata_sections(wasm: &[u8]) -> Result<Vec<Metadata>, InvalidWasm> {
    let mut out: Vec<Metadata> = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| InvalidWasm(format!("invalid wasm module: {e}")))?;
        let wasmparser::Payload::CustomSection(section) = payload else {
            continue;
        };
        let (public, name) = if let Some(n) = section.name().strip_prefix("icp:public ") {
            (true, n)
        } else if let Some(n) = section.name().strip_prefix("icp:private ") {
            (false, n)
        } else {
            continue;
        };
        if out.iter().any(|m| m.name == name) {
            return Err(InvalidWasm(format!(
                "the module declares the canister metadata `{name}` more than once"
            )));
        }
        out.push(Metadata {
            name: name.to_string(),
            public,
            content: section.data().to_vec(),
        });
    }
    Ok(out)
}

impl Compiled {
    /// Whether the module exports function `name`.
    pub fn exports(&self, name: &str) -> bool {
        self.exports.contains(name)
    }
}

struct Shared {
    engine: wasmtime::Engine,
    linker: Linker<Host>,
    /// `(module, name)` of every import the linker defines.
    defined: HashSet<(String, String)>,
    cache: Mutex<HashMap<[u8; 32], Arc<Compiled>>>,
}

fn shared() -> Result<&'static Shared, InvalidWasm> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let mut config = Config::new();
            // Instructions are counted by the injected counter (see `instrument`), which counts
            // the canister's own operators only; wasmtime fuel would also count the injected
            // code, and cost run time for nothing.
            config.wasm_multi_memory(true);
            config.wasm_bulk_memory(true);
            config.wasm_simd(true);
            config.cranelift_opt_level(OptLevel::Speed);
            let engine =
                wasmtime::Engine::new(&config).map_err(|e| format!("wasmtime engine: {e:#}"))?;
            let linker = linker(&engine).map_err(|e| format!("ic0 linker: {e:#}"))?;
            let mut store = Store::new(
                &engine,
                Host::new(
                    candid::Principal::anonymous(),
                    Vec::new(),
                    Arc::new(SubnetInfo::default()),
                    Default::default(),
                ),
            );
            let defined = linker
                .iter(&mut store)
                .map(|(module, name, _)| (module.to_string(), name.to_string()))
                .collect();
            Ok(Shared {
                engine,
                linker,
                defined,
                cache: Mutex::new(HashMap::new()),
            })
        })
        .as_ref()
        .map_err(|e| InvalidWasm(e.clone()))
}

/// The process-wide wasmtime engine.
pub fn wasmtime_engine() -> Result<&'static wasmtime::Engine, InvalidWasm> {
    Ok(&shared()?.engine)
}

/// Plain wasm, or gzip-compressed wasm (what `install_code` accepts).
pub fn decompress(bytes: &[u8]) -> Result<Vec<u8>, InvalidWasm> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_WASM_SIZE as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| InvalidWasm(format!("cannot decompress gzipped wasm: {e}")))?;
        if out.len() > MAX_WASM_SIZE {
            return Err(InvalidWasm(format!(
                "decompressed wasm exceeds {MAX_WASM_SIZE} bytes"
            )));
        }
        Ok(out)
    } else if bytes.len() > MAX_WASM_SIZE {
        Err(InvalidWasm(format!("wasm exceeds {MAX_WASM_SIZE} bytes")))
    } else {
        Ok(bytes.to_vec())
    }
}

/// Decompresses, instruments and compiles `bytes`, or returns the cached result.
pub fn compile(bytes: &[u8]) -> Result<Arc<Compiled>, InvalidWasm> {
    let shared = shared()?;
    let wasm = decompress(bytes)?;
    let hash: [u8; 32] = Sha256::digest(&wasm).into();
    if let Some(hit) = lock(&shared.cache).get(&hash) {
        return Ok(hit.clone());
    }
    // Compile outside the lock: other engines keep working meanwhile.
    let compiled = Arc::new(compile_uncached(shared, &wasm)?);
    let mut cache = lock(&shared.cache);
    if cache.len() >= CACHE_CAPACITY {
        cache.clear();
    }
    cache.insert(hash, compiled.clone());
    Ok(compiled)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn compile_uncached(shared: &Shared, wasm: &[u8]) -> Result<Compiled, InvalidWasm> {
    let instrumented = instrument(wasm)?;
    let metadata = metadata_sections(wasm)?;
    let module = Module::new(&shared.engine, &instrumented.wasm)
        .map_err(|e| InvalidWasm(format!("wasm module does not compile: {}", e.root_cause())))?;
    let mut linker = shared.linker.clone();
    let mut unsupported_imports = Vec::new();
    for import in module.imports() {
        let key = (import.module().to_string(), import.name().to_string());
        if shared.defined.contains(&key) {
            continue;
        }
        match import.ty() {
            ExternType::Func(ty) => {
                let trap = unsupported_import_trap(import.module(), import.name());
                linker
                    .func_new(import.module(), import.name(), ty, move |_, _, _| {
                        Err(wasmtime::Error::new(trap.clone()))
                    })
                    .map_err(|e| InvalidWasm(format!("cannot stub import: {e}")))?;
                unsupported_imports.push(format!("{}.{}", import.module(), import.name()));
            }
            other => {
                return Err(InvalidWasm(format!(
                    "the module imports {}.{} ({other:?}), which the IC does not provide",
                    import.module(),
                    import.name()
                )))
            }
        }
    }
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| InvalidWasm(format!("cannot link the module: {}", e.root_cause())))?;
    let mut methods = HashMap::new();
    for name in &instrumented.function_exports {
        let kind = if let Some(m) = name.strip_prefix("canister_update ") {
            Some((m, MethodKind::Update))
        } else if let Some(m) = name.strip_prefix("canister_query ") {
            Some((m, MethodKind::Query))
        } else {
            name.strip_prefix("canister_composite_query ")
                .map(|m| (m, MethodKind::CompositeQuery))
        };
        if let Some((method, kind)) = kind {
            if methods.insert(method.to_string(), kind).is_some() {
                return Err(InvalidWasm(format!(
                    "method `{method}` is exported more than once"
                )));
            }
        }
    }
    Ok(Compiled {
        pre,
        methods,
        exports: instrumented.function_exports.iter().cloned().collect(),
        mutable_global_exports: instrumented.mutable_global_exports,
        has_table: instrumented.has_table,
        has_start: instrumented.has_start,
        unsupported_imports,
        metadata,
    })
}
