//! `install_code`: install, reinstall and upgrade (pre_upgrade, stable memory and certified
//! data handed over, post_upgrade), under one instruction budget, rolled back on any trap.

use super::*;

/// An instruction-limit failure of a part of an install reported with the limit of the whole
/// install_code message (what the IC reports), not with what was left of it.
fn whole_limit(e: ExecError, limit: u64) -> ExecError {
    match e {
        ExecError::InstructionLimit(_) => ExecError::InstructionLimit(limit),
        other => other,
    }
}

impl Engine {
    /// Installs `wasm` (plain or gzipped) in `canister`. `sender` must be a controller.
    ///
    /// `Install` needs an empty canister; `Reinstall` starts from scratch; `Upgrade` runs
    /// `canister_pre_upgrade`, keeps stable memory and certified data, and runs
    /// `canister_post_upgrade(arg)`. Any trap leaves the canister exactly as it was. The global
    /// timer is disarmed by every mode, and callbacks of calls still in flight are dropped.
    pub fn install(
        &mut self,
        canister: Principal,
        wasm: &[u8],
        arg: &[u8],
        mode: InstallMode,
        sender: Principal,
    ) -> Result<(), Reject> {
        self.begin_round();
        let result = self.install_inner(canister, wasm, arg, mode, sender);
        self.collect_logs(canister);
        result
    }

    fn install_inner(
        &mut self,
        id: Principal,
        wasm: &[u8],
        arg: &[u8],
        mode: InstallMode,
        sender: Principal,
    ) -> Result<(), Reject> {
        // One budget for the whole install_code message, as on the IC.
        let limit = self.config.install_instruction_limit;
        let mut used = 0u64;
        let time = self.round_time;
        let subnet = self.subnet.clone();
        let canister = self
            .canisters
            .get_mut(&id)
            .ok_or_else(|| Reject::canister_not_found(id))?;
        if !canister.controllers.contains(&sender) {
            return Err(Reject::new(
                RejectCode::CanisterError,
                512,
                format!("Only controllers of canister {id} can call ic00 method install_code"),
            ));
        }
        match mode {
            InstallMode::Install if canister.runtime.is_some() => {
                return Err(Reject::new(
                    RejectCode::CanisterError,
                    538,
                    format!("Canister {id} is already installed."),
                ));
            }
            InstallMode::Upgrade if canister.runtime.is_none() => {
                return Err(Reject::no_wasm_module(id))
            }
            _ => {}
        }
        let compiled = compile::compile(wasm).map_err(|e| {
            Reject::new(
                RejectCode::CanisterError,
                505,
                format!("Error from Canister {id}: Canister's Wasm module is not valid: {e}"),
            )
        })?;
        let version = canister
            .runtime
            .as_ref()
            .map(|rt| rt.host().version)
            .unwrap_or(canister.version)
            + 1;
        let mut host = Host::new(id, canister.controllers.clone(), subnet, Default::default());
        host.version = version;

        // Upgrade: pre_upgrade on the old module, left open so a failing post_upgrade can
        // roll it back.
        let mut pre_upgrade_open = false;
        if mode == InstallMode::Upgrade {
            let Some(old) = canister.runtime.as_mut() else {
                return Err(Reject::no_wasm_module(id));
            };
            if old.compiled().exports("canister_pre_upgrade") {
                let exec = Exec::new(ApiContext::PreUpgrade, sender, time, limit);
                let outcome = old.execute(
                    Entry::Export("canister_pre_upgrade"),
                    exec,
                    OnSuccess::Defer,
                );
                used = outcome.instructions;
                self.last_instructions = used;
                if let Err(e) = outcome.result {
                    return Err(Reject::from_exec(id, &e));
                }
                pre_upgrade_open = true;
            }
            host.stable = old.host().stable.snapshot();
            host.certified_data = old.host().certified_data.clone();
        }

        let init_name = if mode == InstallMode::Upgrade {
            "canister_post_upgrade"
        } else {
            "canister_init"
        };
        let fail = |canister: &mut Canister, reject: Reject| {
            if pre_upgrade_open {
                if let Some(old) = canister.runtime.as_mut() {
                    old.rollback();
                }
            }
            Err(reject)
        };
        // What pre_upgrade left (at least 1: a zero limit would mean "no limit set" to the
        // instrumentation; the start function and init/post_upgrade then fail at once).
        let left = limit.saturating_sub(used).max(1);
        let mut runtime = match Runtime::new(compiled, host, left) {
            Ok(rt) => rt,
            Err(e) => return fail(canister, Reject::from_exec(id, &whole_limit(e, limit))),
        };
        if runtime.compiled().exports(init_name) {
            let mut exec = Exec::new(ApiContext::Init, sender, time, left);
            exec.arg = arg.to_vec();
            let outcome = runtime.execute(Entry::Export(init_name), exec, OnSuccess::Commit);
            // The install_code message's total (pre_upgrade included).
            self.last_instructions = used + outcome.instructions;
            // Logs of a failed init would be lost with the runtime: keep them.
            let logs = std::mem::take(&mut runtime.host_mut().logs);
            self.logs.extend(logs.into_iter().map(|l| (id, l)));
            if let Err(e) = outcome.result {
                return fail(canister, Reject::from_exec(id, &whole_limit(e, limit)));
            }
        }
        let hash: [u8; 32] = Sha256::digest(wasm).into();
        canister.module_hash = Some(hash);
        canister.runtime = Some(runtime);
        canister.generation += 1;
        canister.version = version;
        Ok(())
    }
}
