//! ic-ws example: a price ticker (the exchange case).
//!
//! A timer (ic-cdk-timers) moves the price of every symbol each interval and publishes the
//! new quote to the symbol's topic: the runtime stores each quote once and gives every
//! subscriber its own certified, sequenced copy. Clients subscribe and unsubscribe to
//! symbols with messages; a new subscriber gets the current quote at once.
//!
//! Beside the ws runtime the app keeps its own stable state (quotes, settings: memory ids 0
//! and 1) and its own certified data: the latest quotes are in an `RbTree` whose root hash is
//! registered with `ic_ws_canister::certification`, so `certified_quotes` answers with a
//! certificate and witness that any IC client can verify (`/app/<symbol>` -> candid quote),
//! while the ws messages stay certified under `/ws`.
//!
//! Only `#[on_message]` is defined: opens are accepted by the runtime's default and
//! subscriptions end with the session, so no `#[on_open]` / `#[on_close]` is needed.
//!
//! Build the canister with
//! `cargo build --target wasm32-unknown-unknown --profile canister -p ic-ws-example-ticker`
//! (`target/wasm32-unknown-unknown/canister/ic_ws_example_ticker.wasm`), or deploy it with `dfx deploy ticker`
//! (the repository's `dfx.json`). After an interface change, regenerate `ticker.did` with
//! `UPDATE_DID=1 cargo test -p ic-ws-example-ticker candid_interface`.

use candid::{CandidType, Deserialize};
use ic_stable_structures::memory_manager::MemoryId;
use ic_stable_structures::storable::Bound;
use ic_stable_structures::{Cell as StableCell, StableBTreeMap, Storable};
use ic_ws_canister::certification::{self, ic_certification};
use ic_ws_canister::{on_message, ClientId};
use std::borrow::Cow;
use std::cell::RefCell;
use std::time::Duration;

/// Symbols (and starting prices) of a canister installed without arguments.
pub const DEFAULT_SYMBOLS: [(&str, f64); 3] = [("ICP", 10.0), ("BTC", 90_000.0), ("ETH", 3_000.0)];
/// Default time between two ticks.
pub const DEFAULT_INTERVAL_MS: u64 = 1_000;
/// Most symbols in one canister.
pub const MAX_SYMBOLS: usize = 100;
/// Largest relative move of a price in one tick (0.5 %).
pub const MAX_MOVE: f64 = 0.005;

/// Install arguments (all optional).
#[derive(CandidType, Deserialize, Clone, Debug, Default)]
pub struct TickerInit {
    /// The symbols and their starting prices (default [`DEFAULT_SYMBOLS`]).
    pub symbols: Option<Vec<SymbolInit>>,
    /// Milliseconds between ticks (default [`DEFAULT_INTERVAL_MS`]); 0 = no timer (ticks only
    /// through `tick`).
    pub interval_ms: Option<u64>,
}

/// A symbol and its starting price.
#[derive(CandidType, Deserialize, Clone, Debug)]
pub struct SymbolInit {
    /// 1 to 12 of `A-Z 0-9`.
    pub symbol: String,
    /// Positive.
    pub price: f64,
}

/// The latest price of a symbol.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq)]
pub struct Quote {
    /// The symbol.
    pub symbol: String,
    /// Price, rounded to cents.
    pub price: f64,
    /// Number of ticks that produced this quote (0 = the starting price).
    pub tick: u64,
    /// Canister time of the quote (ns).
    pub at_ns: u64,
}

/// What a client sends.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TickerIn {
    /// Receive the quotes of these symbols (the current one at once, then every tick).
    Subscribe {
        /// Known symbols.
        symbols: Vec<String>,
    },
    /// Stop receiving them.
    Unsubscribe {
        /// Symbols.
        symbols: Vec<String>,
    },
}

/// What the canister sends.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq)]
pub enum TickerOut {
    /// A quote: a snapshot after `Subscribe`, then one per tick (published to the symbol's
    /// topic `price/<symbol>`).
    Price(Quote),
    /// The subscription is in place.
    Subscribed {
        /// The symbols.
        symbols: Vec<String>,
    },
    /// The subscription is gone.
    Unsubscribed {
        /// The symbols.
        symbols: Vec<String>,
    },
}

/// A symbol and how many clients follow it.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq)]
pub struct SymbolInfo {
    /// The latest quote.
    pub quote: Quote,
    /// Subscribers of its topic.
    pub subscribers: u64,
}

/// The latest quotes with what a client needs to verify them without trusting the replica
/// that answered: the IC data certificate and a hash tree with the quotes under `/app`.
#[derive(CandidType, Deserialize, Clone, Debug)]
pub struct CertifiedQuotes {
    /// The quotes, by symbol.
    pub quotes: Vec<Quote>,
    /// The data certificate (CBOR); absent when called as an update.
    pub certificate: Option<Vec<u8>>,
    /// CBOR hash tree: `/app/<symbol>` -> candid `Quote`; its root hash is the certified data.
    pub tree: Vec<u8>,
}

/// Persistent settings.
#[derive(CandidType, Deserialize, Clone, Debug, Default)]
struct Settings {
    interval_ms: u64,
    ticks: u64,
}

/// Candid-encoded stable values. Only this canister writes them, so a decode failure is
/// corrupted stable memory, where trapping (rolling the call back) is the only safe answer.
macro_rules! candid_storable {
    ($ty:ty) => {
        impl Storable for $ty {
            fn to_bytes(&self) -> Cow<'_, [u8]> {
                Cow::Owned(self.clone().into_bytes())
            }
            fn into_bytes(self) -> Vec<u8> {
                candid::encode_one(&self).unwrap_or_default()
            }
            fn from_bytes(bytes: Cow<'_, [u8]>) -> Self {
                candid::decode_one(&bytes).unwrap_or_else(|e| {
                    ic_cdk::trap(format!("corrupted {} record: {e}", stringify!($ty)))
                })
            }
            const BOUND: Bound = Bound::Unbounded;
        }
    };
}
candid_storable!(Quote);
candid_storable!(Settings);

type Memory = ic_ws_canister::memory::Memory;
type CertTree = ic_certification::RbTree<Vec<u8>, Vec<u8>>;

thread_local! {
    static QUOTES: RefCell<StableBTreeMap<String, Quote, Memory>> = RefCell::new(
        StableBTreeMap::init(ic_ws_canister::memory::get(MemoryId::new(0))),
    );
    static SETTINGS: RefCell<StableCell<Settings, Memory>> = RefCell::new(StableCell::init(
        ic_ws_canister::memory::get(MemoryId::new(1)),
        Settings::default(),
    ));
    /// The app's certified quotes (heap; rebuilt from `QUOTES` after an upgrade).
    static CERTIFIED: RefCell<CertTree> = const { RefCell::new(CertTree::new()) };
}

/// Canister time; natively (unit tests) the runtime's fake clock.
fn now_ns() -> u64 {
    #[cfg(target_family = "wasm")]
    let now = ic_cdk::api::time();
    #[cfg(not(target_family = "wasm"))]
    let now = ic_ws_canister::testing::time_ns();
    now
}

fn topic(symbol: &str) -> String {
    format!("price/{symbol}")
}

fn validate_symbol(symbol: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit();
    if symbol.is_empty() || symbol.len() > 12 || !symbol.chars().all(ok) {
        return Err(format!("bad symbol {symbol:?}: 1 to 12 of A-Z 0-9"));
    }
    Ok(())
}

/// A deterministic pseudo-random number in [0, 1) for this tick and symbol (splitmix64):
/// every replica computes the same prices, no randomness source is needed.
fn unit_random(tick: u64, symbol: &str) -> f64 {
    let mut x = symbol
        .bytes()
        .fold(tick.wrapping_mul(0x9E37_79B9_7F4A_7C15), |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        });
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn next_price(price: f64, tick: u64, symbol: &str) -> f64 {
    let change = (unit_random(tick, symbol) * 2.0 - 1.0) * MAX_MOVE;
    ((price * (1.0 + change)) * 100.0).round().max(1.0) / 100.0
}

/// Puts `quote` in the app's certified tree and registers the new root hash (which updates
/// the canister's certified data, composed with the ws runtime's).
fn certify(quotes: &[Quote]) {
    CERTIFIED.with(|tree| {
        let mut tree = tree.borrow_mut();
        for quote in quotes {
            let bytes = candid::encode_one(quote).unwrap_or_default();
            tree.insert(quote.symbol.as_bytes().to_vec(), bytes);
        }
        certification::set_app_root_hash(Some(ic_certification::AsHashTree::root_hash(&*tree)));
    });
}

fn all_quotes() -> Vec<Quote> {
    QUOTES.with(|q| q.borrow().iter().map(|e| e.value()).collect())
}

/// Installs the symbols and settings (the part of `init` that is not the timer).
fn setup(args: TickerInit) -> Result<(), String> {
    let symbols = match args.symbols {
        Some(symbols) => symbols,
        None => DEFAULT_SYMBOLS
            .iter()
            .map(|(symbol, price)| SymbolInit {
                symbol: symbol.to_string(),
                price: *price,
            })
            .collect(),
    };
    if symbols.is_empty() || symbols.len() > MAX_SYMBOLS {
        return Err(format!("1 to {MAX_SYMBOLS} symbols"));
    }
    let now = now_ns();
    let mut quotes = Vec::with_capacity(symbols.len());
    for s in symbols {
        validate_symbol(&s.symbol)?;
        if !(s.price.is_finite() && s.price > 0.0) {
            return Err(format!("{}: the price must be positive", s.symbol));
        }
        quotes.push(Quote {
            symbol: s.symbol,
            price: s.price,
            tick: 0,
            at_ns: now,
        });
    }
    QUOTES.with(|q| {
        let mut q = q.borrow_mut();
        for quote in &quotes {
            q.insert(quote.symbol.clone(), quote.clone());
        }
    });
    let interval_ms = args.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
    SETTINGS.with(|s| {
        s.borrow_mut().set(Settings {
            interval_ms,
            ticks: 0,
        })
    });
    certify(&quotes);
    Ok(())
}

fn start_timer() {
    let interval_ms = SETTINGS.with(|s| s.borrow().get().interval_ms);
    if interval_ms > 0 {
        ic_cdk_timers::set_timer_interval(Duration::from_millis(interval_ms), move || async move {
            tick_once();
            // Tell the gateways when the next quotes come, so they poll then (the poll
            // hint) rather than on their own schedule.
            let next = now_ns().saturating_add(interval_ms.saturating_mul(1_000_000));
            ic_ws_canister::expect_messages_at(next);
        });
    }
}

/// One tick: every symbol's price moves, is stored, certified and published to its topic.
fn tick_once() {
    let tick = SETTINGS.with(|s| {
        let mut s = s.borrow_mut();
        let mut settings = s.get().clone();
        settings.ticks += 1;
        let tick = settings.ticks;
        s.set(settings);
        tick
    });
    let now = now_ns();
    let mut quotes = all_quotes();
    for quote in &mut quotes {
        quote.price = next_price(quote.price, tick, &quote.symbol);
        quote.tick = tick;
        quote.at_ns = now;
    }
    QUOTES.with(|q| {
        let mut q = q.borrow_mut();
        for quote in &quotes {
            q.insert(quote.symbol.clone(), quote.clone());
        }
    });
    certify(&quotes);
    for quote in quotes {
        // A failed publish (e.g. the quote is over the payload limit) cannot happen for these
        // small records; subscribers whose queues overflow are handled by the runtime's
        // overflow policy and reported in the publish report.
        let _ = ic_ws_canister::publish(&topic(&quote.symbol), &TickerOut::Price(quote));
    }
}

#[ic_cdk::init]
fn init(args: Option<TickerInit>) {
    // A bad install argument fails the install: nothing to keep.
    if let Err(e) = setup(args.unwrap_or_default()) {
        ic_cdk::trap(format!("ticker init: {e}"));
    }
    start_timer();
}

/// Timers do not survive an upgrade; the app's certification tree is rebuilt from stable
/// memory here. `#[on_message(post_upgrade = post_upgrade)]` makes this the app's part of the
/// generated `canister_post_upgrade`, which then rebuilds the runtime's tree, so certificates
/// are valid from the first query on.
fn post_upgrade() {
    certify(&all_quotes());
    start_timer();
}

fn check_symbols(symbols: &[String]) -> Result<(), String> {
    if symbols.is_empty() {
        return Err("no symbols given".into());
    }
    QUOTES.with(|q| {
        let q = q.borrow();
        match symbols.iter().find(|s| !q.contains_key(*s)) {
            Some(unknown) => Err(format!("unknown symbol {unknown:?}")),
            None => Ok(()),
        }
    })
}

#[on_message(outbound = TickerOut, post_upgrade = post_upgrade)]
fn message(client: ClientId, message: TickerIn) -> Result<(), String> {
    match message {
        TickerIn::Subscribe { symbols } => {
            // Nothing changes unless every symbol is known.
            check_symbols(&symbols)?;
            let before = ic_ws_canister::subscriptions(client);
            for symbol in &symbols {
                let topic = topic(symbol);
                if let Err(e) = ic_ws_canister::subscribe(client, &topic) {
                    // E.g. a full topic: undo this message's subscriptions, so a refused
                    // message changes nothing.
                    for done in &symbols {
                        let done = self::topic(done);
                        if done == topic {
                            break;
                        }
                        if !before.contains(&done) {
                            ic_ws_canister::unsubscribe(client, &done);
                        }
                    }
                    return Err(e.to_string());
                }
            }
            let send = |out: &TickerOut| {
                ic_ws_canister::send(client, out)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            send(&TickerOut::Subscribed {
                symbols: symbols.clone(),
            })?;
            for symbol in &symbols {
                if let Some(quote) = QUOTES.with(|q| q.borrow().get(symbol)) {
                    send(&TickerOut::Price(quote))?;
                }
            }
            Ok(())
        }
        TickerIn::Unsubscribe { symbols } => {
            check_symbols(&symbols)?;
            for symbol in &symbols {
                ic_ws_canister::unsubscribe(client, &topic(symbol));
            }
            ic_ws_canister::send(client, &TickerOut::Unsubscribed { symbols })
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

/// The latest quotes (uncertified: a query answered by one replica).
#[ic_cdk::query]
fn quotes() -> Vec<Quote> {
    all_quotes()
}

/// Symbols with their latest quote and number of subscribers.
#[ic_cdk::query]
fn symbols() -> Vec<SymbolInfo> {
    all_quotes()
        .into_iter()
        .map(|quote| SymbolInfo {
            subscribers: ic_ws_canister::subscribers(&topic(&quote.symbol)).len() as u64,
            quote,
        })
        .collect()
}

/// The latest quotes, certified: the tree's root hash is the canister's certified data
/// (`/app` is this app's subtree, `/ws` the ws runtime's, pruned).
#[ic_cdk::query]
fn certified_quotes() -> CertifiedQuotes {
    let tree = CERTIFIED.with(|t| {
        let witness = ic_certification::AsHashTree::as_hash_tree(&*t.borrow());
        certification::encode_tree(&certification::app_witness(witness))
    });
    CertifiedQuotes {
        quotes: all_quotes(),
        certificate: certification::data_certificate(),
        tree,
    }
}

fn controller_only() -> Result<(), String> {
    if ic_cdk::api::is_controller(&ic_cdk::api::msg_caller()) {
        Ok(())
    } else {
        Err("only a controller may force a tick".into())
    }
}

/// Forces one tick now (controllers only; for tests and demos with the timer off).
#[ic_cdk::update(guard = "controller_only")]
fn tick() {
    tick_once();
}

// The interface as the wasm's `candid:service` metadata (icp-cli, dfx and the dashboard read it).
ic_ws_canister::candid_metadata!("ticker.did");
ic_cdk::export_candid!();

#[cfg(test)]
mod tests;
