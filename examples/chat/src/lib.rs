//! ic-ws example: a chat canister.
//!
//! Clients open a session with their name (and optionally a room, default `lobby`); every
//! message said in a room is published to the room's topic, so each participant gets it as a
//! certified message in their own stream. Joins and leaves are announced in rooms of up to
//! [`MAX_ANNOUNCED_ROOM`] participants (see "Cost of presence notices" below); a
//! participant can switch rooms; the `participants` and `rooms` queries list who is there
//! and who is connected right now. Whoever enters a room (a new tab, a reloaded page, a
//! room switch) first gets the room's last [`HISTORY_SENT`] messages, kept among the last
//! [`HISTORY_KEPT`] of the whole chat; a resumed session (a reloaded page) asks for them again
//! with `ChatIn::History`.
//!
//! The whole ws part is the three annotated handlers below: `#[on_open]`, `#[on_message]`
//! and `#[on_close]` generate the `ws_open`, `ws_message`, `ws_close` and `ws_poll`
//! endpoints. The app keeps its own state (participants, names) in stable structures beside
//! the runtime's (memory ids 0 to 3), so an upgrade loses neither sessions, names nor
//! history.
//!
//! # Cost of presence notices
//!
//! A notice published to a room costs one queued message per participant. Announcing every
//! join and leave to everyone makes filling a room quadratic: the issue that motivated this
//! (Sybil callers opening 500 lobby sessions, then letting them expire) measured each batch
//! of joins costing more than the last and expiries slowing honest calls for minutes. So a
//! room announces joins and leaves only while it has at most [`MAX_ANNOUNCED_ROOM`]
//! participants: a notice then costs at most that many queued messages, whatever the crowd.
//! In a larger room, a newcomer still gets the `Members` message (the first
//! [`MAX_MEMBERS_LISTED`] names and the total) and anyone can ask the `participants` query;
//! the room's flow is its messages. Expiries run in the runtime's housekeeping timer (within
//! its instruction budget), not inside other participants' calls.
//!
//! The message types are exported in the candid interface (`chat.did`, kept in sync by the
//! test `candid_interface_matches_chat_did`) through `ws_app_types` and `ws_open_args_type`.
//!
//! Build the canister with
//! `cargo build --target wasm32-unknown-unknown --profile canister -p ic-ws-example-chat`
//! (`target/wasm32-unknown-unknown/canister/ic_ws_example_chat.wasm`), or deploy it with `dfx deploy chat`
//! (the repository's `dfx.json`). After an interface change, regenerate `chat.did` with
//! `UPDATE_DID=1 cargo test -p ic-ws-example-chat candid_interface`.

use candid::Principal;
use candid::{CandidType, Deserialize};
use ic_stable_structures::memory_manager::MemoryId;
use ic_stable_structures::storable::Bound;
use ic_stable_structures::{StableBTreeMap, Storable};
use ic_ws_canister::{on_close, on_message, on_open, ClientId, ClientIdentity, CloseReason};
use std::borrow::Cow;
use std::cell::RefCell;

/// Room of clients that name none.
pub const DEFAULT_ROOM: &str = "lobby";
/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 32;
/// Longest message, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Most names listed in a `Members` message (the total is given beside).
pub const MAX_MEMBERS_LISTED: usize = 500;
/// Largest room whose joins and leaves are announced (`Joined`, `Left`): bounds the cost of
/// one notice to this many queued messages (see the crate docs, "Cost of presence notices").
pub const MAX_ANNOUNCED_ROOM: u64 = 100;
/// Messages kept for newcomers, over all rooms (the oldest is dropped first): at most
/// ~2.1 MB of stable memory (a message is at most 1000 characters, 4 bytes each, plus names).
pub const HISTORY_KEPT: u64 = 500;
/// The room's last messages a participant gets when entering it (so a reloaded page is not
/// empty); found among the last [`HISTORY_KEPT`], so the scan is bounded whatever the rooms.
pub const HISTORY_SENT: usize = 20;

/// Arguments of an open (the `args` of the client's open request).
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OpenArgs {
    /// The participant's name: 1 to 32 characters, unique (case-insensitively) in the chat.
    pub name: String,
    /// The room to join: 1 to 32 of `a-z 0-9 - _`; default `lobby`.
    pub room: Option<String>,
}

/// What a participant sends.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ChatIn {
    /// Say something in the current room.
    Say {
        /// 1 to 1000 characters.
        text: String,
    },
    /// Leave the current room for another.
    SwitchRoom {
        /// The room to join.
        room: String,
    },
    /// Issue 10: a direct message to every session of a principal (a user logged in with an
    /// IC identity), wherever they are; the sender sees `Direct` too when it reached someone.
    Direct {
        /// The recipient's principal.
        to: Principal,
        /// 1 to 1000 characters.
        text: String,
    },
    /// Issue 11: sends the current room's last [`HISTORY_SENT`] messages again (to this
    /// session only), e.g. after a page reload resumed the session: a resume re-delivers only
    /// what was not acknowledged, so a reloaded page would otherwise start empty. Costs the
    /// requester's own queue, like any message it asks for.
    History,
}

/// What the canister sends.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ChatOut {
    /// A message said in the room.
    Message {
        /// The sender's name.
        from: String,
        /// The sender's client id.
        client: ClientId,
        /// The room.
        room: String,
        /// What was said.
        text: String,
        /// Canister time (ns).
        at_ns: u64,
    },
    /// Someone joined the room (announced in rooms of at most [`MAX_ANNOUNCED_ROOM`]).
    Joined {
        /// Their name.
        name: String,
        /// Their client id.
        client: ClientId,
        /// The room.
        room: String,
        /// Issue 10: their principal, verified at open (none: anonymous).
        principal: Option<Principal>,
    },
    /// Someone left the room (closed, expired or switched rooms); announced in rooms of at
    /// most [`MAX_ANNOUNCED_ROOM`] (counting the one who left).
    Left {
        /// Their name.
        name: String,
        /// Their client id.
        client: ClientId,
        /// The room.
        room: String,
        /// Why, for display.
        reason: String,
    },
    /// Issue 10: a direct message (`ChatIn::Direct`), to every session of the recipient.
    Direct {
        /// The sender's name.
        from: String,
        /// The sender's verified principal (none: an anonymous participant).
        from_principal: Option<Principal>,
        /// The recipient's principal.
        to: Principal,
        /// What was said.
        text: String,
        /// Canister time (ns).
        at_ns: u64,
    },
    /// Sent to a participant when they enter a room: who is there.
    Members {
        /// The room.
        room: String,
        /// Names, at most [`MAX_MEMBERS_LISTED`].
        names: Vec<String>,
        /// How many participants the room has.
        total: u64,
        /// Issue 10: the principal of each of `names` (same order; none: anonymous).
        principals: Vec<Option<Principal>>,
    },
}

/// A participant, as stored and as listed by `participants`.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    /// The session.
    pub client: ClientId,
    /// The name.
    pub name: String,
    /// The current room.
    pub room: String,
    /// When they joined the chat (ns).
    pub joined_at_ns: u64,
    /// Issue 10: the principal verified at open (none: anonymous, shown as such). Absent in
    /// participants stored before it (candid reads `null`).
    #[serde(default)]
    pub principal: Option<Principal>,
}

/// A participant and whether a gateway holds their connection right now (a disconnected
/// participant may still resume until their session expires).
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// Who.
    pub participant: Participant,
    /// Connected through a gateway now.
    pub connected: bool,
}

/// A room and its number of participants.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room.
    pub room: String,
    /// Participants in it.
    pub participants: u64,
}

impl Storable for Participant {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.clone().into_bytes())
    }

    fn into_bytes(self) -> Vec<u8> {
        // Encoding a plain record cannot fail; an empty value would fail to decode loudly.
        candid::encode_one(&self).unwrap_or_default()
    }

    fn from_bytes(bytes: Cow<'_, [u8]>) -> Self {
        // Only this canister writes these bytes: failure means corrupted stable memory,
        // where trapping (and rolling back) is the only safe answer.
        candid::decode_one(&bytes)
            .unwrap_or_else(|e| ic_cdk::trap(format!("corrupted participant record: {e}")))
    }

    const BOUND: Bound = Bound::Unbounded;
}

type Memory = ic_ws_canister::memory::Memory;

thread_local! {
    /// Participants by session.
    static PARTICIPANTS: RefCell<StableBTreeMap<ClientId, Participant, Memory>> = RefCell::new(
        StableBTreeMap::init(ic_ws_canister::memory::get(MemoryId::new(0))),
    );
    /// Taken names (lower-cased) -> session.
    static NAMES: RefCell<StableBTreeMap<String, ClientId, Memory>> = RefCell::new(
        StableBTreeMap::init(ic_ws_canister::memory::get(MemoryId::new(1))),
    );
    /// The last [`HISTORY_KEPT`] messages said in any room, by [`history_key`] (room, then
    /// a counter), so a room's last messages are one range read.
    static HISTORY: RefCell<StableBTreeMap<String, Said, Memory>> = RefCell::new(
        StableBTreeMap::init(ic_ws_canister::memory::get(MemoryId::new(2))),
    );
    /// The same messages' keys by counter (oldest first), to drop the oldest.
    static HISTORY_ORDER: RefCell<StableBTreeMap<u64, String, Memory>> = RefCell::new(
        StableBTreeMap::init(ic_ws_canister::memory::get(MemoryId::new(3))),
    );
}

/// Where a room's message number `n` is kept: the room (which never contains `/`), `/`, then
/// `n` in 20 digits, so keys sort by room, then by age.
fn history_key(room: &str, n: u64) -> String {
    format!("{room}/{n:020}")
}

/// A message kept for newcomers: a `ChatOut::Message`, stored as its candid bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Said(ChatOut);

impl Storable for Said {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.clone().into_bytes())
    }

    fn into_bytes(self) -> Vec<u8> {
        candid::encode_one(&self.0).unwrap_or_default()
    }

    fn from_bytes(bytes: Cow<'_, [u8]>) -> Self {
        Said(
            candid::decode_one(&bytes)
                .unwrap_or_else(|e| ic_cdk::trap(format!("corrupted history record: {e}"))),
        )
    }

    const BOUND: Bound = Bound::Unbounded;
}

/// Keeps `message` (said in `room`) for newcomers, dropping the oldest of the chat beyond
/// [`HISTORY_KEPT`]: a constant number of map operations per message.
fn remember(room: &str, message: &ChatOut) {
    let n = HISTORY_ORDER.with(|o| {
        o.borrow()
            .last_key_value()
            .map_or(0, |(k, _)| k.saturating_add(1))
    });
    let key = history_key(room, n);
    HISTORY.with(|h| h.borrow_mut().insert(key.clone(), Said(message.clone())));
    HISTORY_ORDER.with(|o| {
        let mut o = o.borrow_mut();
        o.insert(n, key);
        while o.len() > HISTORY_KEPT {
            let Some((_, oldest)) = o.pop_first() else {
                break;
            };
            HISTORY.with(|h| h.borrow_mut().remove(&oldest));
        }
    });
}

/// The last [`HISTORY_SENT`] messages said in `room`, oldest first: one range read of at
/// most that many entries.
fn history(room: &str) -> Vec<ChatOut> {
    let (from, to) = (format!("{room}/"), format!("{room}0")); // '0' follows '/'
    let mut recent: Vec<ChatOut> = HISTORY.with(|h| {
        h.borrow()
            .range(from..to)
            .rev()
            .take(HISTORY_SENT)
            .map(|entry| entry.value().0)
            .collect()
    });
    recent.reverse();
    recent
}

/// Canister time; natively (unit tests) the runtime's fake clock.
fn now_ns() -> u64 {
    #[cfg(target_family = "wasm")]
    let now = ic_cdk::api::time();
    #[cfg(not(target_family = "wasm"))]
    let now = ic_ws_canister::testing::time_ns();
    now
}

fn room_topic(room: &str) -> String {
    format!("room/{room}")
}

fn name_key(name: &str) -> String {
    name.to_lowercase()
}

fn validate_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(format!("a name has 1 to {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("a name cannot contain control characters".into());
    }
    Ok(name.to_string())
}

fn validate_room(room: &str) -> Result<String, String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if room.is_empty() || room.chars().count() > MAX_ROOM_CHARS || !room.chars().all(ok_char) {
        return Err(format!(
            "a room name has 1 to {MAX_ROOM_CHARS} characters among a-z 0-9 - _"
        ));
    }
    Ok(room.to_string())
}

fn participant(client: ClientId) -> Option<Participant> {
    PARTICIPANTS.with(|p| p.borrow().get(&client))
}

/// The `Members` message for `room`.
fn members(room: &str) -> ChatOut {
    // Costs at most MAX_MEMBERS_LISTED reads, whatever the room's size.
    let topic = room_topic(room);
    let (names, principals) = ic_ws_canister::subscribers_up_to(&topic, MAX_MEMBERS_LISTED)
        .iter()
        .filter_map(|c| participant(*c).map(|p| (p.name, p.principal)))
        .unzip();
    ChatOut::Members {
        room: room.to_string(),
        names,
        total: ic_ws_canister::subscribers_count(&topic),
        principals,
    }
}

/// Publishes a join or leave notice, unless the room (with `extra` more participants than it
/// has subscribers now) is too large for presence notices.
fn announce(room: &str, extra: u64, event: &ChatOut) -> Result<(), String> {
    let size = ic_ws_canister::subscribers_count(&room_topic(room)).saturating_add(extra);
    if size > MAX_ANNOUNCED_ROOM {
        return Ok(());
    }
    publish(room, event)
}

fn publish(room: &str, event: &ChatOut) -> Result<(), String> {
    OUT.publish(&room_topic(room), event)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Puts `client` in `room`: subscribes it (the only step that can fail, so nothing is
/// announced for a participant that could not enter), tells it who is there and what was
/// said last, announces it.
fn enter_room(client: ClientId, me: &Participant, room: &str) -> Result<(), String> {
    ic_ws_canister::subscribe(client, &room_topic(room)).map_err(|e| e.to_string())?;
    OUT.send(client, &members(room))
        .map_err(|e| e.to_string())?;
    for said in history(room) {
        OUT.send(client, &said).map_err(|e| e.to_string())?;
    }
    announce(
        room,
        0,
        &ChatOut::Joined {
            name: me.name.clone(),
            client,
            room: room.to_string(),
            principal: me.principal,
        },
    )
}

fn leave_room(who: &Participant, reason: String) {
    ic_ws_canister::unsubscribe(who.client, &room_topic(&who.room));
    // A failed notice (e.g. the room's subscribers' queues are full) must not keep the
    // participant in the room: the leave itself has happened.
    let _ = announce(
        &who.room,
        1,
        &ChatOut::Left {
            name: who.name.clone(),
            client: who.client,
            room: who.room.clone(),
            reason,
        },
    );
}

#[on_open]
fn open(client: ClientId, args: OpenArgs, identity: ClientIdentity) -> Result<(), String> {
    let name = validate_name(&args.name)?;
    let room = validate_room(args.room.as_deref().unwrap_or(DEFAULT_ROOM))?;
    if NAMES.with(|n| n.borrow().contains_key(&name_key(&name))) {
        return Err(format!("the name {name:?} is taken"));
    }
    NAMES.with(|n| n.borrow_mut().insert(name_key(&name), client));
    let me = Participant {
        client,
        name,
        room,
        joined_at_ns: now_ns(),
        principal: identity.principal,
    };
    PARTICIPANTS.with(|p| p.borrow_mut().insert(client, me.clone()));
    // If entering fails, the open is rejected and the runtime deletes the new session with
    // whatever it queued; the participant is forgotten too.
    enter_room(client, &me, &me.room).inspect_err(|_| {
        NAMES.with(|n| n.borrow_mut().remove(&name_key(&me.name)));
        PARTICIPANTS.with(|p| p.borrow_mut().remove(&client));
    })
}

// `handle = OUT`: `OUT.send` / `OUT.publish` take a `ChatOut` only (checked by the compiler).
#[on_message(outbound = ChatOut, handle = OUT)]
fn message(client: ClientId, message: ChatIn) -> Result<(), String> {
    let Some(mut me) = participant(client) else {
        return Err("not a participant".into());
    };
    match message {
        ChatIn::Direct { to, text } => {
            let chars = text.chars().count();
            if text.trim().is_empty() || chars > MAX_TEXT_CHARS {
                return Err(format!("a message has 1 to {MAX_TEXT_CHARS} characters"));
            }
            // Every open session of the recipient (bounded by the runtime's cap on sessions
            // per principal).
            let sessions = ic_ws_canister::clients_of(&to);
            if sessions.is_empty() {
                return Err(format!("{to} is not connected"));
            }
            let out = ChatOut::Direct {
                from: me.name.clone(),
                from_principal: me.principal,
                to,
                text,
                at_ns: now_ns(),
            };
            let echo = (!sessions.contains(&client)).then_some(client);
            for session in sessions.iter().copied().chain(echo) {
                // A recipient whose queue is full misses it (its overflow policy applies).
                let _ = OUT.send(session, &out);
            }
            Ok(())
        }
        ChatIn::Say { text } => {
            let chars = text.chars().count();
            if text.trim().is_empty() || chars > MAX_TEXT_CHARS {
                return Err(format!("a message has 1 to {MAX_TEXT_CHARS} characters"));
            }
            let said = ChatOut::Message {
                from: me.name,
                client,
                room: me.room.clone(),
                text,
                at_ns: now_ns(),
            };
            publish(&me.room, &said)?;
            remember(&me.room, &said);
            Ok(())
        }
        ChatIn::History => {
            for said in history(&me.room) {
                OUT.send(client, &said).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        ChatIn::SwitchRoom { room } => {
            let room = validate_room(&room)?;
            if room == me.room {
                return Ok(());
            }
            let previous = me.clone();
            enter_room(client, &me, &room)?;
            leave_room(&previous, format!("moved to {room}"));
            me.room = room;
            PARTICIPANTS.with(|p| p.borrow_mut().insert(client, me));
            Ok(())
        }
    }
}

#[on_close]
fn close(client: ClientId, reason: CloseReason) {
    let Some(me) = PARTICIPANTS.with(|p| p.borrow_mut().remove(&client)) else {
        return;
    };
    NAMES.with(|n| n.borrow_mut().remove(&name_key(&me.name)));
    let reason = match reason {
        CloseReason::ClientClosed { .. } => "left".to_string(),
        CloseReason::AppClosed { reason, .. } => format!("removed: {reason}"),
        CloseReason::Expired => "timed out".to_string(),
        CloseReason::QueueOverflow => "fell behind".to_string(),
        CloseReason::ProtocolError(e) => format!("protocol error: {e}"),
        CloseReason::IdentityExpired => "login expired".to_string(),
    };
    leave_room(&me, reason);
}

/// The install argument: `(opt record { ic_root_key = opt blob "..." })` on a local network
/// (dfx, PocketIC, the embedded replica), whose root key differs from mainnet's: canister
/// signatures (Internet Identity logins) are verified under it. Without it (or `null`), the
/// mainnet key (`WsConfig::ic_root_key`'s default). Kept across upgrades with the runtime's
/// configuration.
#[derive(CandidType, Deserialize, Clone, Debug, Default)]
pub struct ChatInit {
    /// The network's root key (DER, 133 bytes, as `/api/v2/status` gives it).
    pub ic_root_key: Option<Vec<u8>>,
}

#[ic_cdk::init]
fn init(arg: Option<ChatInit>) {
    let arg = arg.unwrap_or_default();
    if let Some(key) = arg.ic_root_key {
        let config = ic_ws_canister::WsConfig {
            ic_root_key: Some(key),
            ..ic_ws_canister::config()
        };
        // A malformed key fails the install with the reason (nothing to lose yet).
        if let Err(e) = ic_ws_canister::configure(config) {
            ic_cdk::trap(format!("invalid install argument: {e}"));
        }
    }
}

/// Participants of `room` (all rooms with `null`), in client id order, with whether each is
/// connected now.
#[ic_cdk::query]
fn participants(room: Option<String>) -> Vec<Presence> {
    PARTICIPANTS.with(|p| {
        p.borrow()
            .iter()
            .map(|entry| entry.value())
            .filter(|p| room.as_ref().is_none_or(|r| *r == p.room))
            .map(|participant| Presence {
                connected: ic_ws_canister::client_info(participant.client)
                    .is_some_and(|info| info.attached && info.open),
                participant,
            })
            .collect()
    })
}

/// Rooms with at least one participant.
#[ic_cdk::query]
fn rooms() -> Vec<RoomInfo> {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    PARTICIPANTS.with(|p| {
        for entry in p.borrow().iter() {
            *counts.entry(entry.value().room).or_default() += 1;
        }
    });
    counts
        .into_iter()
        .map(|(room, participants)| RoomInfo { room, participants })
        .collect()
}

// No `#[post_upgrade]`: the one `#[on_message]` generates rebuilds the runtime's certification
// tree during the upgrade (so the first poll after it is certified); the app's own state is
// in stable structures and needs nothing.

// The interface as the wasm's `candid:service` metadata (icp-cli, dfx and the dashboard read it).
ic_ws_canister::candid_metadata!("chat.did");
ic_cdk::export_candid!();

#[cfg(test)]
mod tests;
