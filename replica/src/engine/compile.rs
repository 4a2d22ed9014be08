//! Compiling canister wasm, once per module per process.
//!
//! All engines of the process share one wasmtime engine (multi-memory for the dirty-page
//! bytemap; no fuel metering: the instrumentation counts instructions itself) and one cache of
//! compiled modules keyed by the SHA-256 of the (decompressed) wasm, so a test suite that
//! installs the same canister in a hundred engines compiles it once.
//!
//! Across processes, compiled modules can also be kept on disk (`IC_WS_REPLICA_MODULE_CACHE`,
//! or [`use_module_cache`]; tests that build their canisters from source turn it on, see
//! `wasm_build`): cranelift spends ~15 s of CPU on a 4 MB canister in a debug build, and every
//! test binary and every replica process of the suite would pay it again. The key is the
//! SHA-256 of the *instrumented* wasm (so a change of the instrumentation is a miss, never a
//! stale module) and wasmtime's compatibility hash of the engine's version and settings.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
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
/// Compiled modules kept in the on-disk cache (the oldest are removed beyond it).
const DISK_CACHE_CAPACITY: usize = 32;
/// Names the format of the on-disk cache's keys.
const DISK_CACHE_VERSION: &[u8] = b"ic-ws-replica compiled module v1";

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

fn module_cache_dir() -> &'static Option<PathBuf> {
    MODULE_CACHE.get_or_init(env_module_cache)
}

fn env_module_cache() -> Option<PathBuf> {
    std::env::var_os("IC_WS_REPLICA_MODULE_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

static MODULE_CACHE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Keeps compiled modules in `dir` (created when needed) for other processes, unless
/// `IC_WS_REPLICA_MODULE_CACHE` names another directory or the process already compiled:
/// returns whether `dir` is now the cache. Only name a directory written by this replica alone
/// (as a build directory is): its files are loaded as compiled machine code.
pub fn use_module_cache(dir: PathBuf) -> bool {
    let mut chosen = false;
    MODULE_CACHE.get_or_init(|| {
        env_module_cache().or_else(|| {
            chosen = true;
            Some(dir)
        })
    });
    chosen
}

/// `wasm` (instrumented) compiled, from the on-disk cache when there is one and it holds it.
fn load_module(
    engine: &wasmtime::Engine,
    wasm: &[u8],
    cache: Option<&Path>,
) -> Result<Module, InvalidWasm> {
    let compile = || {
        Module::new(engine, wasm)
            .map_err(|e| InvalidWasm(format!("wasm module does not compile: {}", e.root_cause())))
    };
    let Some(dir) = cache else {
        return compile();
    };
    let path = dir.join(format!("{}.cwasm", disk_key(engine, wasm)));
    // Read into memory rather than mapped: a file truncated or rewritten in place by someone
    // else later cannot fault a running replica.
    if let Ok(file) = std::fs::read(&path) {
        // The file is the SHA-256 of the artefact, then the artefact: a damaged or partial file
        // is never handed to wasmtime.
        let intact = file
            .split_at_checked(32)
            .filter(|(digest, body)| Sha256::digest(body).as_slice() == *digest);
        match intact {
            Some((_, body)) => {
                // SAFETY: `Module::deserialize` runs the bytes as machine code. They are, as
                // their digest shows, what `store_module` wrote from `Module::serialize` of a
                // module compiled by this engine's configuration, in a directory the operator
                // gave this replica for it (see `use_module_cache`); wasmtime also checks that
                // they are its own artefact, of the same version and settings.
                #[allow(unsafe_code)]
                let loaded = unsafe { Module::deserialize(engine, body) };
                match loaded {
                    Ok(module) => return Ok(module),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "compiled module not reusable, compiling: {e:#}")
                    }
                }
            }
            None => {
                tracing::warn!(path = %path.display(), "compiled module damaged, compiling")
            }
        }
    }
    let module = compile()?;
    match module.serialize() {
        Ok(bytes) => store_module(dir, &path, &bytes),
        Err(e) => tracing::warn!("compiled module not serialisable: {e:#}"),
    }
    Ok(module)
}

/// The on-disk cache key of `wasm` for `engine` (hex).
fn disk_key(engine: &wasmtime::Engine, wasm: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut compat = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut compat);
    let digest = Sha256::new()
        .chain_update(DISK_CACHE_VERSION)
        .chain_update(compat.finish().to_le_bytes())
        .chain_update(wasm)
        .finalize();
    hex::encode(digest)
}

/// Writes a compiled module to the cache (a temporary file renamed into place, so readers of
/// other processes see whole files only) and keeps the cache within its capacity. Failures
/// only cost a later compilation: warned, not returned.
fn store_module(dir: &Path, path: &Path, bytes: &[u8]) {
    use std::io::Write;
    // Unique per process and write: two threads that compiled the same module at once each
    // write their own file (the rename makes one of them the cache's).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::File::create(&tmp))
        .and_then(|mut f| {
            f.write_all(&Sha256::digest(bytes))?;
            f.write_all(bytes)
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(dir = %dir.display(), "cannot keep the compiled module: {e}");
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut modules: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    if modules.len() > DISK_CACHE_CAPACITY {
        modules.sort();
        let excess = modules.len() - DISK_CACHE_CAPACITY;
        for (_, old) in modules.into_iter().take(excess) {
            let _ = std::fs::remove_file(old);
        }
    }
}

fn compile_uncached(shared: &Shared, wasm: &[u8]) -> Result<Compiled, InvalidWasm> {
    let instrumented = instrument(wasm)?;
    let metadata = metadata_sections(wasm)?;
    let module = load_module(
        &shared.engine,
        &instrumented.wasm,
        module_cache_dir().as_deref(),
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn module_wasm(value: i32) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module (func (export "f") (result i32) i32.const {value}))"#
        ))
        .expect("wat")
    }

    fn call_f(engine: &wasmtime::Engine, module: &Module) -> i32 {
        let mut store = Store::new(engine, ());
        let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("instantiate");
        let f = instance
            .get_typed_func::<(), i32>(&mut store, "f")
            .expect("export f");
        f.call(&mut store, ()).expect("call f")
    }

    fn cached_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("cache dir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn the_disk_cache_serves_other_processes_and_survives_bad_files() {
        let engine = wasmtime_engine().expect("engine");
        let dir = std::env::temp_dir().join(format!("ic-ws-module-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let wasm = module_wasm(7);

        // First use: compiled and written, whole (no temporary file left).
        let first = load_module(engine, &wasm, Some(&dir)).expect("compile");
        assert_eq!(call_f(engine, &first), 7);
        let files = cached_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].extension().and_then(|x| x.to_str()), Some("cwasm"));

        // Next use (as another process would): loaded from the file, which is not rewritten.
        let written = std::fs::metadata(&files[0])
            .and_then(|m| m.modified())
            .expect("mtime");
        let again = load_module(engine, &wasm, Some(&dir)).expect("load");
        assert_eq!(call_f(engine, &again), 7);
        let after = std::fs::metadata(&files[0])
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(written, after, "a hit must not compile and write again");

        // Another module is another key: never the first one's code.
        let other = load_module(engine, &module_wasm(8), Some(&dir)).expect("compile other");
        assert_eq!(call_f(engine, &other), 8);
        assert_eq!(cached_files(&dir).len(), 2);

        // A damaged file is not loaded: compiled again (and the file replaced). Here one byte
        // of the artefact flipped (the digest in front no longer matches), then garbage.
        let mut flipped = std::fs::read(&files[0]).expect("read");
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&files[0], &flipped).expect("damage");
        let repaired = load_module(engine, &wasm, Some(&dir)).expect("recompile");
        assert_eq!(call_f(engine, &repaired), 7);
        assert_ne!(std::fs::read(&files[0]).expect("read"), flipped);
        std::fs::write(&files[0], b"not a compiled module").expect("damage");
        let repaired = load_module(engine, &wasm, Some(&dir)).expect("recompile");
        assert_eq!(call_f(engine, &repaired), 7);
        assert_ne!(
            std::fs::read(&files[0]).expect("read"),
            b"not a compiled module".to_vec()
        );

        // Without a cache directory nothing is written anywhere.
        let plain = load_module(engine, &module_wasm(9), None).expect("compile");
        assert_eq!(call_f(engine, &plain), 9);
        assert_eq!(cached_files(&dir).len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_disk_cache_keeps_at_most_its_capacity() {
        let dir = std::env::temp_dir().join(format!("ic-ws-module-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        for i in 0..DISK_CACHE_CAPACITY + 3 {
            let path = dir.join(format!("{i:04}.cwasm"));
            store_module(&dir, &path, b"x");
        }
        let files = cached_files(&dir);
        assert_eq!(files.len(), DISK_CACHE_CAPACITY, "{files:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
