//! The model of an annotated handler function and the checks on its signature.
//!
//! Checks here are the ones that can be made on syntax (arity, `async`, generics, receivers,
//! references). Whether the client parameter really is a `ClientId`, the message type is
//! candid, or the return type is `Result<(), String>` is left to the type checker: the
//! generated code places those types at the user's own tokens, so its errors point there.

use crate::errors::Errors;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

/// Which handler an attribute declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `#[on_open]`: a session is created.
    Open,
    /// `#[on_message]`: an app message arrived.
    Message,
    /// `#[on_close]`: a session ended.
    Close,
}

impl Kind {
    /// The attribute's name.
    pub fn attr_name(self) -> &'static str {
        match self {
            Kind::Open => "on_open",
            Kind::Message => "on_message",
            Kind::Close => "on_close",
        }
    }

    /// The signatures this kind accepts, for error messages.
    fn expected_signatures(self) -> &'static str {
        match self {
            Kind::Open => {
                "`fn(client: ClientId)` or `fn(client: ClientId, args: A)`, optionally followed by `identity: ClientIdentity`, returning `()` or `Result<(), String>`"
            }
            Kind::Message => {
                "`fn(client: ClientId, message: M)` returning `()` or `Result<(), String>`"
            }
            Kind::Close => "`fn(client: ClientId)` or `fn(client: ClientId, reason: CloseReason)`",
        }
    }

    /// Accepted numbers of parameters.
    fn arity(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Kind::Open | Kind::Close => 1..=2,
            Kind::Message => 2..=2,
        }
    }

    /// What the second parameter is called in messages.
    fn second_param(self) -> &'static str {
        match self {
            Kind::Open => "open arguments",
            Kind::Message => "message",
            Kind::Close => "close reason",
        }
    }
}

/// What the handler returns.
#[derive(Debug)]
pub enum Output {
    /// Nothing (`()`): the handler cannot fail.
    Unit,
    /// Some type, expected to be `Result<(), String>` (checked by the compiler at this type).
    Fallible(Box<Type>),
}

/// A validated handler.
#[derive(Debug)]
pub struct Handler {
    /// Which handler.
    pub kind: Kind,
    /// The function's name.
    pub ident: syn::Ident,
    /// Type of the first parameter (must be `ClientId`).
    pub client_ty: Box<Type>,
    /// Type of the second parameter, when present: message, open arguments or close reason.
    pub payload_ty: Option<Box<Type>>,
    /// `#[on_open]` only: the trailing `ClientIdentity` parameter (the verified principal).
    pub identity_ty: Option<Box<Type>>,
    /// Return type.
    pub output: Output,
}

impl Handler {
    /// Validates `func` as a `kind` handler. Returns `None` when the signature cannot be
    /// used; every problem is in `errors`.
    pub fn from_fn(kind: Kind, func: &ItemFn, errors: &mut Errors) -> Option<Handler> {
        let before = errors.len();
        let sig = &func.sig;
        let attr = kind.attr_name();

        if let Some(token) = &sig.asyncness {
            errors.error(
                token,
                format!(
                    "`#[{attr}]` handlers cannot be `async`: they run inside the batched update \
                     call; start async work with `ic_cdk::futures::spawn`"
                ),
            );
        }
        if let Some(token) = &sig.unsafety {
            errors.error(token, format!("`#[{attr}]` handlers cannot be `unsafe`"));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.error(
                &sig.generics,
                format!(
                    "`#[{attr}]` handlers cannot be generic: the message type must be concrete \
                     so that it can be decoded and named in the candid interface"
                ),
            );
        }
        if let Some(variadic) = &sig.variadic {
            errors.error(variadic, format!("`#[{attr}]` handlers cannot be variadic"));
        }

        let mut types = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(receiver) => errors.error(
                    receiver,
                    format!("`#[{attr}]` must be on a free function, not a method taking `self`"),
                ),
                FnArg::Typed(pat_type) => types.push(pat_type.ty.clone()),
            }
        }

        // `#[on_open]` may end with `identity: ClientIdentity` (recognised by the type's name;
        // the generated code places the type at the user's tokens, so a different type of
        // that name is a type error there).
        let mut identity_ty = None;
        if kind == Kind::Open
            && types.len() >= 2
            && types.last().is_some_and(|t| is_client_identity(t))
        {
            identity_ty = types.pop();
        } else if kind == Kind::Open && types.len() == 3 {
            if let Some(FnArg::Typed(third)) = sig.inputs.iter().nth(2) {
                errors.error(
                    &third.ty,
                    "the third parameter of an `#[on_open]` handler is the verified identity: \
                     `ClientIdentity` (ic_ws_canister::ClientIdentity, whose `principal` is an \
                     `Option<Principal>`)",
                );
            }
            types.pop();
        }

        let arity = kind.arity();
        if types.len() < *arity.start() {
            // Point at the parentheses' content, or the name when they are empty.
            let span = if sig.inputs.is_empty() {
                sig.ident.span()
            } else {
                sig.inputs.span()
            };
            errors.error_at(
                span,
                format!(
                    "`#[{attr}]` handler has {} parameter{}; expected {}",
                    types.len(),
                    if types.len() == 1 { "" } else { "s" },
                    kind.expected_signatures()
                ),
            );
        } else if types.len() > *arity.end() {
            for extra in sig.inputs.iter().skip(*arity.end()) {
                errors.error(
                    extra,
                    format!(
                        "unexpected parameter: `#[{attr}]` handlers take {}",
                        kind.expected_signatures()
                    ),
                );
            }
        }

        for (index, ty) in types.iter().enumerate().take(*arity.end()) {
            let what = if index == 0 {
                "the client id"
            } else {
                kind.second_param()
            };
            check_owned_concrete(ty, what, attr, errors);
        }

        let output = match &sig.output {
            ReturnType::Default => Output::Unit,
            ReturnType::Type(_, ty) if is_unit(ty) => Output::Unit,
            ReturnType::Type(_, ty) => {
                if kind == Kind::Close {
                    errors.error(
                        ty,
                        "`#[on_close]` handlers return `()`: a session that is closing cannot refuse",
                    );
                }
                check_owned_concrete(ty, "the return type", attr, errors);
                Output::Fallible(ty.clone())
            }
        };

        if errors.len() != before {
            return None;
        }
        let mut types = types.into_iter();
        let client_ty = types.next()?;
        Some(Handler {
            kind,
            ident: sig.ident.clone(),
            client_ty,
            payload_ty: types.next(),
            identity_ty,
            output,
        })
    }
}

/// A type whose last path segment is `ClientIdentity`.
fn is_client_identity(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "ClientIdentity" && s.arguments.is_none()),
        Type::Paren(p) => is_client_identity(&p.elem),
        _ => false,
    }
}

fn is_unit(ty: &Type) -> bool {
    match ty {
        Type::Tuple(tuple) => tuple.elems.is_empty(),
        Type::Paren(paren) => is_unit(&paren.elem),
        _ => false,
    }
}

/// Parameters are decoded into owned values and must be concrete types.
fn check_owned_concrete(ty: &Type, what: &str, attr: &str, errors: &mut Errors) {
    match ty {
        Type::Reference(reference) => {
            let owned = match &*reference.elem {
                Type::Path(path) if path.path.is_ident("str") => "String".to_string(),
                Type::Slice(slice) => {
                    format!("Vec<{}>", quote::ToTokens::to_token_stream(&slice.elem))
                }
                other => quote::ToTokens::to_token_stream(other).to_string(),
            };
            errors.error(
                reference,
                format!("`#[{attr}]`: {what} is passed by value; write `{owned}` instead of a reference"),
            )
        }
        Type::ImplTrait(_) | Type::Infer(_) => {
            errors.error(ty, format!("`#[{attr}]`: {what} must be a concrete type"))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{quote, ToTokens};

    fn check(kind: Kind, tokens: proc_macro2::TokenStream) -> Result<Handler, Vec<String>> {
        let func: ItemFn = syn::parse2(tokens).unwrap();
        let mut errors = Errors::default();
        match Handler::from_fn(kind, &func, &mut errors) {
            Some(handler) if errors.is_empty() => Ok(handler),
            _ => Err(errors.messages()),
        }
    }

    #[test]
    fn message_handler_with_unit_return() {
        let h = check(
            Kind::Message,
            quote!(
                fn on_msg(client: ClientId, msg: Chat) {}
            ),
        )
        .unwrap();
        assert_eq!(h.ident.to_string(), "on_msg");
        assert_eq!(h.client_ty.to_token_stream().to_string(), "ClientId");
        assert_eq!(h.payload_ty.to_token_stream().to_string(), "Chat");
        assert!(matches!(h.output, Output::Unit));
    }

    #[test]
    fn message_handler_with_result_return() {
        let h = check(
            Kind::Message,
            quote!(
                fn m(c: ClientId, msg: Vec<u8>) -> Result<(), String> {
                    Ok(())
                }
            ),
        )
        .unwrap();
        match h.output {
            Output::Fallible(ty) => {
                assert_eq!(ty.to_token_stream().to_string(), "Result < () , String >")
            }
            Output::Unit => panic!("expected a fallible output"),
        }
    }

    #[test]
    fn explicit_unit_return_is_unit() {
        let h = check(
            Kind::Close,
            quote!(
                fn c(c: ClientId) -> () {}
            ),
        )
        .unwrap();
        assert!(matches!(h.output, Output::Unit));
        assert!(h.payload_ty.is_none());
    }

    #[test]
    fn open_accepts_one_or_two_parameters() {
        assert!(check(
            Kind::Open,
            quote!(
                fn o(c: ClientId) {}
            )
        )
        .is_ok());
        let h = check(
            Kind::Open,
            quote!(
                fn o(c: ClientId, a: Join) -> Result<(), String> {
                    Ok(())
                }
            ),
        )
        .unwrap();
        assert_eq!(h.payload_ty.to_token_stream().to_string(), "Join");
    }

    #[test]
    fn message_needs_two_parameters() {
        let errors = check(
            Kind::Message,
            quote!(
                fn m(c: ClientId) {}
            ),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("has 1 parameter;"), "{errors:?}");
        let errors = check(
            Kind::Message,
            quote!(
                fn m() {}
            ),
        )
        .unwrap_err();
        assert!(errors[0].contains("has 0 parameters"), "{errors:?}");
    }

    #[test]
    fn every_extra_parameter_is_reported() {
        let errors = check(
            Kind::Message,
            quote!(
                fn m(c: ClientId, m: Chat, x: u8, y: u8) {}
            ),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| e.contains("unexpected parameter")));
    }

    #[test]
    fn all_problems_are_collected() {
        let errors = check(
            Kind::Message,
            quote!(
                async unsafe fn m<T>(&self, c: &ClientId, m: &Chat) -> impl Sized {}
            ),
        )
        .unwrap_err();
        let joined = errors.join("\n");
        for expected in [
            "cannot be `async`",
            "cannot be `unsafe`",
            "cannot be generic",
            "not a method taking `self`",
            "passed by value; write `Chat`",
            "the client id is passed by value",
            "the return type must be a concrete type",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in {joined}"
            );
        }
    }

    #[test]
    fn borrowed_text_and_slices_suggest_owned_types() {
        let errors = check(
            Kind::Message,
            quote!(
                fn m(c: ClientId, m: &str) {}
            ),
        )
        .unwrap_err();
        assert!(errors[0].contains("write `String`"), "{errors:?}");
        let errors = check(
            Kind::Message,
            quote!(
                fn m(c: ClientId, m: &[u8]) {}
            ),
        )
        .unwrap_err();
        assert!(errors[0].contains("write `Vec<u8>`"), "{errors:?}");
    }

    #[test]
    fn close_cannot_return_a_value() {
        let errors = check(
            Kind::Close,
            quote!(
                fn c(c: ClientId, r: CloseReason) -> Result<(), String> {
                    Ok(())
                }
            ),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("return `()`"));
    }

    #[test]
    fn where_clause_counts_as_generic() {
        let errors = check(
            Kind::Open,
            quote!(
                fn o(c: ClientId)
                where
                    u8: Copy,
                {
                }
            ),
        )
        .unwrap_err();
        assert!(errors[0].contains("cannot be generic"));
    }
}
