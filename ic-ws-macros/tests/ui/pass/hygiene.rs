//! The app's own names never collide with the generated items or locals: items called like
//! the marker and the shims' variables, a handler called like its attribute, and shadowed
//! prelude names.
#![allow(dead_code, non_upper_case_globals, clippy::upper_case_acronyms)]

use ic_ws_canister::{on_close, on_message, on_open, ClientId, CloseReason};

struct App;
struct Handlers;
const HANDLERS: u8 = 0;
const ON_OPEN: u8 = 0;
static client: u8 = 0;
fn payload() {}
fn args() {}
fn reason() {}
struct Option;
struct Vec;
struct String;

#[on_open]
fn on_open(id: ClientId, name: std::string::String) -> Result<(), std::string::String> {
    let _ = (id, name);
    Ok(())
}

#[on_message]
fn on_message(message: ClientId, result: u32) {
    let _ = (message, result);
}

#[on_close]
fn on_close(id: ClientId, why: CloseReason) {
    let _ = (id, why);
}

fn main() {
    let _ = (App, Handlers, HANDLERS, ON_OPEN, Option, Vec, String);
    payload();
    args();
    reason();
}
