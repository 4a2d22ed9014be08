//! Canister lifecycle beyond install (stop, start, delete) and the part of the management
//! canister (`aaaaa-aa`) that canisters themselves may call (`raw_rand`).
//!
//! Controller checks and candid decoding of the management canister's ingress methods live in
//! the facade (`crate::management`); these are the engine operations they map onto.

use candid::Principal;
use sha2::{Digest, Sha256};

use super::{Engine, Reject, RejectCode};

impl Engine {
    /// Whether a canister is stopped (`None` if it does not exist).
    pub fn is_stopped(&self, canister: Principal) -> Option<bool> {
        self.canisters.get(&canister).map(|c| c.stopped)
    }

    /// `stop_canister`: the canister stops accepting messages (ingress, calls, queries, timers).
    /// Every message runs to completion here, so there are never open call contexts and the
    /// canister goes from running to stopped at once (no "stopping" phase). Returns false if
    /// the canister does not exist.
    pub fn stop_canister(&mut self, canister: Principal) -> bool {
        match self.canisters.get_mut(&canister) {
            Some(c) => {
                c.stopped = true;
                true
            }
            None => false,
        }
    }

    /// `start_canister`: a stopped canister runs again. Returns false if it does not exist.
    pub fn start_canister(&mut self, canister: Principal) -> bool {
        match self.canisters.get_mut(&canister) {
            Some(c) => {
                c.stopped = false;
                true
            }
            None => false,
        }
    }

    /// `delete_canister`: removes a stopped canister with its module and state. Its id is
    /// never reused. Errors: the canister does not exist (IC0301) or is not stopped (IC0510).
    pub fn delete_canister(&mut self, canister: Principal) -> Result<(), Reject> {
        let Some(c) = self.canisters.get(&canister) else {
            return Err(Reject::canister_not_found(canister));
        };
        if !c.stopped {
            return Err(Reject::new(
                RejectCode::CanisterError,
                510,
                format!("Canister {canister} must be stopped before it is deleted."),
            ));
        }
        self.canisters.remove(&canister);
        // Callbacks of a deleted canister can never run (nothing is in flight between
        // messages, but a cleanup of the maps keeps that true by construction).
        self.callbacks.retain(|_, cb| cb.canister != canister);
        self.contexts.retain(|_, cc| cc.canister != canister);
        Ok(())
    }

    /// 32 bytes for `raw_rand`: SHA-256 of a per-engine seed and a counter (unpredictable
    /// enough for tests, not cryptographic randomness).
    pub fn raw_rand(&mut self) -> [u8; 32] {
        self.rand_counter += 1;
        let mut h = Sha256::new();
        h.update(self.rand_seed);
        h.update(self.rand_counter.to_le_bytes());
        h.finalize().into()
    }

    /// The part of the management canister canisters can call here.
    pub(super) fn management_call(
        &mut self,
        _caller: Principal,
        method: &str,
        arg: &[u8],
    ) -> Result<Vec<u8>, Reject> {
        match method {
            "raw_rand" => {
                if candid::decode_args::<()>(arg).is_err() {
                    return Err(Reject::new(
                        RejectCode::CanisterReject,
                        408,
                        "Management canister: raw_rand takes no argument",
                    ));
                }
                let bytes = self.raw_rand().to_vec();
                candid::encode_one(bytes).map_err(|e| {
                    Reject::new(RejectCode::SysFatal, 0, format!("raw_rand encoding: {e}"))
                })
            }
            _ => Err(Reject::new(
                RejectCode::CanisterReject,
                407,
                format!(
                    "Management canister method '{method}' is not supported by ic-ws-replica when called by a \
                     canister (supported: raw_rand)"
                ),
            )),
        }
    }
}
