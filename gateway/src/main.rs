//! The ic-ws-gateway binary: parse flags, set up logging, run until SIGTERM/Ctrl-C.

use clap::Parser;
use ic_ws_gateway::Config;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!(
            "ic-ws-gateway: invalid --log filter {:?} ({e}); using \"info\"",
            config.log
        );
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ic-ws-gateway: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ic_ws_gateway::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ic-ws-gateway: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
