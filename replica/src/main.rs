//! `ic-ws-replica`: runs the embedded replica as a process serving the IC HTTP interface.
//!
//! ```text
//! ic-ws-replica --port 4943 --install chat=target/.../chat.wasm --install 'ticker=t.wasm:(record { period = 1 : nat })' --json
//! ```
//!
//! On a running replica (or any IC network whose management canister serves install_code):
//!
//! ```text
//! ic-ws-replica upgrade --url http://127.0.0.1:4943 lxzze-o7777-77777-aaaaa-cai=chat.wasm[.gz][:candid-args]
//! ```
//!
//! Startup output (stdout) is meant for scripts: with `--json` exactly one JSON line
//! `{"url":..,"root_key":..,"subnet_id":..,"canisters":{"name":"id",..}}`, otherwise
//! `key: value` lines. Canister `debug_print` output and logs go to stderr. Runs until
//! Ctrl-C or SIGTERM.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ic_ws_replica::{Replica, ReplicaConfig, ReplicaError};

#[derive(Parser, Debug)]
#[command(
    name = "ic-ws-replica",
    version,
    about = "Embedded single-subnet Internet Computer replica serving the IC HTTP interface",
    after_help = "Upgrade canisters of a running replica: ic-ws-replica upgrade --help"
)]
struct Args {
    /// Port to listen on (0 = any free port; the chosen URL is printed).
    #[arg(long, default_value_t = 4943, env = "IC_WS_REPLICA_PORT")]
    port: u16,
    /// Address to bind (loopback by default; the replica is a development tool).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Install a canister: NAME=path.wasm[.gz][:candid-arg-text], e.g. `chat=chat.wasm:("hi")`.
    /// Repeatable; canisters are created in order, so ids are stable for a given list.
    #[arg(long = "install", value_name = "NAME=WASM[:ARGS]")]
    install: Vec<String>,
    /// Seed for the root and node keys (same seed = same root key and subnet id).
    /// Without it every run has a fresh random root key.
    #[arg(long)]
    seed: Option<String>,
    /// Delay before each update executes, in ms (about 1000 is mainnet-like; 0 = fast).
    #[arg(long, default_value_t = 0)]
    round_delay_ms: u64,
    /// How long synchronous calls wait before answering 202 (agents then poll read_state).
    #[arg(long, default_value_t = 10_000)]
    sync_call_timeout_ms: u64,
    /// Interval of background rounds (timers, fresh /time), in ms.
    #[arg(long, default_value_t = 100)]
    tick_interval_ms: u64,
    /// Print the startup information as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

/// `ic-ws-replica upgrade`: install_code through the management canister over HTTP.
#[derive(Parser, Debug)]
#[command(
    name = "ic-ws-replica upgrade",
    about = "Upgrade (or reinstall) canisters of a running replica through its management canister"
)]
struct UpgradeArgs {
    /// The replica's URL.
    #[arg(long, default_value = "http://127.0.0.1:4943")]
    url: String,
    /// `upgrade` (pre_upgrade, stable memory kept, post_upgrade) or `reinstall` (state wiped).
    #[arg(long, default_value = "upgrade", value_parser = ["upgrade", "reinstall"])]
    mode: String,
    /// PEM file of an Ed25519 identity (`dfx identity export` / `icp identity export`);
    /// without it the anonymous principal, which controls the canisters of `--install`.
    #[arg(long)]
    identity_pem: Option<PathBuf>,
    /// CANISTER_ID=path.wasm[.gz][:candid-args] (repeatable).
    #[arg(required = true, value_name = "CANISTER_ID=WASM[:ARGS]")]
    targets: Vec<String>,
}

/// Gzips modules that are not gzipped yet (the 2 MiB ingress limit holds the whole request).
fn ingress_module(wasm: Vec<u8>) -> Result<Vec<u8>, ReplicaError> {
    use std::io::Write;
    if wasm.starts_with(&[0x1f, 0x8b]) {
        return Ok(wasm);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&wasm)?;
    Ok(gz.finish()?)
}

fn upgrade(args: UpgradeArgs) -> Result<(), ReplicaError> {
    use ic_management_canister_types::CanisterInstallMode;
    let config = |m: String| ReplicaError::Config(m);
    let mut jobs = Vec::new();
    for target in &args.targets {
        let spec = parse_install(target)?;
        let canister = candid::Principal::from_text(&spec.name).map_err(|e| {
            config(format!(
                "{target}: '{}' is not a canister id: {e}",
                spec.name
            ))
        })?;
        let arg = encode_candid_args(spec.arg_text.as_deref())?;
        let wasm = std::fs::read(&spec.wasm).map_err(|source| ReplicaError::ReadFile {
            path: spec.wasm.clone(),
            source,
        })?;
        jobs.push((canister, spec.wasm, ingress_module(wasm)?, arg));
    }
    let mut builder = ic_agent::Agent::builder().with_url(&args.url);
    if let Some(pem) = &args.identity_pem {
        let identity = ic_agent::identity::BasicIdentity::from_pem_file(pem)
            .map_err(|e| config(format!("identity {}: {e}", pem.display())))?;
        builder = builder.with_identity(identity);
    }
    let agent = builder
        .build()
        .map_err(|e| config(format!("agent for {}: {e}", args.url)))?;
    let mode = if args.mode == "reinstall" {
        CanisterInstallMode::Reinstall
    } else {
        CanisterInstallMode::Upgrade(None)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        agent
            .fetch_root_key()
            .await
            .map_err(|e| config(format!("{}: cannot fetch the root key: {e}", args.url)))?;
        let mgmt = ic_utils::interfaces::ManagementCanister::create(&agent);
        for (canister, path, wasm, arg) in jobs {
            mgmt.install_code(&canister, &wasm)
                .with_mode(mode)
                .with_raw_arg(arg)
                .call_and_wait()
                .await
                .map_err(|e| {
                    config(format!(
                        "{} {canister} ({}): {e}",
                        args.mode,
                        path.display()
                    ))
                })?;
            println!("{} {canister}: {}", args.mode, path.display());
        }
        Ok(())
    })
}

/// One `--install` specification.
#[derive(Debug, PartialEq)]
struct InstallSpec {
    name: String,
    wasm: PathBuf,
    arg_text: Option<String>,
}

fn parse_install(spec: &str) -> Result<InstallSpec, ReplicaError> {
    let (name, rest) = spec.split_once('=').ok_or_else(|| {
        ReplicaError::Config(format!(
            "--install {spec}: expected NAME=path.wasm[:candid-args]"
        ))
    })?;
    if name.is_empty() {
        return Err(ReplicaError::Config(format!(
            "--install {spec}: empty canister name"
        )));
    }
    // The candid text may itself contain ':' (type annotations), so split after the file
    // extension when there is one, else at the first ':'.
    let split_at = [".wasm.gz:", ".wasm:"]
        .iter()
        .find_map(|ext| rest.find(ext).map(|i| i + ext.len() - 1))
        .or_else(|| rest.find(':'));
    let (path, arg_text) = match split_at {
        Some(i) => (&rest[..i], Some(rest[i + 1..].to_string())),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(ReplicaError::Config(format!(
            "--install {spec}: empty wasm path"
        )));
    }
    Ok(InstallSpec {
        name: name.to_string(),
        wasm: PathBuf::from(path),
        arg_text: arg_text.filter(|t| !t.trim().is_empty()),
    })
}

fn encode_candid_args(text: Option<&str>) -> Result<Vec<u8>, ReplicaError> {
    let text = text.unwrap_or("()");
    let args = candid_parser::parse_idl_args(text)
        .map_err(|e| ReplicaError::Config(format!("invalid candid arguments {text}: {e}")))?;
    args.to_bytes()
        .map_err(|e| ReplicaError::Config(format!("cannot encode candid arguments {text}: {e}")))
}

fn run(args: Args) -> Result<(), ReplicaError> {
    let specs = args
        .install
        .iter()
        .map(|s| parse_install(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = ReplicaConfig {
        seed: args.seed.as_ref().map(|s| s.as_bytes().to_vec()),
        round_delay: Duration::from_millis(args.round_delay_ms),
        sync_call_timeout: Duration::from_millis(args.sync_call_timeout_ms),
        ..Default::default()
    };
    config.tick_interval =
        (args.tick_interval_ms > 0).then(|| Duration::from_millis(args.tick_interval_ms));
    let replica = Replica::new(config);

    let mut canisters = BTreeMap::new();
    let mut names = BTreeMap::new();
    for spec in &specs {
        let arg = encode_candid_args(spec.arg_text.as_deref())?;
        let id = replica.install_file(&spec.wasm, &arg).map_err(|e| {
            ReplicaError::Config(format!(
                "installing {} ({}): {e}",
                spec.name,
                spec.wasm.display()
            ))
        })?;
        canisters.insert(spec.name.clone(), id.to_text());
        names.insert(id, spec.name.clone());
    }

    let server = replica.serve(SocketAddr::new(args.host, args.port))?;
    let root_key = hex::encode(replica.root_key_der());
    if args.json {
        let line = serde_json::json!({
            "url": server.url(),
            "root_key": root_key,
            "subnet_id": replica.subnet_id().to_text(),
            "canisters": canisters,
        });
        println!("{line}");
    } else {
        println!("url: {}", server.url());
        println!("root_key: {root_key}");
        println!("subnet_id: {}", replica.subnet_id());
        for (name, id) in &canisters {
            println!("canister {name}: {id}");
        }
    }
    // Scripts read the startup block, then wait for the process: flush it now.
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut logs = tokio::time::interval(Duration::from_millis(200));
        let terminate = terminate_signal();
        tokio::pin!(terminate);
        loop {
            tokio::select! {
                _ = logs.tick() => print_canister_logs(&replica, &names),
                () = &mut terminate => break,
            }
        }
    });
    print_canister_logs(&replica, &names);
    tracing::info!("shutting down");
    server.shutdown();
    Ok(())
}

fn print_canister_logs(replica: &Replica, names: &BTreeMap<candid::Principal, String>) {
    for (canister, line) in replica.drain_logs() {
        let name = names
            .get(&canister)
            .cloned()
            .unwrap_or_else(|| canister.to_text());
        eprintln!("[{name}] {line}");
    }
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn terminate_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = if argv.get(1).is_some_and(|a| a == "upgrade") {
        argv.remove(1);
        upgrade(UpgradeArgs::parse_from(argv))
    } else {
        run(Args::parse_from(argv))
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ic-ws-replica: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_specs_split_path_and_candid_text() {
        let spec = parse_install("chat=out/chat.wasm").unwrap();
        assert_eq!(
            spec,
            InstallSpec {
                name: "chat".into(),
                wasm: "out/chat.wasm".into(),
                arg_text: None
            }
        );
        let spec = parse_install("t=a.wasm.gz:(record { period = 1 : nat })").unwrap();
        assert_eq!(spec.wasm, PathBuf::from("a.wasm.gz"));
        assert_eq!(
            spec.arg_text.as_deref(),
            Some("(record { period = 1 : nat })")
        );
        let spec = parse_install("x=canister:(\"hi\")").unwrap();
        assert_eq!(spec.wasm, PathBuf::from("canister"));
        assert!(parse_install("no-equals").is_err());
        assert!(parse_install("=a.wasm").is_err());
    }

    #[test]
    fn candid_text_is_encoded_and_garbage_refused() {
        let bytes = encode_candid_args(Some("(\"hi\", 5 : nat64)")).unwrap();
        let (s, n): (String, u64) = candid::decode_args(&bytes).unwrap();
        assert_eq!((s.as_str(), n), ("hi", 5));
        assert_eq!(
            encode_candid_args(None).unwrap(),
            candid::encode_args(()).unwrap()
        );
        assert!(encode_candid_args(Some("(unclosed")).is_err());
    }
}
