//! Configuration: every option is a CLI flag with an environment variable
//! (`IC_WS_GATEWAY_<NAME>`) and a default shown in `--help`. [`Config::validate`] turns
//! inconsistent values into a clear [`GatewayError::Config`] instead of a panic later.

use crate::error::{GatewayError, Result};
use candid::Principal;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default of `--max-connections` (lowered to the open-files limit when that is smaller).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Hosts of the IC mainnet API: the root key is built in, never fetched from them.
const MAINNET_HOSTS: [&str; 4] = ["icp-api.io", "ic0.app", "icp0.io", "boundary.ic0.app"];

/// ic-ws-gateway: holds clients' WebSockets, relays their signed messages to canisters (update
/// calls, batched) and delivers each client its own certified messages (polling queries).
#[derive(Parser, Debug, Clone)]
#[command(name = "ic-ws-gateway", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// Address for client WebSockets (port 0 picks a free port; see --ready-file).
    #[arg(long, env = "IC_WS_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP server (/metrics, /healthz), or "off".
    #[arg(
        long,
        env = "IC_WS_GATEWAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: String,

    /// When ready, write a JSON line {"listen","admin","principal"} to this file (atomically).
    #[arg(long, env = "IC_WS_GATEWAY_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// URL of the IC API (a boundary node, the embedded replica, or dfx's local network).
    #[arg(
        long,
        env = "IC_WS_GATEWAY_NETWORK",
        default_value = "https://icp-api.io"
    )]
    pub network: String,

    /// Fetch the root key from the network (local networks only; refused for mainnet URLs).
    #[arg(long, env = "IC_WS_GATEWAY_FETCH_ROOT_KEY", default_value_t = false)]
    pub fetch_root_key: bool,

    /// Check node signatures on query replies (ic-agent's default). Clients verify every
    /// delivered message anyway; disable only for networks that do not sign queries.
    #[arg(long, env = "IC_WS_GATEWAY_VERIFY_QUERY_SIGNATURES", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub verify_query_signatures: bool,

    /// Ed25519 PKCS#8 PEM key of the gateway's identity; created (mode 0600) if missing.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_IDENTITY_FILE",
        default_value = "ic-ws-gateway-identity.pem"
    )]
    pub identity_file: PathBuf,

    /// Canister ids this gateway serves (repeat or comma-separate).
    #[arg(
        long = "canister",
        env = "IC_WS_GATEWAY_CANISTERS",
        value_delimiter = ','
    )]
    pub canisters: Vec<String>,

    /// Serve any canister a client names (instead of the --canister allowlist).
    #[arg(
        long,
        env = "IC_WS_GATEWAY_ALLOW_ANY_CANISTER",
        default_value_t = false
    )]
    pub allow_any_canister: bool,

    /// Maximum number of distinct canisters served at once (bounds --allow-any-canister).
    #[arg(long, env = "IC_WS_GATEWAY_MAX_CANISTERS", default_value_t = 1000)]
    pub max_canisters: usize,

    /// TLS certificate chain (PEM). With --tls-key, clients connect with wss://.
    #[arg(long, env = "IC_WS_GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "IC_WS_GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Maximum simultaneous client connections, counted from accept (handshakes and refusals
    /// in progress included); more are refused with 4006. The default is lowered to the
    /// open-files limit minus 64 when that is smaller (the gateway first raises its soft limit
    /// to the hard limit).
    #[arg(long, env = "IC_WS_GATEWAY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Maximum simultaneous connections served per IP address (0 = unlimited; more: 4006).
    #[arg(
        long,
        env = "IC_WS_GATEWAY_MAX_CONNECTIONS_PER_IP",
        default_value_t = 256
    )]
    pub max_connections_per_ip: usize,

    /// Maximum simultaneous connections served per IPv6 /64 network (0 = unlimited).
    #[arg(
        long = "max-connections-per-ipv6-64",
        env = "IC_WS_GATEWAY_MAX_CONNECTIONS_PER_IPV6_64",
        default_value_t = 1024
    )]
    pub max_connections_per_ipv6_64: usize,

    /// Refused connections answered at once with a handshake and a 4006 close (they count
    /// toward --max-connections, and may exceed it by this much); beyond, a refused
    /// connection is closed without a handshake.
    #[arg(long, env = "IC_WS_GATEWAY_MAX_REFUSING", default_value_t = 256)]
    pub max_refusing: usize,

    /// New connections per second allowed from one IP address, or IPv6 /64 (0 = unlimited).
    #[arg(long, env = "IC_WS_GATEWAY_IP_CONNECT_RATE", default_value_t = 20.0)]
    pub ip_connect_rate: f64,

    /// Burst of new connections allowed from one IP address (IPv6 /64) above the rate.
    #[arg(long, env = "IC_WS_GATEWAY_IP_CONNECT_BURST", default_value_t = 40.0)]
    pub ip_connect_burst: f64,

    /// WebSocket pings (and unsolicited pongs) per second allowed from one connection; a
    /// connection beyond --ping-burst above this rate is closed with 1008.
    #[arg(long, env = "IC_WS_GATEWAY_PING_RATE", default_value_t = 1.0)]
    pub ping_rate: f64,

    /// Burst of pings allowed from one connection above --ping-rate.
    #[arg(long, env = "IC_WS_GATEWAY_PING_BURST", default_value_t = 16.0)]
    pub ping_burst: f64,

    /// Time allowed for the TLS and WebSocket handshakes together, in milliseconds.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub handshake_timeout_ms: u64,

    /// Close a connection (4002) after this long without a protocol frame from the client
    /// (pings and pongs do not count), in ms.
    #[arg(long, env = "IC_WS_GATEWAY_IDLE_TIMEOUT_MS", default_value_t = 120_000)]
    pub idle_timeout_ms: u64,

    /// Largest WebSocket message accepted from a client, in bytes (bigger: close 1009).
    #[arg(long, env = "IC_WS_GATEWAY_MAX_MESSAGE_SIZE", default_value_t = 128 * 1024)]
    pub max_message_size: usize,

    /// Largest WebSocket frame accepted from a client, in bytes (bigger: close 1009).
    #[arg(long, env = "IC_WS_GATEWAY_MAX_FRAME_SIZE", default_value_t = 128 * 1024)]
    pub max_frame_size: usize,

    /// Largest WebSocket frame (and message) accepted from a client before its session is open,
    /// in bytes: the `Open` frame with its app arguments. Bigger: close 1009. Keeps connections
    /// that never open a session from holding `--max-frame-size` of half-sent frame each.
    /// (`--max-frame-size` applies as well when it is smaller.)
    #[arg(long, env = "IC_WS_GATEWAY_MAX_OPEN_FRAME_SIZE", default_value_t = 16 * 1024)]
    pub max_open_frame_size: usize,

    /// A client message (all of its frames) must arrive within this many ms of its first byte;
    /// else the connection is closed (1008). Half-sent frames hold memory (their announced
    /// length is reserved); this bounds how long.
    #[arg(long, env = "IC_WS_GATEWAY_FRAME_TIMEOUT_MS", default_value_t = 10_000)]
    pub frame_timeout_ms: u64,

    /// Initial read buffer per connection, in bytes (grows as needed for large frames).
    #[arg(long, env = "IC_WS_GATEWAY_READ_BUFFER_SIZE", default_value_t = 1024)]
    pub read_buffer_size: usize,

    /// Frames queued for one client before it is closed as too slow (4001).
    #[arg(long, env = "IC_WS_GATEWAY_SEND_BUFFER_FRAMES", default_value_t = 256)]
    pub send_buffer_frames: usize,

    /// Bytes queued for one client before it is closed as too slow (4001). An empty buffer
    /// always takes one frame (up to a poll reply, about 1.5 MiB).
    #[arg(long, env = "IC_WS_GATEWAY_SEND_BUFFER_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub send_buffer_bytes: usize,

    /// A single write to a client blocked longer than this closes it as too slow (4001), in ms.
    #[arg(long, env = "IC_WS_GATEWAY_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// How long a connection whose open the canister refused with a certified outcome
    /// (`OpenRejected`, or `Closed` for the resume of a closed session) waits for that
    /// certified message before it is closed 4003 anyway, in ms.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_OPEN_OUTCOME_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub open_outcome_timeout_ms: u64,

    /// Messages of one client waiting for the canister before the gateway stops reading
    /// from that client (backpressure on that client only).
    #[arg(
        long,
        env = "IC_WS_GATEWAY_MAX_INFLIGHT_PER_CLIENT",
        default_value_t = 256
    )]
    pub max_inflight_per_client: usize,

    /// Bytes of one client's messages waiting for the canister (queued or in flight) before
    /// the gateway stops reading from that client (backpressure on that client only). At
    /// least --max-message-size.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_MAX_INFLIGHT_BYTES_PER_CLIENT",
        default_value_t = 512 * 1024
    )]
    pub max_inflight_bytes_per_client: usize,

    /// Messages of one client the canister may refuse (`Rejected`, `DecodeError`,
    /// `TooLarge`), net of the ones it accepts, before the client is closed (1008). Past half
    /// of it the client is throttled to one message in flight.
    #[arg(long, env = "IC_WS_GATEWAY_REFUSAL_BUDGET", default_value_t = 64)]
    pub refusal_budget: u32,

    /// Gateway-wide memory budget for what peers make it hold, in bytes: decoded client
    /// frames, relay queues and calls in flight, send buffers, orphan messages. New
    /// connections and opens are refused (4006) past 3/4 of it; a message that does not fit
    /// closes its sender (4006).
    #[arg(
        long,
        env = "IC_WS_GATEWAY_MEMORY_BUDGET_BYTES",
        default_value_t = 512 * 1024 * 1024
    )]
    pub memory_budget_bytes: usize,

    /// Minimum time between two relay batches to one canister, in ms (collects messages).
    #[arg(long, env = "IC_WS_GATEWAY_BATCH_INTERVAL_MS", default_value_t = 100)]
    pub batch_interval_ms: u64,

    /// Most client messages in one `ws_message` call.
    #[arg(long, env = "IC_WS_GATEWAY_BATCH_MAX_MESSAGES", default_value_t = 500)]
    pub batch_max_messages: usize,

    /// Most payload bytes in one `ws_message` call (the IC's ingress limit is 2 MiB).
    #[arg(long, env = "IC_WS_GATEWAY_BATCH_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub batch_max_bytes: usize,

    /// Items (opens, messages, closes) queued per canister before senders wait.
    #[arg(long, env = "IC_WS_GATEWAY_RELAY_QUEUE", default_value_t = 10_000)]
    pub relay_queue: usize,

    /// Attempts of a call that fails with a transient error before giving up.
    #[arg(long, env = "IC_WS_GATEWAY_RETRY_ATTEMPTS", default_value_t = 5)]
    pub retry_attempts: u32,

    /// First retry delay in ms (doubles on each attempt).
    #[arg(long, env = "IC_WS_GATEWAY_RETRY_BACKOFF_MS", default_value_t = 100)]
    pub retry_backoff_ms: u64,

    /// Shortest time between a poll reply and the next poll brought forward by a relayed
    /// update or a canister's hint, in ms.
    #[arg(long, env = "IC_WS_GATEWAY_POLL_MIN_INTERVAL_MS", default_value_t = 20)]
    pub poll_min_interval_ms: u64,

    /// Poll interval while there was traffic (messages polled or an update relayed) within
    /// `--poll-active-window-ms`, in ms (kept within the min and max intervals).
    #[arg(
        long,
        env = "IC_WS_GATEWAY_POLL_ACTIVE_INTERVAL_MS",
        default_value_t = 100
    )]
    pub poll_active_interval_ms: u64,

    /// How long after the last traffic polling stays at the active interval, in ms.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_POLL_ACTIVE_WINDOW_MS",
        default_value_t = 60_000
    )]
    pub poll_active_window_ms: u64,

    /// Polls per second per canister the gateway starts at most on average (bursts of 5;
    /// the immediate follow-ups of a reply flagged `more` are not counted).
    #[arg(long, env = "IC_WS_GATEWAY_POLL_MAX_RATE", default_value_t = 10)]
    pub poll_max_rate: u32,

    /// Random spread of each poll interval, in percent (0-50), so gateways do not poll in
    /// lockstep.
    #[arg(long, env = "IC_WS_GATEWAY_POLL_JITTER_PCT", default_value_t = 10)]
    pub poll_jitter_pct: u8,

    /// Learn the canister's periodic traffic from its messages' timestamps and align the
    /// polls so one comes just after each predicted burst, at the same query rate (`false`
    /// turns it off).
    #[arg(long, env = "IC_WS_GATEWAY_POLL_RHYTHM", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub poll_rhythm: bool,

    /// Poll interval when idle (reached by doubling from the active interval once the active
    /// window has passed; also the latest a canister's hint can put the next poll), in ms.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_POLL_MAX_INTERVAL_MS",
        default_value_t = 500
    )]
    pub poll_max_interval_ms: u64,

    /// Cap on messages per poll reply (the canister applies its own lower cap).
    #[arg(long, env = "IC_WS_GATEWAY_POLL_MAX_MESSAGES")]
    pub poll_max_messages: Option<u32>,

    /// Cap on bytes per poll reply (the canister applies its own lower cap).
    #[arg(long, env = "IC_WS_GATEWAY_POLL_MAX_BYTES")]
    pub poll_max_bytes: Option<u32>,

    /// Clients per poll reply asked for (`max_clients`): the gateway writes one frame per
    /// client of a page, so this bounds the delay a page adds for its last client. A backlog
    /// that outlasts the active poll interval doubles it per reply up to
    /// `--poll-page-clients-max`; 0 asks for no cap.
    #[arg(long, env = "IC_WS_GATEWAY_POLL_PAGE_CLIENTS", default_value_t = 64)]
    pub poll_page_clients: u32,

    /// The most clients per poll reply a lasting backlog makes the gateway ask for.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_POLL_PAGE_CLIENTS_MAX",
        default_value_t = 4096
    )]
    pub poll_page_clients_max: u32,

    /// Stop polling a canister this long after its last client left, in ms.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_POLL_IDLE_STOP_MS",
        default_value_t = 30_000
    )]
    pub poll_idle_stop_ms: u64,

    /// Messages for a client not (yet) attached are kept this long, in ms (covers the race
    /// between an open's reply and the first poll that carries its `Opened` message).
    #[arg(long, env = "IC_WS_GATEWAY_ORPHAN_TTL_MS", default_value_t = 30_000)]
    pub orphan_ttl_ms: u64,

    /// Bytes of messages kept for clients not (yet) attached, per canister (the oldest are
    /// dropped first; at most 20,000 messages).
    #[arg(long, env = "IC_WS_GATEWAY_ORPHAN_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub orphan_max_bytes: usize,

    /// Close code sent to clients on SIGTERM/Ctrl-C: 1012 (service restart), 1001 (going
    /// away) or 1000 (normal closure); clients resume in every case.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_SHUTDOWN_CLOSE_CODE",
        default_value_t = 1012
    )]
    pub shutdown_close_code: u16,

    /// Time allowed on shutdown to close clients and flush pending batches, in ms.
    #[arg(
        long,
        env = "IC_WS_GATEWAY_SHUTDOWN_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub shutdown_timeout_ms: u64,

    /// Log filter (tracing EnvFilter syntax, e.g. "info,ic_ws_gateway=debug").
    #[arg(long, env = "IC_WS_GATEWAY_LOG", default_value = "info")]
    pub log: String,

    /// Test hooks (hidden; tests only): files in this directory make workers fail on demand
    /// (see `crate::testhook`).
    #[arg(long, hide = true)]
    pub test_hook_dir: Option<PathBuf>,
}

/// Which canisters the gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanisterPolicy {
    /// Only these.
    Allow(Vec<Principal>),
    /// Any canister a client names.
    Any,
}

impl CanisterPolicy {
    /// Whether `canister` may be served.
    pub fn allows(&self, canister: &Principal) -> bool {
        match self {
            CanisterPolicy::Allow(list) => list.contains(canister),
            CanisterPolicy::Any => true,
        }
    }
}

impl Config {
    /// Parses the command line (and environment) like the binary does.
    pub fn from_args<I, T>(args: I) -> Result<Config>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let config =
            Config::try_parse_from(args).map_err(|e| GatewayError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values and their combinations.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(GatewayError::Config(m));
        self.canister_policy()?;
        self.admin_addr()?;
        let url = self.network.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return err(format!(
                "--network {url:?} must be an http:// or https:// URL"
            ));
        }
        if self.fetch_root_key && is_mainnet_url(url) {
            return err(format!(
                "--fetch-root-key with the mainnet URL {url}: the mainnet root key is built in \
                 and must never be fetched"
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return err("--tls-cert and --tls-key must be given together".into());
        }
        let positive = [
            ("--max-connections", self.max_connections as u64),
            ("--max-canisters", self.max_canisters as u64),
            ("--handshake-timeout-ms", self.handshake_timeout_ms),
            ("--idle-timeout-ms", self.idle_timeout_ms),
            ("--max-message-size", self.max_message_size as u64),
            ("--max-frame-size", self.max_frame_size as u64),
            ("--max-open-frame-size", self.max_open_frame_size as u64),
            ("--frame-timeout-ms", self.frame_timeout_ms),
            ("--read-buffer-size", self.read_buffer_size as u64),
            ("--send-buffer-frames", self.send_buffer_frames as u64),
            ("--send-buffer-bytes", self.send_buffer_bytes as u64),
            ("--write-timeout-ms", self.write_timeout_ms),
            ("--open-outcome-timeout-ms", self.open_outcome_timeout_ms),
            (
                "--max-inflight-per-client",
                self.max_inflight_per_client as u64,
            ),
            (
                "--max-inflight-bytes-per-client",
                self.max_inflight_bytes_per_client as u64,
            ),
            ("--refusal-budget", u64::from(self.refusal_budget)),
            ("--memory-budget-bytes", self.memory_budget_bytes as u64),
            ("--orphan-max-bytes", self.orphan_max_bytes as u64),
            ("--batch-max-messages", self.batch_max_messages as u64),
            ("--batch-max-bytes", self.batch_max_bytes as u64),
            ("--relay-queue", self.relay_queue as u64),
            ("--retry-attempts", u64::from(self.retry_attempts)),
            ("--poll-min-interval-ms", self.poll_min_interval_ms),
            ("--poll-max-rate", u64::from(self.poll_max_rate)),
            ("--shutdown-timeout-ms", self.shutdown_timeout_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return err(format!("{name} must be greater than 0"));
            }
        }
        if self.poll_max_interval_ms < self.poll_min_interval_ms {
            return err(format!(
                "--poll-max-interval-ms ({}) is below --poll-min-interval-ms ({})",
                self.poll_max_interval_ms, self.poll_min_interval_ms
            ));
        }
        if self.poll_page_clients_max < self.poll_page_clients {
            return err(format!(
                "--poll-page-clients-max ({}) is below --poll-page-clients ({})",
                self.poll_page_clients_max, self.poll_page_clients
            ));
        }
        if self.poll_jitter_pct > 50 {
            return err(format!(
                "--poll-jitter-pct ({}) must be at most 50",
                self.poll_jitter_pct
            ));
        }
        if self.max_frame_size > self.max_message_size {
            return err("--max-frame-size must not exceed --max-message-size".into());
        }
        if self.max_inflight_bytes_per_client < self.max_message_size {
            return err(format!(
                "--max-inflight-bytes-per-client ({}) is below --max-message-size ({}): a \
                 client could never send its largest message",
                self.max_inflight_bytes_per_client, self.max_message_size
            ));
        }
        // New work is refused past 3/4 of the budget: that much must hold the canister's
        // orphans and one client at its every bound (a message held, its relay share, a full
        // send buffer).
        let one_client = self
            .max_message_size
            .saturating_add(self.max_inflight_bytes_per_client)
            .saturating_add(self.send_buffer_bytes);
        let needed = self.orphan_max_bytes.saturating_add(one_client);
        if (self.memory_budget_bytes / 4).saturating_mul(3) < needed {
            return err(format!(
                "--memory-budget-bytes ({}) is too small: 3/4 of it must cover \
                 --orphan-max-bytes ({}) plus one client's bounds (--max-message-size + \
                 --max-inflight-bytes-per-client + --send-buffer-bytes = {one_client}), \
                 i.e. at least {} bytes",
                self.memory_budget_bytes,
                self.orphan_max_bytes,
                needed.saturating_mul(4).div_ceil(3)
            ));
        }
        if self.batch_max_bytes > 2 * 1024 * 1024 {
            return err("--batch-max-bytes must be at most 2 MiB (the IC ingress limit)".into());
        }
        if !(self.ip_connect_rate >= 0.0 && self.ip_connect_rate.is_finite()) {
            return err("--ip-connect-rate must be a finite number >= 0".into());
        }
        if !(self.ip_connect_burst >= 1.0 && self.ip_connect_burst.is_finite()) {
            return err("--ip-connect-burst must be a finite number >= 1".into());
        }
        if !(self.ping_rate > 0.0 && self.ping_rate.is_finite()) {
            return err("--ping-rate must be a finite number > 0".into());
        }
        if !(self.ping_burst >= 1.0 && self.ping_burst.is_finite()) {
            return err("--ping-burst must be a finite number >= 1".into());
        }
        if self.max_connections_per_ip != 0
            && self.max_connections_per_ipv6_64 != 0
            && self.max_connections_per_ipv6_64 < self.max_connections_per_ip
        {
            return err(format!(
                "--max-connections-per-ipv6-64 ({}) is below --max-connections-per-ip ({}): a \
                 /64 holds at least one address",
                self.max_connections_per_ipv6_64, self.max_connections_per_ip
            ));
        }
        if ![1000, 1001, 1012].contains(&self.shutdown_close_code) {
            return err("--shutdown-close-code must be 1000, 1001 or 1012".into());
        }
        Ok(())
    }

    /// The allowlist (or "any").
    pub fn canister_policy(&self) -> Result<CanisterPolicy> {
        if self.allow_any_canister {
            return Ok(CanisterPolicy::Any);
        }
        let ids = self
            .canisters
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                Principal::from_text(s).map_err(|e| {
                    GatewayError::Config(format!("--canister {s:?} is not a principal: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if ids.is_empty() {
            return Err(GatewayError::Config(
                "no canister to serve: give --canister <id> (repeatable) or --allow-any-canister"
                    .into(),
            ));
        }
        Ok(CanisterPolicy::Allow(ids))
    }

    /// The admin address, or `None` when disabled with "off".
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>> {
        let v = self.admin_listen.trim();
        if v.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        v.parse().map(Some).map_err(|e| {
            GatewayError::Config(format!(
                "--admin-listen {v:?} is not an address or \"off\": {e}"
            ))
        })
    }

    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// Per-source connection limits.
    pub fn source_limits(&self) -> crate::ratelimit::SourceLimits {
        crate::ratelimit::SourceLimits {
            per_address: self.max_connections_per_ip,
            per_v6_net: self.max_connections_per_ipv6_64,
        }
    }
    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// Write timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    /// How long a refused open waits for its certified outcome.
    pub fn open_outcome_timeout(&self) -> Duration {
        Duration::from_millis(self.open_outcome_timeout_ms)
    }
    /// Batch interval.
    pub fn batch_interval(&self) -> Duration {
        Duration::from_millis(self.batch_interval_ms)
    }
    /// First retry backoff.
    pub fn retry_backoff(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_ms)
    }
    /// Fastest poll interval.
    /// `--frame-timeout-ms`.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_millis(self.frame_timeout_ms)
    }

    /// `--poll-min-interval-ms`.
    pub fn poll_min_interval(&self) -> Duration {
        Duration::from_millis(self.poll_min_interval_ms)
    }
    /// Slowest poll interval.
    pub fn poll_max_interval(&self) -> Duration {
        Duration::from_millis(self.poll_max_interval_ms)
    }
    /// The polling policy's settings.
    pub fn poll_schedule(&self) -> crate::schedule::Settings {
        crate::schedule::Settings {
            min: self.poll_min_interval(),
            active: Duration::from_millis(self.poll_active_interval_ms)
                .min(self.poll_max_interval())
                .max(self.poll_min_interval()),
            max: self.poll_max_interval(),
            active_window: Duration::from_millis(self.poll_active_window_ms),
            max_rate: self.poll_max_rate,
            jitter_pct: self.poll_jitter_pct,
        }
    }
    /// The page cap's settings: it grows when a backlog outlasts the active interval.
    pub fn poll_page_cap(&self) -> crate::pagecap::Settings {
        crate::pagecap::Settings {
            base: self.poll_page_clients,
            max: self.poll_page_clients_max,
            grow_after: self.poll_schedule().active,
        }
    }
    /// The rhythm detector's settings, if it is on: bursts are messages less than
    /// `--poll-min-interval-ms` apart; periods from two active intervals to the active window
    /// are predicted.
    pub fn poll_rhythm(&self) -> Option<crate::rhythm::Settings> {
        let schedule = self.poll_schedule();
        self.poll_rhythm.then(|| crate::rhythm::Settings {
            gap: schedule.min,
            min_period: schedule.active.saturating_mul(2),
            max_period: schedule
                .active_window
                .max(schedule.active.saturating_mul(2)),
        })
    }
    /// Poller stop delay.
    pub fn poll_idle_stop(&self) -> Duration {
        Duration::from_millis(self.poll_idle_stop_ms)
    }
    /// Orphan retention.
    pub fn orphan_ttl(&self) -> Duration {
        Duration::from_millis(self.orphan_ttl_ms)
    }
    /// Shutdown budget.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// Whether `url` points at the IC mainnet API.
fn is_mainnet_url(url: &str) -> bool {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    MAINNET_HOSTS
        .iter()
        .any(|m| host == *m || host.ends_with(&format!(".{m}")))
}

/// Whether `url` names this machine (`localhost`, `*.localhost`, 127.0.0.0/8, `[::1]`,
/// 0.0.0.0): where a local replica (dfx, PocketIC, icp-cli, ic-ws-replica) runs, with a root
/// key of its own.
pub fn is_local_url(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    }
    .to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "0.0.0.0"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_urls_are_told_apart() {
        for local in [
            "http://127.0.0.1:4943",
            "http://localhost:8080/",
            "http://LOCALHOST",
            "http://[::1]:4943",
            "http://app.localhost:4943",
            "http://127.1.2.3",
            "http://0.0.0.0:4943",
        ] {
            assert!(is_local_url(local), "{local}");
        }
        for remote in [
            "https://icp-api.io",
            "http://10.0.0.1:4943",
            "https://localhost.example.com",
            "http://[2001:db8::1]:80",
        ] {
            assert!(!is_local_url(remote), "{remote}");
        }
    }

    fn parse(extra: &[&str]) -> Result<Config> {
        let mut args = vec!["ic-ws-gateway", "--canister", "aaaaa-aa"];
        args.extend_from_slice(extra);
        Config::from_args(args)
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.canister_policy().unwrap(),
            CanisterPolicy::Allow(vec![Principal::management_canister()])
        );
        assert_eq!(c.network, "https://icp-api.io");
        assert!(!c.fetch_root_key);
    }

    #[test]
    fn config_errors_are_messages_not_panics() {
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "--poll-min-interval-ms",
                    "100",
                    "--poll-max-interval-ms",
                    "10",
                ],
                "poll-max-interval",
            ),
            (&["--poll-max-rate", "0"], "--poll-max-rate"),
            (
                &[
                    "--poll-page-clients",
                    "100",
                    "--poll-page-clients-max",
                    "50",
                ],
                "below --poll-page-clients",
            ),
            (&["--poll-jitter-pct", "51"], "--poll-jitter-pct"),
            (&["--tls-cert", "c.pem"], "--tls-key"),
            (&["--fetch-root-key"], "mainnet"),
            (&["--network", "ftp://x"], "http"),
            (&["--admin-listen", "nowhere"], "admin-listen"),
            (&["--batch-max-bytes", "5000000"], "2 MiB"),
            (&["--canister", "not a principal"], "not a principal"),
            (&["--max-connections", "0"], "max-connections"),
            (&["--ping-rate", "0"], "--ping-rate"),
            (&["--ping-burst", "0.5"], "--ping-burst"),
            (&["--ping-rate", "inf"], "--ping-rate"),
            (
                &[
                    "--max-connections-per-ip",
                    "10",
                    "--max-connections-per-ipv6-64",
                    "5",
                ],
                "ipv6-64",
            ),
            (
                &["--memory-budget-bytes", "1000000"],
                "--memory-budget-bytes",
            ),
            (
                &["--max-inflight-bytes-per-client", "1000"],
                "below --max-message-size",
            ),
            (&["--refusal-budget", "0"], "--refusal-budget"),
            (&["--listen", "banana"], "banana"),
        ];
        for (args, needle) in cases {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
        let none = Config::from_args(["ic-ws-gateway"])
            .unwrap_err()
            .to_string();
        assert!(none.contains("--allow-any-canister"), "{none}");
    }

    #[test]
    fn local_network_may_fetch_root_key_and_any_canister_is_explicit() {
        let c = Config::from_args([
            "ic-ws-gateway",
            "--network",
            "http://127.0.0.1:4943",
            "--fetch-root-key",
            "--allow-any-canister",
            "--admin-listen",
            "off",
        ])
        .unwrap();
        assert_eq!(c.canister_policy().unwrap(), CanisterPolicy::Any);
        assert_eq!(c.admin_addr().unwrap(), None);
        assert!(is_mainnet_url("https://icp0.io/api"));
        assert!(is_mainnet_url("https://xyz.ic0.app"));
        assert!(!is_mainnet_url("http://localhost:4943"));
    }
}
