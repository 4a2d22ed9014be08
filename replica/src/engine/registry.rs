//! The canisters of the subnet: creation, ids, controllers, and what the facade reads about
//! them (module hash, certified data, methods, memory sizes, version, timers).

use super::*;

impl Engine {
    /// Creates an empty canister with the next IC-style id.
    pub fn create_canister(&mut self, controllers: Vec<Principal>) -> Principal {
        let id = canister_id_from_index(self.next_canister_index);
        self.next_canister_index += 1;
        self.canisters.insert(
            id,
            Canister {
                controllers,
                module_hash: None,
                runtime: None,
                generation: 0,
                version: 0,
                stopped: false,
            },
        );
        id
    }

    /// Whether the canister exists.
    pub fn canister_exists(&self, canister: Principal) -> bool {
        self.canisters.contains_key(&canister)
    }

    /// Ids of all canisters, in order.
    pub fn canister_ids(&self) -> Vec<Principal> {
        self.canisters.keys().copied().collect()
    }

    /// Controllers of a canister.
    pub fn controllers(&self, canister: Principal) -> Option<Vec<Principal>> {
        self.canisters.get(&canister).map(|c| c.controllers.clone())
    }

    /// Replaces the controllers (`update_settings`). Returns false if the canister does not exist.
    pub fn set_controllers(&mut self, canister: Principal, controllers: Vec<Principal>) -> bool {
        let Some(c) = self.canisters.get_mut(&canister) else {
            return false;
        };
        if let Some(rt) = c.runtime.as_mut() {
            rt.host_mut().controllers = controllers.clone();
        }
        c.controllers = controllers;
        true
    }

    /// SHA-256 of the installed module (of the bytes as installed, gzipped or not).
    pub fn module_hash(&self, canister: Principal) -> Option<[u8; 32]> {
        self.canisters.get(&canister).and_then(|c| c.module_hash)
    }

    /// The installed module's canister metadata (`icp:public` / `icp:private` sections).
    pub fn metadata(&self, canister: Principal) -> Vec<super::compile::Metadata> {
        self.canisters
            .get(&canister)
            .and_then(|c| c.runtime.as_ref())
            .map(|rt| rt.compiled().metadata.clone())
            .unwrap_or_default()
    }

    /// Certified data of a canister (empty if nothing installed or set).
    pub fn certified_data(&self, canister: Principal) -> Option<Vec<u8>> {
        let c = self.canisters.get(&canister)?;
        Some(
            c.runtime
                .as_ref()
                .map(|rt| rt.host().certified_data.clone())
                .unwrap_or_default(),
        )
    }

    /// Kind of an exported method (`None`: no such canister, module or method).
    pub fn method_kind(&self, canister: Principal, method: &str) -> Option<MethodKind> {
        let rt = self.canisters.get(&canister)?.runtime.as_ref()?;
        rt.compiled().methods.get(method).copied()
    }

    /// Stable memory size in bytes.
    pub fn stable_memory_size(&self, canister: Principal) -> Option<u64> {
        let c = self.canisters.get(&canister)?;
        Some(
            c.runtime
                .as_ref()
                .map(|rt| rt.host().stable.size_bytes())
                .unwrap_or(0),
        )
    }

    /// Wasm heap size in bytes, as the canister sees it.
    pub fn heap_size(&self, canister: Principal) -> Option<u64> {
        let c = self.canisters.get(&canister)?;
        Some(
            c.runtime
                .as_ref()
                .map(|rt| rt.committed_heap_bytes() as u64)
                .unwrap_or(0),
        )
    }

    /// `ic0.canister_version` of a canister.
    pub fn canister_version(&self, canister: Principal) -> Option<u64> {
        let c = self.canisters.get(&canister)?;
        Some(
            c.runtime
                .as_ref()
                .map(|rt| rt.host().version)
                .unwrap_or(c.version),
        )
    }

    /// The global timer deadline of a canister (`None`: disarmed or no such canister).
    pub fn global_timer(&self, canister: Principal) -> Option<u64> {
        let t = self
            .canisters
            .get(&canister)?
            .runtime
            .as_ref()?
            .host()
            .global_timer;
        (t != 0).then_some(t)
    }

    /// The earliest armed global timer of any canister (lets a driver sleep until then).
    pub fn next_timer_ns(&self) -> Option<u64> {
        self.canisters
            .keys()
            .filter_map(|id| self.global_timer(*id))
            .min()
    }

    /// Imports of the installed module that this replica does not implement (they trap).
    pub fn unsupported_imports(&self, canister: Principal) -> Option<Vec<String>> {
        let rt = self.canisters.get(&canister)?.runtime.as_ref()?;
        Some(rt.compiled().unsupported_imports.clone())
    }
}
