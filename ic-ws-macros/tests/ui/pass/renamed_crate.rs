//! `crate = "..."`: the runtime reached through the app's own re-export; no other import of
//! it is needed, and the app's names (`ClientId`, `candid`, `Result`) do not disturb the
//! expansion.
mod rt {
    pub use ::ic_ws_canister::*;
}

#[allow(dead_code)]
type Result = ();
#[allow(dead_code)]
mod candid {}

#[rt::on_message(crate = "crate::rt")]
fn message(client: rt::ClientId, count: u64) {
    let _ = (client, count);
}

#[rt::on_close(crate = "crate::rt")]
fn close(client: rt::ClientId, reason: rt::CloseReason) {
    let _ = (client, reason);
}

fn main() {}
