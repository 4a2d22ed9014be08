//! Attribute macros of ic-ws: `#[on_open]`, `#[on_message]`, `#[on_close]`.
//!
//! Use them through `ic_ws_canister` (which re-exports them and provides everything the
//! generated code calls). This crate only parses the attribute and the handler (`attr`,
//! `handler`), validates the handler's signature, and generates a short shim (`expand`): the
//! canister endpoints of `docs/protocol.md` and the typed decoding of the app's messages. All
//! behaviour (signatures, sequence numbers, queues, certification) lives in the runtime.
//!
//! The module `expand` documents how the endpoints are generated exactly once although each
//! attribute sees only its own function.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod attr;
mod errors;
mod expand;
mod handler;

use errors::Errors;
use handler::{Handler, Kind};
use proc_macro::TokenStream;
use quote::quote;

/// Declares the handler of app messages and generates the canister's ic-ws endpoints.
///
/// Required, exactly once per canister. The function takes the sender and the message, decoded
/// from candid into the parameter's type (a payload that does not decode is answered with
/// `WsError::DecodeError` for that message only; the handler is not called), and returns `()`
/// or `Result<(), String>` (an `Err` is reported to the client as `WsError::Rejected`):
///
/// ```
/// use candid::{CandidType, Deserialize};
/// use ic_ws_canister::{on_message, ClientId};
///
/// #[derive(CandidType, Deserialize)]
/// enum Inbound { Say(String) }
///
/// #[derive(CandidType, Deserialize)]
/// enum Outbound { Said { from: ClientId, text: String } }
///
/// #[on_message(outbound = Outbound)]
/// fn message(client: ClientId, message: Inbound) -> Result<(), String> {
///     match message {
///         Inbound::Say(text) if text.is_empty() => Err("empty message".into()),
///         Inbound::Say(text) => Ok(()),
///     }
/// }
/// # fn main() {}
/// ```
///
/// It generates the update methods `ws_open`, `ws_message`, `ws_close`, the query `ws_poll`
/// (candid in `docs/protocol.md`) and the query `ws_app_types : () -> (opt M, opt O)` whose
/// only purpose is to name the app's inbound type `M` and outbound type `O` in the candid
/// interface, so that clients can generate bindings for them. All of them are declared to
/// `ic_cdk::export_candid!()` (invoke it after the handlers, as for `#[ic_cdk::update]`). The
/// types are named as written in the handler and must be nameable where `export_candid!()`
/// is invoked (usually the crate root).
///
/// Arguments:
/// - `outbound = Type`: the app's outbound message type (what it passes to `send` and
///   `publish`), named in `ws_app_types`. Optional.
/// - `crate = "path"`: where `ic_ws_canister` is, if it is renamed or re-exported
///   (default `::ic_ws_canister`). Use an absolute path (`::name` or `crate::...`).
/// - `inspect_message = false`: do not generate `canister_inspect_message`. By default it is
///   generated and refuses, before they execute, ingress calls to the ws endpoints that are
///   oversized (`WsConfig::max_entries_per_call`), malformed, anonymous or from a principal the
///   gateway policy refuses (`WsConfig::gateways`); other methods are accepted. A canister with
///   its own `#[ic_cdk::inspect_message]` sets this and calls
///   `ic_ws_canister::inspect_ws_call(&method, &caller, &arg)` from it.
/// - `gateway_filter = path`: a `fn(&Principal) -> bool` deciding which principals may act
///   as gateways when the configuration's policy is `GatewayPolicy::Callback` (e.g. a lookup
///   in the app's registry of gateway operators). The generated code registers it
///   (`ic_ws_canister::set_gateway_filter`) before admitting any ws call, in
///   `canister_inspect_message` and in the endpoints, so it needs no registration in
///   `#[init]` / `#[post_upgrade]`.
///
/// - `post_upgrade = path::to::function` / `post_upgrade = false`: by default `#[on_message]`
///   also generates the canister's `canister_post_upgrade`, which rebuilds the runtime's heap
///   state (certified tree, delivery logs) during the upgrade, so that nobody can forget it.
///   An app with post-upgrade work of its own names a `fn()` with `post_upgrade = ...`
///   (called first, then the rebuild) instead of writing `#[ic_cdk::post_upgrade]`; an app
///   that needs its own `#[ic_cdk::post_upgrade]` (e.g. with upgrade arguments) sets
///   `post_upgrade = false` and calls `ic_ws_canister::post_upgrade()` from it. Both at once
///   (the generated hook and `#[ic_cdk::post_upgrade]`) is a duplicate `canister_post_upgrade`
///   symbol error at build time. An upgrade without the rebuild is loud: `ws_poll` answers
///   `InvalidArgument` until the next update call rebuilds (see `ic_ws_canister::post_upgrade`).
///
/// Every update endpoint also refuses (traps before any entry is looked at) a call from a
/// principal the gateway policy refuses or with more than `max_entries_per_call` entries: the
/// IC runs `canister_inspect_message` for ingress only, not for calls from other canisters.
///
/// The handler cannot be `async` (start async work with `ic_cdk::futures::spawn`), generic or
/// a method. It runs inside the batched `ws_message` update call: if it traps, the whole batch
/// is rolled back and the gateway isolates the trapping entry by bisection. The call stops
/// taking entries once it has used `WsConfig::max_instructions_per_call` (the rest are
/// `NotProcessed` and sent again by the gateway).
///
/// Native tests of an app can drive the generated handlers without a replica, through the
/// runtime's `testing` module and the hidden table `__ic_ws_on_message::App::HANDLERS` (in the
/// module of `#[on_message]`): `ic_ws_canister::__private::ws_message(&HANDLERS, batch)` runs
/// exactly what the `ws_message` endpoint runs (see `examples/chat/src/tests.rs`).
///
/// A second `#[on_message]` in the crate is a compile error (`__ic_ws_only_one_on_message_per_canister`
/// defined multiple times); the generated items live beside the app's own `#[init]`,
/// `#[post_upgrade]` (with `post_upgrade = false`, see above), timers and stable structures,
/// which the macros never define (the runtime arms its own housekeeping timer through
/// `ic-cdk-timers`, which an app may use too).
#[proc_macro_attribute]
pub fn on_message(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_attribute(Kind::Message, attr.into(), item.into()).into()
}

/// Declares the handler called once when a client opens a new session.
///
/// `fn(client: ClientId)` or `fn(client: ClientId, args: A)`, returning `()` or
/// `Result<(), String>`. `A` is decoded from the open request's `args` (candid); an `Err`, or
/// arguments that do not decode, reject the open (`WsError::Rejected`) and nothing of the
/// session remains. Resuming a session does not call it again. Without `#[on_open]` every
/// open is accepted.
///
/// ```
/// use candid::{CandidType, Deserialize};
/// use ic_ws_canister::{on_message, on_open, ClientId};
///
/// #[derive(CandidType, Deserialize)]
/// struct Join { name: String }
///
/// #[on_open]
/// fn open(client: ClientId, join: Join) -> Result<(), String> {
///     if join.name.is_empty() { Err("pick a name".into()) } else { Ok(()) }
/// }
///
/// #[on_message]
/// fn message(client: ClientId, text: String) {}
/// # fn main() {}
/// ```
///
/// With arguments, it also generates the query `ws_open_args_type : () -> (opt A)`, which names
/// `A` in the candid interface for client bindings.
///
/// Arguments: `crate = "path"` as for `#[on_message]`, and `on_message_in = path::to::module`
/// when `#[on_message]` is in another module (default: the same module; a module with
/// `#[on_open]` and no `#[on_message]` is a compile error that says so). Name it also in a
/// module that glob-imports the one with `#[on_message]` (`use super::*;` then
/// `on_message_in = super`): without it the hidden marker's name is ambiguous (E0659).
#[proc_macro_attribute]
pub fn on_open(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_attribute(Kind::Open, attr.into(), item.into()).into()
}

/// Declares the handler called exactly once when a session ends, with the reason.
///
/// `fn(client: ClientId, reason: CloseReason)` or `fn(client: ClientId)`, returning `()`.
/// Called for a client's close, `ic_ws_canister::close`, expiry and queue overflow; a gateway
/// disconnect does not end a session (the client may resume). Without `#[on_close]` nothing is
/// called.
///
/// ```
/// use ic_ws_canister::{on_close, on_message, ClientId, CloseReason};
///
/// #[on_message]
/// fn message(client: ClientId, text: String) {}
///
/// #[on_close]
/// fn close(client: ClientId, reason: CloseReason) {
///     let _ = (client, reason);
/// }
/// # fn main() {}
/// ```
///
/// Arguments: `crate = "path"` and `on_message_in = path::to::module`, as for `#[on_open]`.
#[proc_macro_attribute]
pub fn on_close(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_attribute(Kind::Close, attr.into(), item.into()).into()
}

/// Parse, validate, generate. The original item is always emitted, also with errors, so that
/// the rest of the crate (and IDEs) keep seeing the function.
fn expand_attribute(
    kind: Kind,
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let mut errors = Errors::default();
    let config = attr::parse(kind, attr, &mut errors);
    let generated = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(func) => match Handler::from_fn(kind, &func, &mut errors) {
            Some(handler) if errors.is_empty() => expand::generate(&handler, &config),
            // A method sits in an `impl` block, where the fallback's items cannot go.
            _ if func.sig.receiver().is_some() => proc_macro2::TokenStream::new(),
            _ => expand::fallback(kind, &config),
        },
        Err(_) => {
            errors.error(
                &item,
                format!("`#[{}]` must be placed on a function", kind.attr_name()),
            );
            expand::fallback(kind, &config)
        }
    };
    let compile_errors = errors.to_compile_errors();
    quote! {
        #item
        #generated
        #compile_errors
    }
}
