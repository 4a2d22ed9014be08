//! Code generation: the short shims around the app's handlers.
//!
//! # How the endpoints are generated exactly once
//!
//! The canister endpoints (`ws_open`, `ws_message`, `ws_close`, `ws_poll`) need all three
//! handlers, but each attribute only sees its own function. So:
//!
//! - `#[on_message]` (required, exactly once per canister) generates the endpoints, plus a
//!   hidden module `__ic_ws_on_message` holding a marker type `App`, and a private trait with
//!   *provided* associated constants `ON_OPEN` / `ON_CLOSE` set to the runtime's defaults,
//!   implemented for `App`. The endpoints read `App::ON_OPEN` and `App::ON_CLOSE`.
//! - `#[on_open]` / `#[on_close]` generate an *inherent* `impl App { const ON_OPEN: .. }`.
//!   Rust resolves `App::ON_OPEN` to an inherent associated item before any trait item, so an
//!   app that defines the handler gets it and one that does not falls back to the default
//!   (the same principle as autoref specialization, on a path instead of a method call; it is
//!   resolved at compile time, in a non-generic context, so it is sound on stable Rust).
//! - A duplicate `#[on_open]` / `#[on_close]` is a duplicate inherent constant (E0592); a
//!   duplicate `#[on_message]` in the same module a duplicate `__ic_ws_on_message` module, and
//!   in any module a duplicate crate-level `#[macro_export]` sentinel (E0428), both found by
//!   `cargo check`, before the linker would see two `canister_update ws_open` exports. The
//!   sentinel comes first in the generated code, so its error
//!   (`__ic_ws_only_one_on_message_per_canister` is defined multiple times, at both
//!   attributes) is the first one reported in either case; in the same module the duplicate
//!   marker names follow it (UI tests `duplicate_on_message*`).
//! - `#[on_open]` / `#[on_close]` without `#[on_message]` in their module: each also
//!   generates a fallback module of its own with a stand-in `App` and glob-imports it. An
//!   item of the module shadows a glob import, so the stand-in is only reached when
//!   `#[on_message]` is missing; it compiles, and a bound that only the real `App` satisfies
//!   (`__private::OnOpenNeedsOnMessage`, implemented by `#[on_message]`) fails with a
//!   `#[diagnostic::on_unimplemented]` message saying what is missing and how to add it.
//!   `#[on_close]` reaches the marker module through an alias (`__ic_ws_on_message_for_close`)
//!   so that the two fallbacks never provide the same name (two glob imports of different
//!   items under one name would be ambiguous). `on_message_in = path::to::module` names the
//!   module when the handlers are split over modules (no fallback then).
//!
//! `App::HANDLERS` (hidden) is the table of the three shims the endpoints pass to the runtime;
//! native tests of an app drive `ic_ws_canister::__private::ws_*` with it, without a replica.
//!
//! # Signature checks
//!
//! Arity, `async`, generics, receivers and references are checked on syntax
//! (`handler.rs`). Types are left to the compiler, but through small local traits
//! implemented only for the accepted types (`ClientId`, `CloseReason`, `()` /
//! `Result<(), String>`) and carrying `#[diagnostic::on_unimplemented]` messages: the shim
//! converts through `<UserType as Trait>`, written with the user's own type tokens, so a
//! wrong type is one error, at that type, saying what is expected; type aliases work.
//!
//! Everything the generated code names goes through the runtime's hidden path
//! (`::ic_ws_canister::__private`, or `crate = "..."`), never through the user's imports;
//! generated locals use mixed-site hygiene, so they cannot capture or shadow the app's names.

use crate::attr::{Config, PostUpgrade};
use crate::handler::{Handler, Kind, Output};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::{Ident, Path, Type};

/// Name of the hidden module `#[on_message]` generates (named by apps' native tests:
/// `__ic_ws_on_message::App::HANDLERS`).
const MARKER_MODULE: &str = "__ic_ws_on_message";
/// The alias of the marker module through which `#[on_close]` reaches it.
const CLOSE_ALIAS: &str = "__ic_ws_on_message_for_close";

/// The paths generated code uses.
struct Paths {
    /// The runtime crate's root (public API: `ClientId`, `CloseReason`, batch types).
    krate: Path,
    /// Its hidden macro support module.
    private: TokenStream,
}

impl Paths {
    fn new(config: &Config) -> Paths {
        let krate = config.krate();
        let private = quote!(#krate::__private);
        Paths { krate, private }
    }
}

/// Locals of the generated shims: mixed-site hygiene keeps them apart from the app's local
/// variables, and the `__ic_ws_` prefix from its items (a binding named like a `static` in
/// scope would be a pattern of that static, whatever the hygiene).
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The generated code for a valid handler.
pub fn generate(handler: &Handler, config: &Config) -> TokenStream {
    let paths = Paths::new(config);
    match handler.kind {
        Kind::Message => on_message(handler, config, &paths),
        Kind::Open => on_open(handler, config, &paths),
        Kind::Close => on_close(handler, config, &paths),
    }
}

/// What is still generated when the handler has errors: for `#[on_message]`, the marker
/// module, so that valid `#[on_open]` / `#[on_close]` do not add unrelated errors.
pub fn fallback(kind: Kind, config: &Config) -> TokenStream {
    match kind {
        Kind::Message => marker_module(&Paths::new(config)),
        Kind::Open | Kind::Close => TokenStream::new(),
    }
}

fn marker_module(paths: &Paths) -> TokenStream {
    let private = &paths.private;
    let module = format_ident!("{}", MARKER_MODULE);
    let close_alias = format_ident!("{}", CLOSE_ALIAS);
    quote! {
        /// Only one `#[on_message]` per canister: a second one redefines this crate-level
        /// macro, which the compiler reports wherever the two are (first,
        /// before the duplicate names below).
        #[doc(hidden)]
        #[macro_export]
        macro_rules! __ic_ws_only_one_on_message_per_canister {
            () => {};
        }
        #[doc(hidden)]
        #[allow(dead_code, non_snake_case)]
        pub(crate) mod #module {
            /// The handlers of this canister: `#[on_open]` and `#[on_close]` attach their
            /// shims to it as inherent constants, which take precedence over the defaults.
            pub struct App;

            // What `#[on_open]` / `#[on_close]` check: this module has an `#[on_message]`.
            impl #private::OnOpenNeedsOnMessage for App {}
            impl #private::OnCloseNeedsOnMessage for App {}
        }
        #[doc(hidden)]
        #[allow(unused_imports)]
        pub(crate) use self::#module as #close_alias;

    }
}

/// The name through which an `#[on_open]` / `#[on_close]` reaches the marker module.
fn marker_name(kind: Kind) -> Ident {
    match kind {
        Kind::Close => format_ident!("{}", CLOSE_ALIAS),
        Kind::Open | Kind::Message => format_ident!("{}", MARKER_MODULE),
    }
}

/// The path of the marker type as seen from an `#[on_open]` / `#[on_close]`.
fn marker_path(kind: Kind, config: &Config) -> TokenStream {
    let module = marker_name(kind);
    match &config.on_message_in {
        Some(path) => quote!(#path::#module::App),
        None => quote!(self::#module::App),
    }
}

/// For an `#[on_open]` / `#[on_close]`: the check that the marker is `#[on_message]`'s, and,
/// in the handler's own module, the fallback that makes a missing `#[on_message]` that
/// check's error (see the module docs).
fn require_on_message(handler: &Handler, config: &Config, paths: &Paths) -> TokenStream {
    let private = &paths.private;
    let marker = marker_path(handler.kind, config);
    let bound = match handler.kind {
        Kind::Close => quote!(#private::OnCloseNeedsOnMessage),
        Kind::Open | Kind::Message => quote!(#private::OnOpenNeedsOnMessage),
    };
    let fallback = match &config.on_message_in {
        Some(_) => TokenStream::new(),
        None => {
            let name = marker_name(handler.kind);
            let holder = format_ident!(
                "__ic_ws_no_on_message_{}_{}",
                handler.kind.attr_name(),
                handler.ident
            );
            quote! {
                #[doc(hidden)]
                #[allow(dead_code, non_snake_case, non_camel_case_types)]
                mod #holder {
                    pub(crate) mod #name {
                        pub(crate) struct App;
                    }
                }
                #[allow(unused_imports)]
                use self::#holder::*;
            }
        }
    };
    quote! {
        #fallback
        const _: () = {
            fn __ic_ws_requires_on_message<T: #bound>() {}
            let _ = __ic_ws_requires_on_message::<#marker>;
        };
    }
}

/// The export attributes of a canister method (`canister_update <name>` on wasm; natively
/// the same name with a dot, as ic-cdk does, so native builds link).
fn export_attrs(mode: &str, name: &str) -> TokenStream {
    let wasm = format!("canister_{mode} {name}");
    let native = format!("canister_{mode}.{name}");
    quote! {
        #[cfg_attr(target_family = "wasm", unsafe(export_name = #wasm))]
        #[cfg_attr(not(target_family = "wasm"), unsafe(export_name = #native))]
    }
}

/// Local traits that turn the shim's values into the handler's parameter types and its
/// return value into `Result<(), String>`. They are implemented only for the accepted types,
/// and the calls name them at the user's own type tokens, so a wrong client id, close reason
/// or return type is one error, at that type, saying what is expected.
fn signature_traits(kind: Kind, paths: &Paths) -> TokenStream {
    let krate = &paths.krate;
    let attr = kind.attr_name();
    let client_msg = format!(
        "the first parameter of an `#[{attr}]` handler is the client id: `ClientId`, not `{{Self}}`"
    );
    let reason_msg =
        "the second parameter of an `#[on_close]` handler is the `CloseReason`, not `{Self}`";
    let result_msg =
        format!("an `#[{attr}]` handler returns `()` or `Result<(), String>`, not `{{Self}}`");
    quote! {
        #[diagnostic::on_unimplemented(message = #client_msg, label = "expected `ClientId`")]
        trait __IcWsClientParam {
            fn __ic_ws_from(__ic_ws_client: #krate::ClientId) -> Self;
        }
        impl __IcWsClientParam for #krate::ClientId {
            fn __ic_ws_from(__ic_ws_client: #krate::ClientId) -> Self {
                __ic_ws_client
            }
        }
        #[diagnostic::on_unimplemented(message = #reason_msg, label = "expected `CloseReason`")]
        #[allow(dead_code)]
        trait __IcWsReasonParam {
            fn __ic_ws_from(__ic_ws_reason: #krate::CloseReason) -> Self;
        }
        impl __IcWsReasonParam for #krate::CloseReason {
            fn __ic_ws_from(__ic_ws_reason: #krate::CloseReason) -> Self {
                __ic_ws_reason
            }
        }
        #[diagnostic::on_unimplemented(message = #result_msg, label = "unsupported return type")]
        #[allow(dead_code)]
        trait __IcWsHandlerResult {
            fn __ic_ws_into(self) -> ::core::result::Result<(), ::std::string::String>;
        }
        impl __IcWsHandlerResult for () {
            fn __ic_ws_into(self) -> ::core::result::Result<(), ::std::string::String> {
                ::core::result::Result::Ok(())
            }
        }
        impl __IcWsHandlerResult for ::core::result::Result<(), ::std::string::String> {
            fn __ic_ws_into(self) -> ::core::result::Result<(), ::std::string::String> {
                self
            }
        }
    }
}

/// The client id argument, converted to the handler's declared type (see
/// [`signature_traits`]).
fn client_arg(handler: &Handler, client: &Ident) -> TokenStream {
    let ty = &handler.client_ty;
    quote!(<#ty as __IcWsClientParam>::__ic_ws_from(#client))
}

/// Calls the user's handler; evaluates to `Result<(), String>`.
fn call_handler(handler: &Handler, args: &[TokenStream]) -> TokenStream {
    let ident = &handler.ident;
    let output = match &handler.output {
        Output::Unit => quote!(()),
        Output::Fallible(ty) => quote!(#ty),
    };
    quote!(<#output as __IcWsHandlerResult>::__ic_ws_into(#ident(#(#args),*)))
}

fn on_message(handler: &Handler, config: &Config, paths: &Paths) -> TokenStream {
    let Paths { krate, private } = paths;
    let marker = marker_module(paths);
    let module = format_ident!("{}", MARKER_MODULE);
    let message_ty: &Type = match &handler.payload_ty {
        Some(ty) => ty,
        // Validation guarantees two parameters; stay total anyway.
        None => return marker,
    };

    let client = local("__ic_ws_client");
    let payload = local("__ic_ws_payload");
    let message = local("__ic_ws_message");
    let traits = signature_traits(Kind::Message, paths);
    let call = call_handler(handler, &[client_arg(handler, &client), quote!(#message)]);

    let outbound_ty = config.outbound.as_ref();
    let app_types_rets = match outbound_ty {
        Some(out) => quote!((::core::option::Option<#message_ty>, ::core::option::Option<#out>)),
        None => quote!((::core::option::Option<#message_ty>,)),
    };
    let app_types_value = match outbound_ty {
        Some(out) => quote!((
            ::core::option::Option::<#message_ty>::None,
            ::core::option::Option::<#out>::None,
        )),
        None => quote!((::core::option::Option::<#message_ty>::None,)),
    };

    // `handle = NAME`: a typed send / publish for the declared outbound type.
    let handle = match (&config.handle, outbound_ty) {
        (Some(name), Some(out)) => quote! {
            /// Generated by `#[on_message(outbound = .., handle = ..)]`: `send` / `publish`
            /// that accept only the declared outbound type.
            #[allow(dead_code)]
            pub const #name: #krate::Outbound<#out> = #krate::Outbound::new();
        },
        _ => quote!(),
    };
    let export_open = export_attrs("update", "ws_open");
    let export_message = export_attrs("update", "ws_message");
    let export_close = export_attrs("update", "ws_close");
    let export_poll = export_attrs("query", "ws_poll");
    let export_types = export_attrs("query", "ws_app_types");
    // `canister_inspect_message` (a system method: no mode, no method name). Natively it gets
    // a dotted name like the endpoints, so native builds link.
    // `gateway_filter = path`: registered before every admission (inspect and endpoints), so
    // it holds after an upgrade without the app registering it again.
    let register_filter = match &config.gateway_filter {
        Some(filter) => quote! { #krate::set_gateway_filter(#filter); },
        None => quote!(),
    };
    let inspect = if config.inspect_message == Some(false) {
        quote!()
    } else {
        quote! {
            /// Refuses oversized or disallowed ws calls before they execute (ingress only;
            /// the endpoints check the same again). See `ic_ws_canister::inspect_ws_call`.
            #[cfg_attr(target_family = "wasm", unsafe(export_name = "canister_inspect_message"))]
            #[cfg_attr(not(target_family = "wasm"), unsafe(export_name = "canister_inspect_message.ic_ws"))]
            fn __ic_ws_inspect_message() {
                #register_filter
                #private::inspect_message();
            }
        }
    };

    // `canister_post_upgrade`: the app's own function (if named), then the runtime's rebuild,
    // inside the upgrade. Natively the same (undotted) name as ic-cdk's lifecycle exports, so
    // an app that also has `#[ic_cdk::post_upgrade]` gets a duplicate-symbol error in every
    // build, not only in its wasm link.
    let post_upgrade = match &config.post_upgrade {
        Some(PostUpgrade::Off) => quote!(),
        other => {
            let app = match other {
                Some(PostUpgrade::Call(path)) => quote!(#path();),
                _ => quote!(),
            };
            quote! {
                /// Generated by `#[on_message]`: rebuilds the ws runtime's heap state during the
                /// upgrade (`post_upgrade = false` to write your own; see `ic_ws_canister::post_upgrade`).
                #[unsafe(export_name = "canister_post_upgrade")]
                fn __ic_ws_post_upgrade() {
                    #private::ic_cdk::futures::internals::in_executor_context(|| {
                        #app
                        #private::post_upgrade_with(&#module::App::HANDLERS);
                    });
                }
            }
        }
    };

    quote! {
        #marker
        #handle

        const _: () = {
            /// Defaults for handlers the app does not define; an inherent constant generated
            /// by `#[on_open]` / `#[on_close]` on the marker shadows these.
            #[allow(dead_code)]
            trait __IcWsDefaultHandlers {
                const ON_OPEN: fn(#krate::ClientId, &[u8])
                    -> ::core::result::Result<(), #krate::WsError> = #private::default_on_open;
                const ON_CLOSE: fn(#krate::ClientId, #krate::CloseReason) = #private::default_on_close;
            }
            impl __IcWsDefaultHandlers for #module::App {}

            fn __ic_ws_on_message(
                #client: #krate::ClientId,
                #payload: &[u8],
            ) -> ::core::result::Result<(), #krate::WsError> {
                #traits
                let #message = #private::decode_payload::<#message_ty>(#payload)?;
                #call.map_err(#krate::WsError::Rejected)
            }

            impl #module::App {
                /// The app's handlers as the runtime takes them; also the hook for native
                /// tests that drive `ic_ws_canister::__private::ws_*` without a replica.
                #[doc(hidden)]
                pub(crate) const HANDLERS: #private::Handlers = #private::Handlers {
                    on_open: #module::App::ON_OPEN,
                    on_message: __ic_ws_on_message,
                    on_close: #module::App::ON_CLOSE,
                };
            }

            /// Decoded argument of an endpoint; an argument that does not decode rejects the
            /// whole call (no entry of it can be attributed to a client).
            fn __ic_ws_argument<T>(
                __ic_ws_method: &str,
                __ic_ws_decoded: ::core::result::Result<T, #krate::WsError>,
            ) -> T {
                match __ic_ws_decoded {
                    ::core::result::Result::Ok(__ic_ws_value) => __ic_ws_value,
                    ::core::result::Result::Err(__ic_ws_error) => #private::ic_cdk::trap(
                        ::std::format!("{__ic_ws_method}: the argument does not decode: {__ic_ws_error}"),
                    ),
                }
            }

            fn __ic_ws_reply<T: #private::candid::utils::ArgumentEncoder>(__ic_ws_method: &str, __ic_ws_value: T) {
                match #private::candid::encode_args(__ic_ws_value) {
                    ::core::result::Result::Ok(__ic_ws_bytes) => #private::ic_cdk::api::msg_reply(__ic_ws_bytes),
                    ::core::result::Result::Err(__ic_ws_error) => #private::ic_cdk::trap(
                        ::std::format!("{__ic_ws_method}: the reply does not encode: {__ic_ws_error}"),
                    ),
                }
            }

            /// Refuses the whole call (a trap: nothing changes) when its caller may not act as
            /// a gateway or it carries more entries than the canister allows per call.
            fn __ic_ws_admit(__ic_ws_method: &str, __ic_ws_entries: usize) {
                #register_filter
                if let ::core::result::Result::Err(__ic_ws_error) = #private::admit_call(__ic_ws_method, __ic_ws_entries) {
                    #private::ic_cdk::trap(__ic_ws_error);
                }
            }

            #inspect

            #post_upgrade

            fn __ic_ws_arg_bytes() -> ::std::vec::Vec<u8> {
                #private::ic_cdk::api::msg_arg_data()
            }

            #export_open
            fn __ic_ws_endpoint_ws_open() {
                #private::ic_cdk::futures::internals::in_executor_context(|| {
                    let __ic_ws_batch = __ic_ws_argument(
                        "ws_open",
                        #private::decode_payload::<#krate::OpenBatch>(&__ic_ws_arg_bytes()),
                    );
                    __ic_ws_admit("ws_open", __ic_ws_batch.opens.len());
                    __ic_ws_reply("ws_open", (#private::ws_open(&#module::App::HANDLERS, __ic_ws_batch),));
                });
            }

            #export_message
            fn __ic_ws_endpoint_ws_message() {
                #private::ic_cdk::futures::internals::in_executor_context(|| {
                    let __ic_ws_batch = __ic_ws_argument(
                        "ws_message",
                        #private::decode_payload::<#krate::MessageBatch>(&__ic_ws_arg_bytes()),
                    );
                    __ic_ws_admit("ws_message", __ic_ws_batch.messages.len());
                    __ic_ws_reply("ws_message", (#private::ws_message(&#module::App::HANDLERS, __ic_ws_batch),));
                });
            }

            #export_close
            fn __ic_ws_endpoint_ws_close() {
                #private::ic_cdk::futures::internals::in_executor_context(|| {
                    let __ic_ws_batch = __ic_ws_argument(
                        "ws_close",
                        #private::decode_payload::<#krate::CloseBatch>(&__ic_ws_arg_bytes()),
                    );
                    __ic_ws_admit("ws_close", __ic_ws_batch.clients.len());
                    __ic_ws_reply("ws_close", (#private::ws_close(&#module::App::HANDLERS, __ic_ws_batch),));
                });
            }

            #export_poll
            fn __ic_ws_endpoint_ws_poll() {
                #private::ic_cdk::futures::internals::in_query_executor_context(|| {
                    let __ic_ws_request = __ic_ws_argument(
                        "ws_poll",
                        #private::decode_payload::<#krate::PollRequest>(&__ic_ws_arg_bytes()),
                    );
                    __ic_ws_reply("ws_poll", (#private::ws_poll(__ic_ws_request),));
                });
            }

            /// Names the app's message types in the candid interface (bindings for clients);
            /// the values are always `null`.
            #export_types
            fn __ic_ws_endpoint_ws_app_types() {
                #private::ic_cdk::futures::internals::in_query_executor_context(|| {
                    __ic_ws_reply("ws_app_types", #app_types_value);
                });
            }

            // Candid declarations of the endpoints for `ic_cdk::export_candid!()` (these
            // functions are never called; only their signatures are read).
            #[doc = "ic-ws (generated): opens or resumes client sessions relayed by the calling gateway; one result per request, in order (docs/protocol.md)."]
            #[#private::candid::candid_method(update, rename = "ws_open")]
            #[allow(dead_code, unused_variables)]
            fn __ic_ws_candid_ws_open(
                __ic_ws_arg: #krate::OpenBatch,
            ) -> ::std::vec::Vec<#krate::OpenResult> {
                ::core::unreachable!()
            }
            #[doc = "ic-ws (generated): signed client messages relayed by the calling gateway, handled in order; one result per message."]
            #[#private::candid::candid_method(update, rename = "ws_message")]
            #[allow(dead_code, unused_variables)]
            fn __ic_ws_candid_ws_message(
                __ic_ws_arg: #krate::MessageBatch,
            ) -> ::std::vec::Vec<#krate::MessageResult> {
                ::core::unreachable!()
            }
            #[doc = "ic-ws (generated): the calling gateway lost these clients' connections; their sessions stay resumable."]
            #[#private::candid::candid_method(update, rename = "ws_close")]
            #[allow(dead_code, unused_variables)]
            fn __ic_ws_candid_ws_close(
                __ic_ws_arg: #krate::CloseBatch,
            ) -> ::std::vec::Vec<#krate::CloseResult> {
                ::core::unreachable!()
            }
            #[doc = "ic-ws (generated): certified outbound messages for the calling gateway's clients from `cursor`."]
            #[#private::candid::candid_method(query, rename = "ws_poll")]
            #[allow(dead_code, unused_variables)]
            fn __ic_ws_candid_ws_poll(__ic_ws_arg: #krate::PollRequest) -> #krate::PollResult {
                ::core::unreachable!()
            }
            #[doc = "ic-ws (generated): names the app's inbound and outbound message types for client bindings; always returns nulls."]
            #[#private::candid::candid_method(query, rename = "ws_app_types")]
            #[allow(dead_code)]
            fn __ic_ws_candid_ws_app_types() -> #app_types_rets {
                ::core::unreachable!()
            }
        };
    }
}

fn on_open(handler: &Handler, config: &Config, paths: &Paths) -> TokenStream {
    let Paths { krate, private } = paths;
    let marker = marker_path(Kind::Open, config);
    let requirement = require_on_message(handler, config, paths);
    let client = local("__ic_ws_client");
    let args_bytes = local("__ic_ws_args");
    let mut call_args = vec![client_arg(handler, &client)];
    let (decode, open_args_query) = match &handler.payload_ty {
        Some(args_ty) => {
            let args = local("__ic_ws_open_args");
            call_args.push(quote!(#args));
            let decode = quote! {
                let #args = #private::decode_payload::<#args_ty>(#args_bytes).map_err(|__ic_ws_error| {
                    #krate::WsError::DecodeError(::std::format!("the open arguments do not decode ({__ic_ws_error})"))
                })?;
            };
            (decode, open_args_query(args_ty, paths))
        }
        None => (quote!(let _ = #args_bytes;), TokenStream::new()),
    };
    if let Some(identity_ty) = &handler.identity_ty {
        call_args.push(quote!({
            let __ic_ws_identity: #identity_ty = #private::client_identity(#client);
            __ic_ws_identity
        }));
    }
    let traits = signature_traits(Kind::Open, paths);
    let call = call_handler(handler, &call_args);
    quote! {
        impl #marker {
            #[doc(hidden)]
            #[allow(dead_code)]
            pub(crate) const ON_OPEN: fn(#krate::ClientId, &[u8])
                -> ::core::result::Result<(), #krate::WsError> = {
                fn __ic_ws_on_open(
                    #client: #krate::ClientId,
                    #args_bytes: &[u8],
                ) -> ::core::result::Result<(), #krate::WsError> {
                    #traits
                    #decode
                    #call.map_err(#krate::WsError::Rejected)
                }
                __ic_ws_on_open
            };
        }
        #requirement
        #open_args_query
    }
}

/// `ws_open_args_type : () -> (opt A) query`: names the open arguments' type in the candid
/// interface (`OpenRequest.args` is its candid encoding).
fn open_args_query(args_ty: &Type, paths: &Paths) -> TokenStream {
    let Paths { private, .. } = paths;
    let export = export_attrs("query", "ws_open_args_type");
    quote! {
        const _: () = {
            #export
            fn __ic_ws_endpoint_ws_open_args_type() {
                #private::ic_cdk::futures::internals::in_query_executor_context(|| {
                    match #private::candid::encode_one(::core::option::Option::<#args_ty>::None) {
                        ::core::result::Result::Ok(__ic_ws_bytes) => #private::ic_cdk::api::msg_reply(__ic_ws_bytes),
                        ::core::result::Result::Err(__ic_ws_error) => #private::ic_cdk::trap(
                            ::std::format!("ws_open_args_type: the reply does not encode: {__ic_ws_error}"),
                        ),
                    }
                });
            }
            #[doc = "ic-ws (generated): names the type of the open arguments (`OpenRequest.args`) for client bindings; always returns null."]
            #[#private::candid::candid_method(query, rename = "ws_open_args_type")]
            #[allow(dead_code)]
            fn __ic_ws_candid_ws_open_args_type() -> ::core::option::Option<#args_ty> {
                ::core::unreachable!()
            }
        };
    }
}

fn on_close(handler: &Handler, config: &Config, paths: &Paths) -> TokenStream {
    let Paths { krate, .. } = paths;
    let marker = marker_path(Kind::Close, config);
    let requirement = require_on_message(handler, config, paths);
    let client = local("__ic_ws_client");
    let reason = local("__ic_ws_reason");
    let mut call_args = vec![client_arg(handler, &client)];
    let ignore_reason = match &handler.payload_ty {
        Some(reason_ty) => {
            call_args.push(quote!(<#reason_ty as __IcWsReasonParam>::__ic_ws_from(#reason)));
            TokenStream::new()
        }
        None => quote!(let _ = #reason;),
    };
    let traits = signature_traits(Kind::Close, paths);
    let call = call_handler(handler, &call_args);
    quote! {
        impl #marker {
            #[doc(hidden)]
            #[allow(dead_code)]
            pub(crate) const ON_CLOSE: fn(#krate::ClientId, #krate::CloseReason) = {
                fn __ic_ws_on_close(#client: #krate::ClientId, #reason: #krate::CloseReason) {
                    #traits
                    #ignore_reason
                    // Validation made the return type `()`: nothing to report.
                    let _ = #call;
                }
                __ic_ws_on_close
            };
        }
        #requirement
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Errors;
    use quote::quote;

    fn expand(kind: Kind, config: Config, func: TokenStream) -> String {
        let func: syn::ItemFn = syn::parse2(func).unwrap();
        let mut errors = Errors::default();
        let handler = Handler::from_fn(kind, &func, &mut errors).unwrap();
        generate(&handler, &config).to_string()
    }

    #[test]
    fn on_message_exports_every_endpoint_once() {
        let code = expand(
            Kind::Message,
            Config::default(),
            quote!(
                fn m(c: ClientId, m: Chat) {}
            ),
        );
        for export in [
            "\"canister_update ws_open\"",
            "\"canister_update ws_message\"",
            "\"canister_update ws_close\"",
            "\"canister_query ws_poll\"",
            "\"canister_query ws_app_types\"",
            "\"canister_inspect_message\"",
            "\"canister_post_upgrade\"",
        ] {
            assert_eq!(code.matches(export).count(), 1, "{export} in {code}");
        }
        assert!(code.contains("macro_rules ! __ic_ws_only_one_on_message_per_canister"));
        // Every update endpoint admits its call before the runtime sees it.
        assert_eq!(code.matches("__ic_ws_admit (\"ws_").count(), 3, "{code}");
    }

    #[test]
    fn gateway_filter_is_registered_before_every_admission() {
        let config = Config {
            gateway_filter: Some(syn::parse_quote!(my_filter)),
            ..Config::default()
        };
        let code = expand(
            Kind::Message,
            config,
            quote!(
                fn m(c: ClientId, m: Chat) {}
            ),
        );
        // Once in `canister_inspect_message`, once in the admission of every endpoint.
        assert_eq!(
            code.matches("set_gateway_filter (my_filter)").count(),
            2,
            "{code}"
        );
    }

    #[test]
    fn post_upgrade_calls_the_apps_function_first_or_is_left_to_the_app() {
        let code = |post_upgrade| {
            expand(
                Kind::Message,
                Config {
                    post_upgrade,
                    ..Config::default()
                },
                quote!(
                    fn m(c: ClientId, m: Chat) {}
                ),
            )
        };
        let off = code(Some(PostUpgrade::Off));
        assert!(!off.contains("canister_post_upgrade"), "{off}");
        let with_app = code(Some(PostUpgrade::Call(syn::parse_quote!(crate::upgraded))));
        let app_at = with_app
            .find("crate :: upgraded ()")
            .expect("the app's function");
        let rebuild_at = with_app
            .find("__private :: post_upgrade_with")
            .expect("the rebuild");
        assert!(app_at < rebuild_at, "{with_app}");
    }

    #[test]
    fn inspect_message_can_be_left_to_the_app() {
        let config = Config {
            inspect_message: Some(false),
            ..Config::default()
        };
        let code = expand(
            Kind::Message,
            config,
            quote!(
                fn m(c: ClientId, m: Chat) {}
            ),
        );
        assert!(!code.contains("canister_inspect_message"), "{code}");
        assert!(code.contains("\"canister_update ws_open\""), "{code}");
    }

    #[test]
    fn open_and_close_export_nothing_but_attach_to_the_marker() {
        let open = expand(
            Kind::Open,
            Config::default(),
            quote!(
                fn o(c: ClientId) {}
            ),
        );
        let close = expand(
            Kind::Close,
            Config::default(),
            quote!(
                fn c(c: ClientId, r: CloseReason) {}
            ),
        );
        for (code, constant, marker) in [
            (&open, "ON_OPEN", "__ic_ws_on_message"),
            (&close, "ON_CLOSE", "__ic_ws_on_message_for_close"),
        ] {
            assert!(!code.contains("export_name"), "{code}");
            assert!(
                code.contains(&format!("impl self :: {marker} :: App")),
                "{code}"
            );
            assert!(code.contains(&format!("const {constant}")), "{code}");
            // The stand-in for a missing `#[on_message]`, glob-imported, and the check.
            assert!(
                code.contains(&format!("pub (crate) mod {marker}")),
                "{code}"
            );
            assert!(code.contains("NeedsOnMessage"), "{code}");
        }
    }

    #[test]
    fn open_with_arguments_names_their_type_in_a_query() {
        let code = expand(
            Kind::Open,
            Config::default(),
            quote!(
                fn o(c: ClientId, a: Join) {}
            ),
        );
        assert_eq!(
            code.matches("\"canister_query ws_open_args_type\"").count(),
            1
        );
        assert!(code.contains("Option < Join >"), "{code}");
    }

    #[test]
    fn crate_override_and_module_path_are_used_everywhere() {
        let config = Config {
            krate: Some(syn::parse_quote!(crate::rt)),
            on_message_in: Some(syn::parse_quote!(crate::ws)),
            outbound: None,
            inspect_message: None,
            gateway_filter: None,
            post_upgrade: None,
            handle: None,
        };
        let code = expand(
            Kind::Close,
            config,
            quote!(
                fn c(c: ClientId) {}
            ),
        );
        assert!(!code.contains("ic_ws_canister"), "{code}");
        assert!(code.contains("crate :: rt :: ClientId"), "{code}");
        assert!(
            code.contains("impl crate :: ws :: __ic_ws_on_message_for_close :: App"),
            "{code}"
        );
        // With `on_message_in`, no stand-in in this module: the named one must have it.
        assert!(!code.contains("__ic_ws_no_on_message"), "{code}");
    }

    #[test]
    fn fallback_keeps_the_marker_only_for_on_message() {
        assert!(fallback(Kind::Message, &Config::default())
            .to_string()
            .contains("__ic_ws_on_message"));
        assert!(fallback(Kind::Open, &Config::default()).is_empty());
        assert!(fallback(Kind::Close, &Config::default()).is_empty());
    }
}
