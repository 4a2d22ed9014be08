//! Error collection: every problem found while parsing and validating is kept, so one
//! compilation shows them all, each pointing at its own token.

use proc_macro2::TokenStream;
use quote::ToTokens;
use std::fmt::Display;

/// Errors found so far.
#[derive(Default)]
pub struct Errors(Vec<syn::Error>);

impl Errors {
    /// Records an error spanning `tokens`.
    pub fn error(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.0.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error at an explicit span.
    pub fn error_at(&mut self, span: proc_macro2::Span, message: impl Display) {
        self.0.push(syn::Error::new(span, message));
    }

    /// Records a syntax error from syn.
    pub fn push(&mut self, error: syn::Error) {
        self.0.push(error);
    }

    /// Number of errors recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No error recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `compile_error!` invocations for every recorded error.
    pub fn to_compile_errors(&self) -> TokenStream {
        self.0.iter().map(syn::Error::to_compile_error).collect()
    }

    /// The messages, for the crate's unit tests.
    #[cfg(test)]
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}
