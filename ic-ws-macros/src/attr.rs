//! The attribute's own arguments: `#[on_message(crate = "...", outbound = Type,
//! inspect_message = false, gateway_filter = path)]`,
//! `#[on_open(crate = "...", on_message_in = path)]`.
//!
//! Parsing is tolerant: every bad argument is reported (pointing at its key or value) and
//! parsing goes on, so the user sees all mistakes at once.

use crate::errors::Errors;
use crate::handler::Kind;
use proc_macro2::TokenStream;
use syn::parse::{ParseStream, Parser};
use syn::{Ident, LitStr, Path, Token, Type};

/// Configuration given in the attribute's parentheses.
#[derive(Default)]
pub struct Config {
    /// `crate = "::path"`: where the runtime (`ic_ws_canister`) is, for apps that rename or
    /// re-export it. Default `::ic_ws_canister`.
    pub krate: Option<Path>,
    /// `outbound = Type` (on_message only): the app's outbound message type, named in the
    /// exported candid (`ws_app_types`) so clients can generate bindings for it.
    pub outbound: Option<Type>,
    /// `on_message_in = path` (on_open / on_close only): the module holding `#[on_message]`
    /// when the handler lives in another module.
    pub on_message_in: Option<Path>,
    /// `inspect_message = false` (on_message only): do not generate
    /// `canister_inspect_message` (an app with its own calls
    /// `ic_ws_canister::inspect_ws_call` from it).
    pub inspect_message: Option<bool>,
    /// `gateway_filter = path` (on_message only): a `fn(&Principal) -> bool` that decides which
    /// principals may act as gateways when the configuration's policy is
    /// `GatewayPolicy::Callback`; registered before every ws call is admitted.
    pub gateway_filter: Option<Path>,
    /// `post_upgrade = false | path::to::fn` (on_message only): by default `#[on_message]`
    /// generates `canister_post_upgrade`, which rebuilds the runtime's heap state during the
    /// upgrade; `path` names an app function `fn()` it calls first; `false` generates nothing
    /// (the app's own `#[ic_cdk::post_upgrade]` must call `ic_ws_canister::post_upgrade()`).
    pub post_upgrade: Option<PostUpgrade>,
    /// `handle = NAME` (on_message only, with `outbound`): generates
    /// `pub const NAME: Outbound<Outbound type>`, a `send` / `publish` the compiler checks
    /// against the declared outbound type (plain `send` takes any candid type).
    pub handle: Option<Ident>,
}

/// The `post_upgrade` argument.
#[derive(Clone)]
pub enum PostUpgrade {
    /// `post_upgrade = false`: no hook is generated.
    Off,
    /// `post_upgrade = true`: the default (the hook without an app function).
    Default,
    /// `post_upgrade = path`: the hook calls `path()` first.
    Call(Path),
}

impl Config {
    /// The runtime's root path (`::ic_ws_canister` unless overridden).
    pub fn krate(&self) -> Path {
        self.krate
            .clone()
            .unwrap_or_else(|| syn::parse_quote!(::ic_ws_canister))
    }
}

/// The keys each attribute accepts (for "unknown argument" messages).
fn accepted_keys(kind: Kind) -> &'static str {
    match kind {
        Kind::Message => {
            "`crate = \"path\"`, `outbound = Type`, `handle = NAME`, `inspect_message = false`, `gateway_filter = path`, `post_upgrade = false | path::to::fn`"
        }
        Kind::Open | Kind::Close => "`crate = \"path\"`, `on_message_in = path::to::module`",
    }
}

/// Parses the attribute arguments, reporting every problem into `errors`.
pub fn parse(kind: Kind, args: TokenStream, errors: &mut Errors) -> Config {
    let mut config = Config::default();
    let parser = |input: ParseStream<'_>| -> syn::Result<()> {
        while !input.is_empty() {
            parse_one(kind, input, &mut config, errors)?;
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(args) {
        errors.push(e);
    }
    if let (Some(handle), None) = (&config.handle, &config.outbound) {
        errors.error(
            handle,
            "`handle = NAME` needs `outbound = Type`: the handle sends exactly that type",
        );
    }
    config
}

/// One `key = value` pair. A syntax error ends parsing (returned); a semantic one (unknown
/// key, duplicate, wrong attribute) is recorded and parsing continues.
fn parse_one(
    kind: Kind,
    input: ParseStream<'_>,
    config: &mut Config,
    errors: &mut Errors,
) -> syn::Result<()> {
    // `crate` is a keyword: accept it explicitly, then any identifier.
    let key: Ident = if input.peek(Token![crate]) {
        let token: Token![crate] = input.parse()?;
        Ident::new("crate", token.span)
    } else {
        input.parse()?
    };
    input.parse::<Token![=]>()?;
    match key.to_string().as_str() {
        "crate" => {
            let lit: LitStr = input.parse()?;
            match lit.parse::<Path>() {
                Ok(path) => set_once(&mut config.krate, path, &key, errors),
                Err(_) => errors.error(
                    &lit,
                    "`crate` must be a path to the ic-ws-canister crate, such as \"::ic_ws_canister\"",
                ),
            }
        }
        "outbound" => {
            let ty: Type = input.parse()?;
            if kind == Kind::Message {
                set_once(&mut config.outbound, ty, &key, errors);
            } else {
                errors.error(
                    &key,
                    format!(
                        "`outbound` belongs on `#[on_message]`; `#[{}]` accepts {}",
                        kind.attr_name(),
                        accepted_keys(kind)
                    ),
                );
            }
        }
        "handle" => {
            let name: Ident = input.parse()?;
            if kind == Kind::Message {
                set_once(&mut config.handle, name, &key, errors);
            } else {
                errors.error(
                    &key,
                    format!(
                        "`handle` belongs on `#[on_message]`; `#[{}]` accepts {}",
                        kind.attr_name(),
                        accepted_keys(kind)
                    ),
                );
            }
        }
        "inspect_message" => {
            let lit: syn::LitBool = input.parse()?;
            if kind == Kind::Message {
                set_once(&mut config.inspect_message, lit.value, &key, errors);
            } else {
                errors.error(
                    &key,
                    format!(
                        "`inspect_message` belongs on `#[on_message]`; `#[{}]` accepts {}",
                        kind.attr_name(),
                        accepted_keys(kind)
                    ),
                );
            }
        }
        "gateway_filter" => {
            let path: Path = input.parse()?;
            if kind == Kind::Message {
                set_once(&mut config.gateway_filter, path, &key, errors);
            } else {
                errors.error(
                    &key,
                    format!(
                        "`gateway_filter` belongs on `#[on_message]`; `#[{}]` accepts {}",
                        kind.attr_name(),
                        accepted_keys(kind)
                    ),
                );
            }
        }
        "post_upgrade" => {
            let value = if input.peek(syn::LitBool) {
                let lit: syn::LitBool = input.parse()?;
                if lit.value {
                    PostUpgrade::Default
                } else {
                    PostUpgrade::Off
                }
            } else {
                PostUpgrade::Call(input.parse()?)
            };
            if kind == Kind::Message {
                set_once(&mut config.post_upgrade, value, &key, errors);
            } else {
                errors.error(
                    &key,
                    format!(
                        "`post_upgrade` belongs on `#[on_message]`; `#[{}]` accepts {}",
                        kind.attr_name(),
                        accepted_keys(kind)
                    ),
                );
            }
        }
        "on_message_in" => {
            let path: Path = input.parse()?;
            if kind == Kind::Message {
                errors.error(
                    &key,
                    format!(
                        "`on_message_in` belongs on `#[on_open]` / `#[on_close]`; `#[on_message]` accepts {}",
                        accepted_keys(Kind::Message)
                    ),
                );
            } else {
                set_once(&mut config.on_message_in, path, &key, errors);
            }
        }
        _ => {
            // Skip the value so the following arguments are still checked.
            let _: TokenStream = skip_value(input)?;
            errors.error(
                &key,
                format!(
                    "unknown argument `{key}`; `#[{}]` accepts {}",
                    kind.attr_name(),
                    accepted_keys(kind)
                ),
            );
        }
    }
    Ok(())
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &Ident, errors: &mut Errors) {
    if slot.is_some() {
        errors.error(key, format!("`{key}` is given more than once"));
    } else {
        *slot = Some(value);
    }
}

/// Consumes tokens up to the next top-level comma.
fn skip_value(input: ParseStream<'_>) -> syn::Result<TokenStream> {
    input.step(|cursor| {
        let mut rest = *cursor;
        let mut skipped = TokenStream::new();
        while let Some((tt, next)) = rest.token_tree() {
            if let proc_macro2::TokenTree::Punct(p) = &tt {
                if p.as_char() == ',' {
                    return Ok((skipped, rest));
                }
            }
            skipped.extend([tt]);
            rest = next;
        }
        Ok((skipped, rest))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{quote, ToTokens};

    fn parse_ok(kind: Kind, args: TokenStream) -> Config {
        let mut errors = Errors::default();
        let config = parse(kind, args, &mut errors);
        assert!(
            errors.is_empty(),
            "unexpected errors: {:?}",
            errors.messages()
        );
        config
    }

    fn parse_err(kind: Kind, args: TokenStream) -> Vec<String> {
        let mut errors = Errors::default();
        let _ = parse(kind, args, &mut errors);
        errors.messages()
    }

    #[test]
    fn empty_arguments_give_the_default_runtime_path() {
        let config = parse_ok(Kind::Message, quote!());
        assert_eq!(
            config.krate().to_token_stream().to_string(),
            ":: ic_ws_canister"
        );
        assert!(config.outbound.is_none());
    }

    #[test]
    fn crate_and_outbound_are_parsed() {
        let config = parse_ok(
            Kind::Message,
            quote!(crate = "::my_ws", outbound = Vec<types::Event>,),
        );
        assert_eq!(config.krate().to_token_stream().to_string(), ":: my_ws");
        assert_eq!(
            config.outbound.to_token_stream().to_string(),
            "Vec < types :: Event >"
        );
    }

    #[test]
    fn on_message_in_is_parsed_for_open_and_close() {
        for kind in [Kind::Open, Kind::Close] {
            let config = parse_ok(kind, quote!(on_message_in = crate::ws));
            assert_eq!(
                config.on_message_in.to_token_stream().to_string(),
                "crate :: ws"
            );
        }
    }

    #[test]
    fn every_bad_argument_is_reported() {
        let errors = parse_err(
            Kind::Message,
            quote!(
                colour = "blue",
                outbound = A,
                outbound = B,
                on_message_in = x
            ),
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("unknown argument `colour`"));
        assert!(errors[1].contains("`outbound` is given more than once"));
        assert!(errors[2].contains("`on_message_in` belongs on"));
    }

    #[test]
    fn post_upgrade_takes_false_or_a_path() {
        let config = parse_ok(Kind::Message, quote!(post_upgrade = false));
        assert!(matches!(config.post_upgrade, Some(PostUpgrade::Off)));
        let config = parse_ok(Kind::Message, quote!(post_upgrade = crate::upgraded));
        match config.post_upgrade {
            Some(PostUpgrade::Call(p)) => {
                assert_eq!(p.to_token_stream().to_string(), "crate :: upgraded")
            }
            _ => panic!("a path"),
        }
        let errors = parse_err(Kind::Open, quote!(post_upgrade = false));
        assert!(errors[0].contains("`post_upgrade` belongs on `#[on_message]`"));
    }

    #[test]
    fn outbound_is_refused_on_open() {
        let errors = parse_err(Kind::Open, quote!(outbound = Event));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("`outbound` belongs on `#[on_message]`"));
    }

    #[test]
    fn crate_must_be_a_path_string() {
        let errors = parse_err(Kind::Close, quote!(crate = "not a path"));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("must be a path"));
        let errors = parse_err(Kind::Close, quote!(crate = ic_ws_canister));
        assert_eq!(errors.len(), 1, "a bare path is a syntax error: {errors:?}");
    }
}
