//! Real processes and networks for the end-to-end tests.
//!
//! - [`TestNet`]: the embedded replica serving the IC HTTP interface on a local port, with
//!   canisters built to wasm from the workspace (`ic_ws_replica::wasm_build`), upgradable.
//! - [`GatewayProcess`]: the `ic-ws-gateway` binary as a child process: started on a free
//!   port, SIGKILLed, restarted on the same port with the same identity (so the same
//!   principal), or stopped with SIGTERM. Its log goes to a file that is printed when a test
//!   fails while the process is alive.
//!
//! Everything waits on conditions (a ready file, a child's exit) with generous deadlines, so
//! the tests hold on a loaded 2-core machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use candid::Principal;
use ic_ws_replica::{Replica, ReplicaConfig, ServerHandle};

/// What can go wrong while setting up or driving processes.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// A canister could not be built or installed.
    #[error("canister {package}: {message}")]
    Canister {
        /// The package.
        package: String,
        /// What failed.
        message: String,
    },
    /// The replica's HTTP interface did not start.
    #[error("replica: {0}")]
    Replica(String),
    /// The gateway did not start or stop as expected.
    #[error("gateway: {message}\n--- gateway log (tail) ---\n{log}")]
    Gateway {
        /// What failed.
        message: String,
        /// The end of its log.
        log: String,
    },
    /// File system trouble.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// How long a process may take to become ready on a loaded machine.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// A fresh directory for one test's files (identity keys, ready files, logs).
pub fn temp_dir(name: &str) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir()
        .join("ic-ws-e2e")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Wasm of a workspace canister package, built once per test process.
pub fn canister_wasm(package: &str) -> Result<Vec<u8>, E2eError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // Holding the lock while building: concurrent tests wait for one build.
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = cache.get(package) {
        return Ok(w.clone());
    }
    let err = |message: String| E2eError::Canister {
        package: package.to_string(),
        message,
    };
    let path =
        ic_ws_replica::wasm_build::build_canister(package).map_err(|e| err(e.to_string()))?;
    let wasm = std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    cache.insert(package.to_string(), wasm.clone());
    Ok(wasm)
}

/// The embedded replica serving the IC HTTP interface on a local port.
pub struct TestNet {
    /// Direct access (install, upgrade, time).
    pub replica: Replica,
    server: Option<ServerHandle>,
    /// `http://127.0.0.1:<port>`: the gateway's `--network`.
    pub url: String,
    /// The replica's root key (DER): clients verify certificates against it.
    pub root_key_der: Vec<u8>,
}

impl TestNet {
    /// Starts a replica with fresh random keys.
    pub fn start() -> Result<Self, E2eError> {
        let replica = Replica::new(ReplicaConfig::default());
        let server = replica
            .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| E2eError::Replica(e.to_string()))?;
        Ok(TestNet {
            url: server.url(),
            root_key_der: replica.root_key_der(),
            replica,
            server: Some(server),
        })
    }

    /// Builds `package` and installs it in a new canister with the candid `arg`.
    pub fn install(&self, package: &str, arg: &[u8]) -> Result<Principal, E2eError> {
        let wasm = canister_wasm(package)?;
        self.replica
            .create_and_install(&wasm, arg)
            .map_err(|e| E2eError::Canister {
                package: package.into(),
                message: e.to_string(),
            })
    }

    /// Upgrades `canister` to (the current build of) `package`.
    pub fn upgrade(&self, canister: Principal, package: &str, arg: &[u8]) -> Result<(), E2eError> {
        let wasm = canister_wasm(package)?;
        self.replica
            .upgrade(canister, &wasm, arg)
            .map_err(|e| E2eError::Canister {
                package: package.into(),
                message: format!("upgrade: {e:?}"),
            })
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// How to run a gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The replica URL.
    pub network: String,
    /// Canisters to serve.
    pub canisters: Vec<Principal>,
    /// More flags (e.g. `--send-buffer-frames 4`).
    pub extra_args: Vec<String>,
}

impl GatewayOptions {
    /// A gateway for `canisters` on `net`.
    pub fn new(net: &TestNet, canisters: &[Principal]) -> Self {
        GatewayOptions {
            network: net.url.clone(),
            canisters: canisters.to_vec(),
            extra_args: Vec::new(),
        }
    }

    /// Adds flags.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.extra_args.push(flag.into());
        self.extra_args.push(value.into());
        self
    }
}

/// The path of the gateway binary: `IC_WS_GATEWAY_BIN`, else the copy this package builds
/// from `gateway/src/main.rs`, next to the running test's directory.
pub fn gateway_binary() -> Result<PathBuf, E2eError> {
    if let Some(p) = std::env::var_os("IC_WS_GATEWAY_BIN") {
        return Ok(PathBuf::from(p));
    }
    // CARGO_BIN_EXE_* is only visible to test targets, not to this library: a test runs as
    // target/<profile>/deps/<exe>, the binary is target/<profile>/ic-ws-gateway-e2e.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| gateway_error("cannot locate the target directory", ""))?;
    Ok(profile_dir.join("ic-ws-gateway-e2e"))
}

fn gateway_error(message: impl Into<String>, log: impl Into<String>) -> E2eError {
    E2eError::Gateway {
        message: message.into(),
        log: log.into(),
    }
}

/// A gateway child process.
pub struct GatewayProcess {
    child: Option<Child>,
    options: GatewayOptions,
    dir: PathBuf,
    generation: u32,
    /// Where clients connect (`127.0.0.1:<port>`; kept across restarts).
    pub listen: SocketAddr,
    /// The admin server (`/metrics`, `/healthz`), if any.
    pub admin: Option<SocketAddr>,
    /// The gateway's principal (kept across restarts: same identity file).
    pub principal: Principal,
}

impl GatewayProcess {
    /// Starts a gateway on a free port with a new identity and waits until it is ready.
    pub fn start(options: GatewayOptions) -> Result<Self, E2eError> {
        let dir = temp_dir("gateway")?;
        let mut gw = GatewayProcess {
            child: None,
            options,
            dir,
            generation: 0,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            principal: Principal::anonymous(),
        };
        gw.spawn()?;
        Ok(gw)
    }

    /// `ws://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.listen)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("gateway-{}.log", self.generation))
    }

    /// The end of the current process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn spawn(&mut self) -> Result<(), E2eError> {
        self.generation += 1;
        let ready = self.dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::File::create(self.log_path())?;
        let canisters: Vec<String> = self.options.canisters.iter().map(|c| c.to_text()).collect();
        let mut cmd = Command::new(gateway_binary()?);
        cmd.arg("--listen")
            .arg(self.listen.to_string())
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--identity-file")
            .arg(self.dir.join("identity.pem"))
            .args(["--network", &self.options.network, "--fetch-root-key"])
            .args(["--canister", &canisters.join(",")])
            .args(["--ip-connect-rate", "0"])
            .args(["--log", "info"])
            .args(&self.options.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd
            .spawn()
            .map_err(|e| gateway_error(format!("cannot start {:?}: {e}", cmd.get_program()), ""))?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let info: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if let Ok(v) = serde_json::from_str(text.trim()) {
                    break v;
                }
            }
            if let Some(status) = child.try_wait()? {
                return Err(gateway_error(
                    format!("exited during startup: {status}"),
                    self.log_tail(),
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(gateway_error("not ready in time", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let field = |name: &str| info.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let listen = field("listen")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| gateway_error(format!("bad ready file {info}"), self.log_tail()))?;
        let principal = field("principal")
            .and_then(|s| Principal::from_text(s).ok())
            .ok_or_else(|| gateway_error(format!("bad ready file {info}"), self.log_tail()))?;
        if self.generation > 1 && principal != self.principal {
            return Err(gateway_error(
                format!(
                    "restarted with another principal {principal} (was {})",
                    self.principal
                ),
                self.log_tail(),
            ));
        }
        self.listen = listen;
        self.admin = field("admin").and_then(|s| s.parse().ok());
        self.principal = principal;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the process dies at once, without closing anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit (graceful shutdown).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, E2eError> {
        let Some(mut child) = self.child.take() else {
            return Err(gateway_error("not running", ""));
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(gateway_error("kill -TERM failed", self.log_tail()));
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(gateway_error("did not exit after SIGTERM", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the gateway again on the same port with the same identity.
    pub fn restart(&mut self) -> Result<(), E2eError> {
        self.kill();
        self.spawn()
    }

    /// `GET path` on the admin server: the status code and the body (`None` if the server is
    /// not there).
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(self.admin?).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some((status, body.to_string()))
    }

    /// `/healthz`: status code and body.
    pub fn healthz(&self) -> Option<(u16, String)> {
        self.admin_get("/healthz")
    }

    /// The value of a metric (with its labels, e.g. `name{worker="relay"}`) from the admin
    /// server's `/metrics` (`None` if the server or the metric is not there).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics")?;
        body.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The child's resident set size in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid()?)
    }

    /// True while the child runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

/// The resident set size of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- gateway {} log (tail) ---\n{}",
                self.listen,
                self.log_tail()
            );
        }
        self.kill();
    }
}
