//! The canister's view of the outside world: time, caller, own id, certified data, the
//! data certificate and the instruction counter.
//!
//! On wasm these are the IC system API (through ic-cdk). Natively (unit tests, `cargo test`
//! on the host) they read a per-thread fake that tests drive through [`crate::testing`], so the
//! whole runtime logic is testable without a replica.

use candid::Principal;

#[cfg(target_arch = "wasm32")]
mod imp {
    use candid::Principal;

    pub fn time_ns() -> u64 {
        ic_cdk::api::time()
    }
    pub fn caller() -> Principal {
        ic_cdk::api::msg_caller()
    }
    pub fn canister_id() -> Principal {
        ic_cdk::api::canister_self()
    }
    pub fn set_certified_data(data: &[u8; 32]) {
        ic_cdk::api::certified_data_set(data)
    }
    pub fn data_certificate() -> Option<Vec<u8>> {
        ic_cdk::api::data_certificate()
    }
    pub fn instruction_counter() -> u64 {
        ic_cdk::api::instruction_counter()
    }
    pub fn instruction_counter_peek() -> u64 {
        ic_cdk::api::instruction_counter()
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use candid::Principal;
    use std::cell::RefCell;

    /// The fake environment of one thread (each native test runs on its own thread).
    #[derive(Clone, Debug)]
    pub struct FakeEnv {
        pub time_ns: u64,
        pub caller: Principal,
        pub canister_id: Principal,
        pub certified_data: Option<[u8; 32]>,
        pub certificate: Option<Vec<u8>>,
        /// What the next read of the instruction counter returns.
        pub instructions: u64,
        /// Added to `instructions` by every read (a fake cost per step of work).
        pub instructions_per_read: u64,
    }

    thread_local! {
        pub static FAKE: RefCell<FakeEnv> = RefCell::new(FakeEnv {
            time_ns: 1_700_000_000_000_000_000,
            caller: Principal::anonymous(),
            canister_id: Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]),
            certified_data: None,
            certificate: Some(b"fake-certificate".to_vec()),
            instructions: 0,
            instructions_per_read: 0,
        });
    }

    pub fn time_ns() -> u64 {
        FAKE.with(|f| f.borrow().time_ns)
    }
    pub fn caller() -> Principal {
        FAKE.with(|f| f.borrow().caller)
    }
    pub fn canister_id() -> Principal {
        FAKE.with(|f| f.borrow().canister_id)
    }
    pub fn set_certified_data(data: &[u8; 32]) {
        FAKE.with(|f| f.borrow_mut().certified_data = Some(*data))
    }
    pub fn data_certificate() -> Option<Vec<u8>> {
        FAKE.with(|f| f.borrow().certificate.clone())
    }
    pub fn instruction_counter() -> u64 {
        FAKE.with(|f| {
            let mut f = f.borrow_mut();
            let n = f.instructions;
            f.instructions = n.saturating_add(f.instructions_per_read);
            n
        })
    }
    /// The fake counter without the fake cost of a read (sizing a batch is not a step of
    /// work in the tests' budget accounting).
    pub fn instruction_counter_peek() -> u64 {
        FAKE.with(|f| f.borrow().instructions)
    }
}

/// Current time in nanoseconds since the epoch (IC time on wasm).
pub(crate) fn time_ns() -> u64 {
    imp::time_ns()
}
/// The caller of the current message.
pub(crate) fn caller() -> Principal {
    imp::caller()
}
/// This canister's id.
pub(crate) fn canister_id() -> Principal {
    imp::canister_id()
}
/// Sets the 32 bytes the IC certifies for this canister.
pub(crate) fn set_certified_data(data: &[u8; 32]) {
    imp::set_certified_data(data)
}
/// The data certificate (only in non-replicated queries).
pub(crate) fn data_certificate() -> Option<Vec<u8>> {
    imp::data_certificate()
}
/// Instructions executed by the current message so far (`performance_counter(0)`).
pub(crate) fn instruction_counter() -> u64 {
    imp::instruction_counter()
}
/// [`instruction_counter`] for estimates (natively: without the fake's cost per read).
pub(crate) fn instruction_counter_peek() -> u64 {
    imp::instruction_counter_peek()
}
