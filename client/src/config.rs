//! Client settings and their defaults.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use candid::Principal;
use ic_ws_protocol::verify::{DEFAULT_MAX_CERTIFICATE_AGE_NS, MAINNET_ROOT_KEY_DER};

/// A source of "now" in nanoseconds since the Unix epoch (for certificate age and open
/// timestamps). Replaceable so tests can move a client's clock.
pub type ClockFn = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`ClockFn`].
pub fn system_clock() -> ClockFn {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// Factor applied after each failed attempt.
    pub multiplier: f64,
    /// Give up after this many consecutive failed attempts (`None`: never give up).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based), with up to 25% random jitter so that
    /// many clients of a restarted gateway do not reconnect in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = self.initial.as_secs_f64() * exp;
        let capped = base.min(self.max.as_secs_f64());
        let jitter = 1.0 + rand::random::<f64>() * 0.25;
        Duration::from_secs_f64((capped * jitter).min(self.max.as_secs_f64()))
    }
}

pub use ic_ws_protocol::client::OnSessionLost;

/// Settings of a [`crate::Client`].
#[derive(Clone)]
pub struct ClientConfig {
    /// Gateway WebSocket URLs (`ws://` or, with feature `tls`, `wss://`). The client starts
    /// with the first and moves to the next one after each failed connection (also after
    /// an uncertified refusal: another gateway may not lie).
    pub gateway_urls: Vec<String>,
    /// The canister to talk to.
    pub canister_id: Principal,
    /// The IC root key (DER). Default: the mainnet key.
    pub root_key_der: Vec<u8>,
    /// Maximum accepted age of a certificate.
    pub max_certificate_age: Duration,
    /// Application open arguments (candid) handed to the canister's `on_open`.
    pub open_args: Vec<u8>,
    /// Time allowed for TCP + WebSocket handshake.
    pub connect_timeout: Duration,
    /// Time allowed from connecting until the certified `Opened` (or `OpenRejected`, or the
    /// `Closed` after a resume's `Err(Closed)`) arrives; then the connection counts as failed.
    pub open_timeout: Duration,
    /// A signed `KeepAlive` is sent when nothing was sent for this long.
    pub keepalive_interval: Duration,
    /// A signed `KeepAlive` is sent as soon as more than this many received messages are
    /// unacknowledged.
    pub ack_threshold: u64,
    /// Reconnection policy.
    pub backoff: Backoff,
    /// Policy when the session is given up ([`crate::Event::SessionLost`]).
    pub on_session_lost: OnSessionLost,
    /// The canister's clock-skew window for opens (default 5 min): part of the own-clock
    /// proof that a session whose resumes every gateway refuses has expired.
    pub clock_skew: Duration,
    /// Own messages kept for re-sending until the canister certifies it received them.
    pub resend_buffer: usize,
    /// Events buffered for the application before the client stops reading the socket.
    pub event_buffer: usize,
    /// Largest WebSocket message accepted from the gateway.
    pub max_frame_bytes: usize,
    /// The clock (default: the system clock).
    pub clock: ClockFn,
    /// Issue 10: the IC identity whose principal the canister binds to each session (any
    /// ic-agent `Identity` that can sign delegations: Ed25519, secp256k1, P-256, a
    /// `DelegatedIdentity` from Internet Identity, ...). `None` (the default): anonymous.
    pub identity: Option<Arc<dyn ic_agent::Identity>>,
    /// Issue 10: how long the delegation to each session key is valid (the canister closes
    /// the session with `IdentityExpired` then; the identity's own chain may end earlier).
    /// Default 8 hours.
    pub identity_ttl: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("gateway_urls", &self.gateway_urls)
            .field("canister_id", &self.canister_id.to_text())
            .field("max_certificate_age", &self.max_certificate_age)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Defaults for one gateway URL and a canister on mainnet.
    pub fn new(gateway_url: impl Into<String>, canister_id: Principal) -> Self {
        ClientConfig {
            gateway_urls: vec![gateway_url.into()],
            canister_id,
            root_key_der: MAINNET_ROOT_KEY_DER.to_vec(),
            max_certificate_age: Duration::from_nanos(DEFAULT_MAX_CERTIFICATE_AGE_NS),
            open_args: candid::encode_args(()).unwrap_or_default(),
            connect_timeout: Duration::from_secs(10),
            open_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            ack_threshold: 64,
            backoff: Backoff::default(),
            on_session_lost: OnSessionLost::NewSession,
            clock_skew: Duration::from_nanos(ic_ws_protocol::client::DEFAULT_CLOCK_SKEW_NS),
            resend_buffer: 1024,
            event_buffer: 1024,
            max_frame_bytes: 16 * 1024 * 1024,
            clock: system_clock(),
            identity: None,
            identity_ttl: Duration::from_secs(8 * 3600),
        }
    }

    /// Issue 10: proves `identity`'s principal to the canister in every new session.
    pub fn with_identity(mut self, identity: Arc<dyn ic_agent::Identity>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The proof maker the session state machine calls once per session key.
    pub(crate) fn prover(&self) -> Option<ic_ws_protocol::client::Prover> {
        let identity = self.identity.clone()?;
        let canister = self.canister_id;
        let clock = self.clock.clone();
        let ttl = u64::try_from(self.identity_ttl.as_nanos()).unwrap_or(u64::MAX);
        Some(Box::new(move |session_key: &[u8; 32]| {
            let expiration = clock().saturating_add(ttl);
            identity_proof(identity.as_ref(), session_key, canister, expiration).unwrap_or_else(
                |e| {
                    // An identity that cannot sign delegations: the open carries an empty
                    // chain, which the canister refuses with a typed `Identity` error.
                    tracing::warn!(error = %e, "the identity cannot sign a delegation");
                    ic_ws_protocol::identity::IdentityProof {
                        sender_pubkey: identity.public_key().unwrap_or_default(),
                        delegations: Vec::new(),
                    }
                },
            )
        }))
    }

    /// Uses another IC root key (DER), e.g. a local replica's.
    pub fn with_root_key(mut self, root_key_der: impl Into<Vec<u8>>) -> Self {
        self.root_key_der = root_key_der.into();
        self
    }

    /// [`Self::with_root_key`] from hex, as local networks print their key (`dfx ping`,
    /// `icp network status`, the replica's `--json` line; whitespace and a `0x` prefix are
    /// ignored). Not hex, or not a DER-encoded BLS key (e.g. the raw 96 bytes), is a
    /// configuration error here instead of a failed certificate later.
    pub fn with_root_key_hex(self, hex: &str) -> Result<Self, crate::ClientError> {
        use crate::ClientError::Config;
        let digits: Vec<u8> = hex
            .trim()
            .trim_start_matches("0x")
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let pairs = digits.chunks_exact(2);
        if !pairs.remainder().is_empty() {
            return Err(Config(format!(
                "root key: {} hex digits, an odd number",
                digits.len()
            )));
        }
        let mut der = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let value = std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok());
            let Some(value) = value else {
                return Err(Config("root key: not hex (expected 0-9, a-f)".into()));
            };
            der.push(value);
        }
        if der.len() == 96 {
            return Err(Config(
                "root key: 96 bytes is a raw BLS key; pass its DER encoding (133 bytes, as \
                 `dfx ping` or the replica's `/api/v2/status` give it)"
                    .into(),
            ));
        }
        ic_ws_protocol::verify::bls_key_from_der(&der)
            .map_err(|e| Config(format!("root key: {e}")))?;
        Ok(self.with_root_key(der))
    }

    /// Adds a fallback gateway URL.
    pub fn with_fallback_gateway(mut self, url: impl Into<String>) -> Self {
        self.gateway_urls.push(url.into());
        self
    }

    /// Sets the candid open arguments.
    pub fn with_open_args(mut self, args: Vec<u8>) -> Self {
        self.open_args = args;
        self
    }

    /// The first gateway URL on this machine if the root key is the mainnet one (likely a
    /// forgotten [`Self::with_root_key`] for a local replica).
    pub(crate) fn mainnet_key_with_local_gateway(&self) -> Option<&str> {
        if self.root_key_der != MAINNET_ROOT_KEY_DER {
            return None;
        }
        self.gateway_urls
            .iter()
            .map(String::as_str)
            .find(|url| is_local_url(url))
    }

    pub(crate) fn validate(&self) -> Result<(), crate::ClientError> {
        use crate::ClientError::Config;
        if self.gateway_urls.is_empty() {
            return Err(Config("no gateway URL".into()));
        }
        for url in &self.gateway_urls {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(Config(format!(
                    "gateway URL {url:?} is not ws:// or wss://"
                )));
            }
        }
        ic_ws_protocol::verify::bls_key_from_der(&self.root_key_der)
            .map_err(|e| Config(e.to_string()))?;
        if self.event_buffer == 0 || self.resend_buffer == 0 {
            return Err(Config("event_buffer and resend_buffer must be > 0".into()));
        }
        Ok(())
    }
}

/// Whether a `ws://` / `wss://` URL names this machine (localhost, 127.0.0.0/8, ::1).
fn is_local_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ClientConfig {
    /// The state machine's settings.
    pub(crate) fn session_config(&self) -> ic_ws_protocol::client::SessionConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        ic_ws_protocol::client::SessionConfig {
            canister_id: self.canister_id,
            root_key_der: self.root_key_der.clone(),
            max_certificate_age_ns: ns(self.max_certificate_age),
            open_args: self.open_args.clone(),
            open_timeout_ns: ns(self.open_timeout),
            keepalive_interval_ns: ns(self.keepalive_interval),
            ack_threshold: self.ack_threshold,
            resend_buffer: self.resend_buffer,
            clock_skew_ns: ns(self.clock_skew),
            resume_refusals_before_wait: u32::try_from(self.gateway_urls.len())
                .unwrap_or(u32::MAX)
                .max(2),
            on_session_lost: self.on_session_lost,
        }
    }
}

/// Issue 10: the proof that `identity` authorises `session_key` for `canister` until
/// `expiration_ns`: the identity signs the IC delegation `{pubkey: DER(session_key),
/// expiration, targets: [canister]}` (as ic-agent signs any delegation), appended to the
/// identity's own delegation chain.
pub fn identity_proof(
    identity: &dyn ic_agent::Identity,
    session_key: &[u8; 32],
    canister: Principal,
    expiration_ns: u64,
) -> Result<ic_ws_protocol::identity::IdentityProof, String> {
    use ic_ws_protocol::identity as id;
    let delegation = ic_agent::identity::Delegation {
        pubkey: id::ed25519_der(session_key),
        expiration: expiration_ns,
        targets: Some(vec![canister]),
        permissions: None,
    };
    let signature = identity.sign_delegation(&delegation)?;
    let sender_pubkey = signature
        .public_key
        .ok_or("the identity has no public key (anonymous)")?;
    let own = signature
        .signature
        .ok_or("the identity produced no signature")?;
    let convert = |d: &ic_agent::identity::Delegation| id::Delegation {
        pubkey: d.pubkey.clone(),
        expiration: d.expiration,
        targets: d.targets.clone(),
        permissions: d.permissions.map(|p| match p {
            ic_agent::identity::DelegationPermissions::Queries => {
                id::DelegationPermissions::Queries
            }
            ic_agent::identity::DelegationPermissions::All => id::DelegationPermissions::All,
        }),
    };
    let mut delegations: Vec<id::SignedDelegation> = signature
        .delegations
        .unwrap_or_default()
        .iter()
        .map(|d| id::SignedDelegation {
            delegation: convert(&d.delegation),
            signature: d.signature.clone(),
        })
        .collect();
    delegations.push(id::SignedDelegation {
        delegation: convert(&delegation),
        signature: own,
    });
    Ok(id::IdentityProof {
        sender_pubkey,
        delegations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            max_attempts: None,
        };
        for (attempt, base_ms) in [(1u32, 100u64), (2, 200), (3, 400), (4, 800)] {
            let d = b.delay(attempt).as_millis() as u64;
            assert!(
                (base_ms..=base_ms * 5 / 4).contains(&d),
                "attempt {attempt}: {d} ms"
            );
        }
        assert_eq!(b.delay(30), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn a_root_key_in_hex_is_decoded_or_refused_with_the_reason() {
        let c = ClientConfig::new("ws://127.0.0.1:1", Principal::anonymous());
        let hex: String = MAINNET_ROOT_KEY_DER
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let ok = c.clone().with_root_key_hex(&hex).unwrap();
        assert_eq!(ok.root_key_der, MAINNET_ROOT_KEY_DER);
        let head: String = hex.chars().take(40).collect();
        let tail: String = hex.chars().skip(40).collect();
        let spaced = format!("0x{head}\n {}", tail.to_uppercase());
        assert_eq!(
            c.clone().with_root_key_hex(&spaced).unwrap().root_key_der,
            MAINNET_ROOT_KEY_DER
        );
        let refused = |input: &str| match c.clone().with_root_key_hex(input) {
            Err(crate::ClientError::Config(m)) => m,
            other => panic!("{input:?}: {other:?}"),
        };
        let odd: String = hex.chars().skip(1).collect();
        assert!(refused(&odd).contains("odd number"));
        assert!(refused(&hex.replacen('a', "g", 1)).contains("not hex"));
        let raw: String = hex.chars().skip(hex.len() - 192).collect();
        assert!(refused(&raw).contains("raw BLS key"));
        assert!(refused("00ff").contains("root key"));
        assert!(refused("é").contains("not hex"));
    }

    #[test]
    fn config_validation_names_the_problem() {
        let c = ClientConfig::new("ws://127.0.0.1:1", Principal::anonymous());
        assert!(c.validate().is_ok());
        let mut bad = c.clone();
        bad.gateway_urls.clear();
        assert!(
            matches!(bad.validate(), Err(crate::ClientError::Config(m)) if m.contains("no gateway"))
        );
        for (url, local) in [
            ("ws://127.0.0.1:8080", true),
            ("ws://localhost/x", true),
            ("wss://[::1]:9/", true),
            ("ws://user@LOCALHOST:1", true),
            ("wss://gateway.example.com", false),
            ("wss://127.example.com", false),
            ("wss://[2001:db8::1]:443", false),
        ] {
            assert_eq!(is_local_url(url), local, "{url}");
        }
        let bad = c.clone().with_root_key(vec![0u8; 10]);
        assert!(
            matches!(bad.validate(), Err(crate::ClientError::Config(m)) if m.contains("root key"))
        );
    }
}
