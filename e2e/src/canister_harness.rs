//! Harness for the ic-ws runtime's wasm tests: the test canister (`e2e/test-app`) in the
//! embedded replica, driven exactly as a gateway drives it (`ws_open`, `ws_message`,
//! `ws_close`, `ws_poll` with a gateway identity) and checked exactly as a client checks what
//! it receives (`DeliveryVerifier` against the replica's root key, on a witness pruned to the
//! client, as a gateway hands it over).
//!
//! The replica runs on a manual clock so that expiry and clock-skew tests are deterministic.

use candid::utils::ArgumentEncoder;
use candid::{CandidType, Principal};
use ic_certification::HashTree;
use ic_ws_protocol::types::{
    ClientMessage, CloseBatch, CloseResult, MessageBatch, MessageKind, MessageResult, OpenBatch,
    OpenRequest, OpenResult, OutboundMessage, PollReply, PollRequest, PollResult, ResumeFrom,
};
use ic_ws_protocol::verify::{
    prune_tree_for_client, DeliveryVerifier, VerifiedMessage, VerifyError,
    DEFAULT_MAX_CERTIFICATE_AGE_NS,
};
use ic_ws_protocol::witness::PageWitness;
use ic_ws_protocol::{ClientId, SessionKey};
use ic_ws_replica::{Reject, Replica, ReplicaConfig};
use serde::de::DeserializeOwned;
use std::sync::OnceLock;
use std::time::Duration;

/// Cargo package of the test canister.
pub const TEST_APP_PACKAGE: &str = "ic-ws-e2e-test-app";

/// Start of the manual clock (2026-01-01T00:00:00Z).
pub const START_TIME_NS: u64 = 1_767_225_600_000_000_000;

/// The test canister's wasm, built once per test process.
pub fn test_app_wasm() -> Vec<u8> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let path = ic_ws_replica::wasm_build::build_canister(TEST_APP_PACKAGE)
            .unwrap_or_else(|e| panic!("cannot build {TEST_APP_PACKAGE}: {e}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    })
    .clone()
}

/// A gateway identity for tests (any non-anonymous principal can act as a gateway).
pub fn gateway(n: u8) -> Principal {
    Principal::from_slice(&[0x47, n, 0x01])
}

/// The test canister in a fresh replica.
pub struct WsCanister {
    /// The replica.
    pub replica: Replica,
    /// The canister.
    pub canister: Principal,
    wasm: Vec<u8>,
}

/// A call that was rejected, or whose reply did not decode.
#[derive(Debug)]
pub enum CallError {
    /// The replica rejected the call (trap, missing method, ...).
    Reject(Reject),
    /// The reply is not the expected candid.
    Decode(String),
}

impl WsCanister {
    /// A replica with a manual clock at [`START_TIME_NS`] and the test app installed.
    pub fn new() -> Self {
        let replica = Replica::new(
            ReplicaConfig::with_seed("ic-ws canister tests").manual_clock(START_TIME_NS),
        );
        let wasm = test_app_wasm();
        let canister = replica
            .create_and_install(&wasm, &candid::encode_args(()).unwrap_or_default())
            .unwrap_or_else(|e| panic!("install failed: {e}"));
        WsCanister {
            replica,
            canister,
            wasm,
        }
    }

    /// An update call with candid arguments.
    pub fn try_update<A: ArgumentEncoder, R: CandidType + DeserializeOwned>(
        &self,
        method: &str,
        args: A,
        caller: Principal,
    ) -> Result<R, CallError> {
        let arg = candid::encode_args(args).map_err(|e| CallError::Decode(e.to_string()))?;
        let reply = self
            .replica
            .update(self.canister, method, &arg, caller)
            .map_err(CallError::Reject)?;
        candid::decode_one(&reply).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// What `canister_inspect_message` says about an ingress update (as the HTTP interface
    /// asks it before a call executes).
    pub fn inspect(&self, method: &str, arg: &[u8], caller: Principal) -> Result<(), Reject> {
        self.replica
            .inspect_message(self.canister, method, arg, caller)
    }

    /// An update call with raw candid bytes (e.g. a batch the typed helpers would not build).
    pub fn try_update_raw(
        &self,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<Vec<u8>, Reject> {
        self.replica.update(self.canister, method, arg, caller)
    }

    /// An update call that must succeed.
    pub fn update<A: ArgumentEncoder, R: CandidType + DeserializeOwned>(
        &self,
        method: &str,
        args: A,
    ) -> R {
        self.try_update(method, args, Principal::anonymous())
            .unwrap_or_else(|e| panic!("{method} failed: {e:?}"))
    }

    /// A query that must succeed.
    pub fn query<A: ArgumentEncoder, R: CandidType + DeserializeOwned>(
        &self,
        method: &str,
        args: A,
        caller: Principal,
    ) -> R {
        let arg = candid::encode_args(args).unwrap_or_default();
        let reply = self
            .replica
            .query(self.canister, method, &arg, caller)
            .unwrap_or_else(|e| panic!("{method} rejected: {e}"));
        candid::decode_one(&reply).unwrap_or_else(|e| panic!("{method} reply: {e}"))
    }

    /// `ws_open` as gateway `gw`.
    pub fn ws_open(&self, gw: Principal, opens: Vec<OpenRequest>) -> Vec<OpenResult> {
        self.try_update("ws_open", (OpenBatch { opens },), gw)
            .unwrap_or_else(|e| panic!("ws_open failed: {e:?}"))
    }

    /// `ws_message` as gateway `gw`.
    pub fn ws_message(&self, gw: Principal, messages: Vec<ClientMessage>) -> Vec<MessageResult> {
        self.try_update("ws_message", (MessageBatch { messages },), gw)
            .unwrap_or_else(|e| panic!("ws_message failed: {e:?}"))
    }

    /// `ws_close` as gateway `gw`.
    pub fn ws_close(&self, gw: Principal, clients: Vec<ClientId>) -> Vec<CloseResult> {
        self.try_update("ws_close", (CloseBatch { clients },), gw)
            .unwrap_or_else(|e| panic!("ws_close failed: {e:?}"))
    }

    /// `ws_poll` as gateway `gw` (a query, with a data certificate).
    pub fn ws_poll_with(&self, gw: Principal, req: PollRequest) -> PollResult {
        self.query("ws_poll", (req,), gw)
    }

    /// `ws_poll` from `cursor` with the canister's caps.
    pub fn ws_poll(&self, gw: Principal, cursor: u64) -> PollReply {
        self.ws_poll_with(
            gw,
            PollRequest {
                cursor,
                max_messages: None,
                max_bytes: None,
                max_clients: None,
            },
        )
        .unwrap_or_else(|e| panic!("ws_poll error: {e}"))
    }

    /// Every message pending for `gw` (polling until `more` is false).
    pub fn poll_all(&self, gw: Principal) -> Vec<PollReply> {
        let mut cursor = 0;
        let mut out = Vec::new();
        loop {
            let r = self.ws_poll(gw, cursor);
            cursor = r.next_cursor;
            let more = r.more;
            out.push(r);
            if !more {
                return out;
            }
        }
    }

    /// Upgrades the canister to the same wasm (pre/post_upgrade run; stable memory stays).
    pub fn upgrade(&self) {
        self.replica
            .upgrade(
                self.canister,
                &self.wasm,
                &candid::encode_args(()).unwrap_or_default(),
            )
            .unwrap_or_else(|e| panic!("upgrade failed: {e}"));
    }

    /// Upgrades the canister to the same wasm with a raw candid argument for its
    /// `post_upgrade`.
    pub fn upgrade_with_arg(&self, arg: &[u8]) -> Result<(), Reject> {
        self.replica.upgrade(self.canister, &self.wasm, arg)
    }

    /// Moves the manual clock, then runs rounds while the canister's timer is due (the
    /// runtime's housekeeping timer: expiry, deletion), as the IC would while time passes.
    pub fn advance(&self, d: Duration) {
        self.replica.advance_time(d);
        self.run_timers();
    }

    /// Runs rounds while the canister's global timer is due (at most 10 000); returns how
    /// many rounds fired it.
    pub fn run_timers(&self) -> usize {
        let mut rounds = 0;
        while rounds < 10_000 {
            let due = self
                .replica
                .global_timer(self.canister)
                .is_some_and(|t| t != 0 && t <= self.replica.time_ns());
            if !due {
                break;
            }
            self.replica.tick();
            rounds += 1;
        }
        rounds
    }

    /// Current replica time.
    pub fn now(&self) -> u64 {
        self.replica.time_ns()
    }

    /// The checks a client makes, for client `id`.
    pub fn verifier(&self, id: ClientId) -> DeliveryVerifier {
        DeliveryVerifier {
            root_key_der: self.replica.root_key_der(),
            canister_id: self.canister,
            client_id: id,
            max_certificate_age_ns: DEFAULT_MAX_CERTIFICATE_AGE_NS,
        }
    }

    /// Instructions of the last call.
    pub fn last_instructions(&self) -> u64 {
        self.replica.last_instructions()
    }

    /// Opens a new session for `client` through `gw` (args = candid text "hello"), panics on
    /// failure.
    pub fn open(&self, client: &mut TestClient, gw: Principal) {
        let req = client.open_request(self, gw, "hello", false);
        let r = self.ws_open(gw, vec![req]).remove(0);
        let ok = r.unwrap_or_else(|e| panic!("open failed: {e}"));
        client.id = ok.client_id;
        client.next_inbound = ok.next_inbound_seq;
    }
}

impl Default for WsCanister {
    fn default() -> Self {
        Self::new()
    }
}

/// A client: session key, sequence numbers, and the verified messages it received.
#[derive(Debug)]
pub struct TestClient {
    /// The session key.
    pub key: SessionKey,
    /// Its client id (after open).
    pub id: ClientId,
    /// Next inbound sequence number to sign.
    pub next_inbound: u64,
    /// Next outbound sequence number expected (= what it acknowledges).
    pub next_outbound: u64,
    /// Every verified message so far.
    pub received: Vec<VerifiedMessage>,
}

impl TestClient {
    /// A client whose key comes from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_be_bytes());
        s[31] = 0x5E;
        TestClient {
            key: SessionKey::from_seed(s),
            id: u64::MAX,
            next_inbound: 0,
            next_outbound: 0,
            received: Vec::new(),
        }
    }

    /// A signed open (or, with `resume`, a resume from `next_outbound`) at the replica's time.
    pub fn open_request(
        &self,
        c: &WsCanister,
        gw: Principal,
        args: &str,
        resume: bool,
    ) -> OpenRequest {
        let mut req = OpenRequest {
            client_key: self.key.public_key(),
            gateway: gw,
            timestamp_ns: c.now(),
            resume: resume.then_some(ResumeFrom {
                client_id: self.id,
                next_outbound_seq: self.next_outbound,
            }),
            args: candid::encode_one(args.to_string()).unwrap_or_default(),
            signature: Vec::new(),
            identity: None,
        };
        self.key.sign_open(&c.canister, &mut req);
        req
    }

    /// The next signed message (consumes a sequence number).
    pub fn message(&mut self, c: &WsCanister, kind: MessageKind) -> ClientMessage {
        let m = self.message_at(c, self.next_inbound, kind);
        self.next_inbound += 1;
        m
    }

    /// A signed message with an explicit sequence number (attacks, duplicates).
    pub fn message_at(&self, c: &WsCanister, seq: u64, kind: MessageKind) -> ClientMessage {
        let mut m = ClientMessage {
            client_id: self.id,
            seq,
            ack: self.next_outbound,
            kind,
            signature: Vec::new(),
        };
        self.key.sign_message(&c.canister, &mut m);
        m
    }

    /// Takes this client's messages out of a poll reply the way a gateway does (witness pruned
    /// to them) and checks them the way a client does. On success they are appended to
    /// `received` and the expected sequence advances.
    pub fn receive(&mut self, c: &WsCanister, reply: &PollReply) -> Result<usize, VerifyError> {
        let (mine, seqs) = self.mine(reply);
        if mine.is_empty() {
            return Ok(0);
        }
        let full: HashTree = serde_cbor::from_slice(&reply.tree)
            .map_err(|e| VerifyError::MalformedTree(e.to_string()))?;
        let pruned = prune_tree_for_client(&full, self.id, &seqs);
        self.accept(c, &mine, &pruned, &reply.certificate)
    }

    /// [`TestClient::receive`] with the page's tree decoded once for many clients (the
    /// gateway's per-page index, [`PageWitness`], which cuts each client's witness in
    /// O(log n) instead of decoding and pruning the whole tree per client).
    pub fn receive_page(
        &mut self,
        c: &WsCanister,
        page: &DecodedPage<'_>,
    ) -> Result<usize, VerifyError> {
        let (mine, seqs) = self.mine(page.reply);
        if mine.is_empty() {
            return Ok(0);
        }
        let pruned = page.witness.for_client(self.id, &seqs);
        self.accept(c, &mine, &pruned, &page.reply.certificate)
    }

    /// This client's messages in `reply`, and their sequence numbers.
    fn mine(&self, reply: &PollReply) -> (Vec<OutboundMessage>, Vec<u64>) {
        let mine: Vec<OutboundMessage> = reply
            .messages
            .iter()
            .filter(|m| m.client_id == self.id)
            .cloned()
            .collect();
        let seqs = mine.iter().map(|m| m.seq).collect();
        (mine, seqs)
    }

    /// Verifies `mine` against the client's witness and the certificate, as a client does,
    /// and keeps what verified.
    fn accept(
        &mut self,
        c: &WsCanister,
        mine: &[OutboundMessage],
        witness: &HashTree,
        certificate: &[u8],
    ) -> Result<usize, VerifyError> {
        let tree =
            serde_cbor::to_vec(witness).map_err(|e| VerifyError::MalformedTree(e.to_string()))?;
        let verified =
            c.verifier(self.id)
                .verify(mine, certificate, &tree, self.next_outbound, c.now())?;
        let n = verified.len();
        self.next_outbound += n as u64;
        self.received.extend(verified);
        Ok(n)
    }

    /// [`TestClient::receive`] over several replies.
    pub fn receive_all(
        &mut self,
        c: &WsCanister,
        replies: &[PollReply],
    ) -> Result<usize, VerifyError> {
        let mut n = 0;
        for r in replies {
            n += self.receive(c, r)?;
        }
        Ok(n)
    }
}

/// A poll reply with its tree decoded and indexed once, for [`TestClient::receive_page`].
pub struct DecodedPage<'a> {
    reply: &'a PollReply,
    witness: PageWitness,
}

impl<'a> DecodedPage<'a> {
    /// Decodes `reply`'s tree (CBOR) and indexes it.
    pub fn new(reply: &'a PollReply) -> Result<Self, VerifyError> {
        let full: HashTree = serde_cbor::from_slice(&reply.tree)
            .map_err(|e| VerifyError::MalformedTree(e.to_string()))?;
        Ok(DecodedPage {
            reply,
            witness: PageWitness::new(&full),
        })
    }
}

/// Every client of `clients` receives its messages from every reply of `replies` (in order),
/// each reply's tree decoded once.
pub fn receive_all_clients(
    clients: &mut [TestClient],
    c: &WsCanister,
    replies: &[PollReply],
) -> Result<(), VerifyError> {
    for reply in replies {
        let page = DecodedPage::new(reply)?;
        for cl in clients.iter_mut() {
            cl.receive_page(c, &page)?;
        }
    }
    Ok(())
}

/// candid text argument helper.
pub fn app_payload<T: CandidType>(v: &T) -> MessageKind {
    MessageKind::App(candid::encode_one(v).unwrap_or_default())
}

/// The test app's inbound type (mirrors `ic_ws_e2e_test_app::Inbound`; candid is structural).
#[derive(CandidType, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Answered with `Outbound::Echo`.
    Echo(String),
    /// Subscribes the sender to a topic.
    Subscribe(String),
    /// Asks the app to close the sender's session.
    CloseMe,
    /// Rejected by the handler.
    Fail,
    /// Does nothing (measures the runtime's cost of an inbound message).
    Noop,
    /// Traps: the IC rolls the whole call back.
    Trap,
    /// Burns about this many instructions.
    Burn(u64),
    /// The app expects to send in this many ms (`expect_messages_at`); answers
    /// `Echo("expect")`.
    ExpectIn(u64),
}

/// The test app's outbound type (mirrors `ic_ws_e2e_test_app::Outbound`).
#[derive(CandidType, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Reply to `Inbound::Echo`.
    Echo(String),
    /// Text sent by `app_send`.
    Text(String),
    /// Bulk bytes.
    Bytes(serde_bytes::ByteBuf),
}

/// Decodes the app payload of a verified message, if it is an app message.
pub fn outbound(m: &VerifiedMessage) -> Option<Outbound> {
    match &m.content.body {
        ic_ws_protocol::types::OutboundBody::App { payload, .. } => {
            candid::decode_one(payload).ok()
        }
        _ => None,
    }
}

/// Mirror of `ic_ws_canister::WsConfig` as the test app's `app_configure` takes it (candid is
/// structural); [`Default`] is the runtime's documented defaults.
#[derive(CandidType, serde::Deserialize, Clone, Debug)]
#[allow(missing_docs)]
pub struct WsConfig {
    pub max_inbound_payload_bytes: u64,
    pub max_outbound_payload_bytes: u64,
    pub max_queued_messages: u64,
    pub max_queued_bytes: u64,
    pub max_sessions_per_gateway: u64,
    pub max_topic_subscribers: u64,
    pub max_topic_len: u64,
    pub max_poll_messages: u32,
    pub max_poll_bytes: u32,
    pub idle_timeout_ns: u64,
    pub clock_skew_ns: u64,
    pub closed_retention_ns: u64,
    pub overflow_policy: OverflowPolicy,
    pub max_housekeeping_per_call: u32,
    pub max_entries_per_call: Option<u32>,
    pub max_sessions: Option<u64>,
    pub gateways: Option<GatewayPolicy>,
    pub max_instructions_per_call: Option<u64>,
    pub max_retained_bytes: Option<u64>,
    pub max_subscriptions: Option<u64>,
    pub max_gateways: Option<u64>,
    pub gateway_retention_ns: Option<u64>,
    pub housekeeping_instructions: Option<u64>,
    pub max_retained_messages: Option<u64>,
    /// Issue 10: the root key canister signatures are verified under (`None`: mainnet's).
    pub ic_root_key: Option<Vec<u8>>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_inbound_payload_bytes: 64 * 1024,
            max_outbound_payload_bytes: 256 * 1024,
            max_queued_messages: 1024,
            max_queued_bytes: 4 * 1024 * 1024,
            max_sessions_per_gateway: 50_000,
            max_topic_subscribers: 10_000,
            max_topic_len: 128,
            max_poll_messages: 500,
            max_poll_bytes: 1536 * 1024,
            idle_timeout_ns: 120_000_000_000,
            clock_skew_ns: 300_000_000_000,
            closed_retention_ns: 600_000_000_000,
            overflow_policy: OverflowPolicy::Close,
            max_housekeeping_per_call: 100,
            max_entries_per_call: None,
            max_sessions: None,
            gateways: None,
            max_instructions_per_call: None,
            max_retained_bytes: None,
            max_subscriptions: None,
            max_gateways: None,
            gateway_retention_ns: None,
            housekeeping_instructions: None,
            max_retained_messages: None,
            ic_root_key: None,
        }
    }
}

/// Mirror of `ic_ws_canister::OverflowPolicy`.
#[derive(CandidType, serde::Deserialize, Clone, Copy, Debug)]
#[allow(missing_docs)]
pub enum OverflowPolicy {
    Close,
    Reject,
}

/// Mirror of `ic_ws_canister::GatewayPolicy`.
#[derive(CandidType, serde::Deserialize, Clone, Debug)]
#[allow(missing_docs)]
pub enum GatewayPolicy {
    Open,
    Allowlist(Vec<Principal>),
    Callback,
}

/// Mirror of `ic_ws_canister::Usage`.
#[derive(CandidType, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Usage {
    pub sessions: u64,
    pub retained_bytes: u64,
    pub subscriptions: u64,
    pub gateways: u64,
}

impl WsCanister {
    /// `ic_ws_canister::usage` through the test app.
    pub fn usage(&self) -> Usage {
        self.query("app_usage", (), Principal::anonymous())
    }
}

impl WsCanister {
    /// Sets the runtime's configuration through the test app (panics if it is refused).
    pub fn configure(&self, config: WsConfig) {
        let r: Result<(), String> = self.update("app_configure", (config,));
        r.unwrap_or_else(|e| panic!("app_configure refused: {e}"));
    }
}

/// Mirror of `ic_ws_canister::ClientInfo` (candid is structural).
#[derive(CandidType, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Its id.
    pub id: u64,
    /// Session key.
    pub key: Vec<u8>,
    /// Gateway it is (or was last) attached to.
    pub gateway: Principal,
    /// Whether a gateway holds it.
    pub attached: bool,
    /// False once closed.
    pub open: bool,
    /// Open time.
    pub opened_at_ns: u64,
    /// Last signed activity.
    pub last_activity_ns: u64,
    /// Next inbound sequence number expected.
    pub next_inbound_seq: u64,
    /// Next outbound sequence number.
    pub next_outbound_seq: u64,
    /// Oldest retained outbound sequence number.
    pub first_retained_seq: u64,
    /// Retained messages.
    pub queued_messages: u64,
    /// Retained payload bytes.
    pub queued_bytes: u64,
    /// Issue 10: the verified principal (none: anonymous).
    pub principal: Option<Principal>,
}

impl WsCanister {
    /// `ic_ws_canister::client_info` through the test app.
    pub fn client_info(&self, id: ClientId) -> Option<ClientInfo> {
        self.query("app_client_info", (id,), Principal::anonymous())
    }

    /// Every `on_close` the app saw: (client, reason as Debug text).
    pub fn closes(&self) -> Vec<(u64, String)> {
        self.query("app_closes", (), Principal::anonymous())
    }

    /// The canister's certified data.
    pub fn certified_data(&self) -> Vec<u8> {
        self.replica
            .certified_data(self.canister)
            .unwrap_or_default()
    }
}
