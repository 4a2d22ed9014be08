//! Execution and scheduling: ingress updates and everything they cause downstream (call
//! contexts, callbacks, the message queue), queries, inspect_message, timers and heartbeats.

use super::*;

impl Engine {
    /// Executes an update call (or a query method called as an update) and everything it causes
    /// downstream, then returns the answer of the call.
    pub fn update(
        &mut self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<Vec<u8>, Reject> {
        self.begin_round();
        if canister == Principal::management_canister() {
            return Err(Reject::new(
                RejectCode::CanisterReject,
                407,
                format!(
                    "ic-ws-replica: management canister method '{method}' cannot be called through Engine::update; \
                     use the replica's canister management functions"
                ),
            ));
        }
        if !self.canister_exists(canister) {
            return Err(Reject::canister_not_found(canister));
        }
        let id = self.fresh_id();
        let instructions =
            self.run_method(canister, method, arg.to_vec(), caller, Origin::Ingress(id));
        self.last_instructions = instructions;
        self.drain();
        self.ingress_results.remove(&id).unwrap_or_else(|| {
            Err(Reject::new(
                RejectCode::SysTransient,
                202,
                format!(
                    "the call to {canister} did not complete within {MAX_MESSAGES_PER_DRAIN} messages \
                     (a canister calling itself forever?); the rest stays queued"
                ),
            ))
        })
    }

    /// Starts executing `method` in a new call context; returns the instructions used.
    fn run_method(
        &mut self,
        id: Principal,
        method: &str,
        arg: Vec<u8>,
        caller: Principal,
        origin: Origin,
    ) -> u64 {
        let limit = self.config.update_instruction_limit;
        let time = self.round_time;
        let Some(canister) = self.canisters.get_mut(&id) else {
            self.answer(origin, Err(Reject::canister_not_found(id)));
            return 0;
        };
        if canister.stopped {
            self.answer(origin, Err(Reject::stopped(id)));
            return 0;
        }
        let Some(rt) = canister.runtime.as_mut() else {
            self.answer(origin, Err(Reject::no_wasm_module(id)));
            return 0;
        };
        let (context, export, on_success) = match rt.compiled().methods.get(method) {
            Some(MethodKind::Update) => (
                ApiContext::Update,
                format!("canister_update {method}"),
                OnSuccess::Commit,
            ),
            Some(MethodKind::Query) => (
                ApiContext::ReplicatedQuery,
                format!("canister_query {method}"),
                OnSuccess::Rollback,
            ),
            Some(MethodKind::CompositeQuery) => {
                let reject = Reject::new(
                    RejectCode::CanisterError,
                    527,
                    format!("Error from Canister {id}: Composite query cannot be called in replicated mode."),
                );
                self.answer(origin, Err(reject));
                return 0;
            }
            None => {
                self.answer(origin, Err(Reject::method_not_found(id, "update", method)));
                return 0;
            }
        };
        let mut exec = Exec::new(context, caller, time, limit);
        exec.arg = arg;
        exec.can_respond = true;
        let outcome = rt.execute(Entry::Export(&export), exec, on_success);
        let instructions = outcome.instructions;
        let cc = self.fresh_id();
        self.contexts.insert(
            cc,
            CallContext {
                canister: id,
                caller,
                origin,
                responded: false,
                outstanding: 0,
                instructions: 0,
                last_error: None,
            },
        );
        self.after_execution(cc, outcome);
        instructions
    }

    /// Records what a message of call context `cc` did: queues its calls, delivers its answer,
    /// closes the context when nothing can answer it any more.
    fn after_execution(&mut self, cc_id: u64, outcome: Outcome) {
        let Some(cc) = self.contexts.get_mut(&cc_id) else {
            return;
        };
        let canister = cc.canister;
        cc.instructions += outcome.instructions;
        let generation = self
            .canisters
            .get(&canister)
            .map(|c| c.generation)
            .unwrap_or(0);
        let mut answer = None;
        match outcome.result {
            Ok(()) => {
                for call in outcome.outgoing {
                    let callback = self.next_id + 1;
                    self.next_id = callback;
                    self.callbacks.insert(
                        callback,
                        Callback {
                            call_context: cc_id,
                            canister,
                            generation,
                            reply: call.reply,
                            reject: call.reject,
                            cleanup: call.cleanup,
                        },
                    );
                    cc.outstanding += 1;
                    self.queue.push_back(Message::Request {
                        from: canister,
                        to: call.callee,
                        method: call.method,
                        arg: call.arg,
                        callback,
                    });
                }
                if let Some(response) = outcome.response {
                    cc.responded = true;
                    answer = Some(match response {
                        Response::Reply(bytes) => Ok(bytes),
                        Response::Reject(message) => Err(Reject::explicit(message)),
                    });
                }
            }
            Err(e) => cc.last_error = Some(Reject::from_exec(canister, &e)),
        }
        let origin = cc.origin;
        if answer.is_none() && !cc.responded && cc.outstanding == 0 {
            cc.responded = true;
            answer = Some(Err(cc
                .last_error
                .take()
                .unwrap_or_else(|| Reject::did_not_reply(canister))));
        }
        if cc.responded && cc.outstanding == 0 {
            self.contexts.remove(&cc_id);
        }
        self.collect_logs(canister);
        if let Some(answer) = answer {
            self.answer(origin, answer);
        }
    }

    fn answer(&mut self, origin: Origin, result: Result<Vec<u8>, Reject>) {
        match origin {
            Origin::Ingress(id) => {
                self.ingress_results.insert(id, result);
            }
            Origin::Canister { callback } => {
                self.queue.push_back(Message::Response {
                    callback,
                    result: result.map_err(|r| (r.code, r.message)),
                });
            }
            Origin::System => {
                if let Err(reject) = result {
                    tracing::debug!(target: "ic_ws_replica::engine", "system task failed: {reject}");
                }
            }
        }
    }

    /// Processes queued messages until none is left (or the per-drain budget is spent).
    fn drain(&mut self) {
        for _ in 0..MAX_MESSAGES_PER_DRAIN {
            let Some(message) = self.queue.pop_front() else {
                return;
            };
            match message {
                Message::Request {
                    from,
                    to,
                    method,
                    arg,
                    callback,
                } => {
                    let origin = Origin::Canister { callback };
                    if to == Principal::management_canister() {
                        let result = self.management_call(from, &method, &arg);
                        self.answer(origin, result);
                    } else {
                        self.run_method(to, &method, arg, from, origin);
                    }
                }
                Message::Response { callback, result } => self.deliver_response(callback, result),
            }
        }
    }

    fn deliver_response(
        &mut self,
        callback_id: u64,
        result: Result<Vec<u8>, (RejectCode, String)>,
    ) {
        let Some(cb) = self.callbacks.remove(&callback_id) else {
            return;
        };
        let limit = self.config.update_instruction_limit;
        let time = self.round_time;
        let Some(cc) = self.contexts.get_mut(&cb.call_context) else {
            return;
        };
        cc.outstanding = cc.outstanding.saturating_sub(1);
        let (caller, can_respond, cc_instructions) = (cc.caller, !cc.responded, cc.instructions);
        let runtime = self
            .canisters
            .get_mut(&cb.canister)
            .filter(|c| c.generation == cb.generation)
            .and_then(|c| c.runtime.as_mut());
        let Some(rt) = runtime else {
            // The module was replaced while the call was in flight: the callback is gone.
            let outcome = Outcome {
                result: Ok(()),
                response: None,
                outgoing: Vec::new(),
                instructions: 0,
                accepted: false,
            };
            self.after_execution(cb.call_context, outcome);
            return;
        };
        let (context, closure, mut exec) = match result {
            Ok(bytes) => {
                let mut exec = Exec::new(ApiContext::ReplyCallback, caller, time, limit);
                exec.arg = bytes;
                (ApiContext::ReplyCallback, cb.reply, exec)
            }
            Err((code, message)) => {
                let mut exec = Exec::new(ApiContext::RejectCallback, caller, time, limit);
                exec.reject_code = code as u32;
                exec.reject_message = message;
                (ApiContext::RejectCallback, cb.reject, exec)
            }
        };
        debug_assert_eq!(exec.context, context);
        exec.can_respond = can_respond;
        exec.call_context_instructions = cc_instructions;
        let outcome = rt.execute(Entry::Callback(closure), exec, OnSuccess::Commit);
        if outcome.result.is_err() {
            if let Some(cleanup) = cb.cleanup {
                let mut exec = Exec::new(ApiContext::Cleanup, caller, time, limit);
                exec.call_context_instructions = cc_instructions + outcome.instructions;
                // The cleanup's own trap is only logged: the callback's error is what counts.
                let cleanup_outcome = rt.execute(Entry::Callback(cleanup), exec, OnSuccess::Commit);
                if let Err(e) = cleanup_outcome.result {
                    tracing::debug!(target: "ic_ws_replica::engine", "cleanup callback of {} trapped: {e:?}", cb.canister);
                }
            }
        }
        self.after_execution(cb.call_context, outcome);
    }

    // ---------------------------------------------------------------- queries

    /// Executes a query. Never changes state, whatever the canister does.
    pub fn query(
        &mut self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
        data_certificate: Option<&[u8]>,
    ) -> Result<Vec<u8>, Reject> {
        let time = self.time_ns();
        let limit = self.config.query_instruction_limit;
        let rt = self.running_runtime(canister)?;
        let (context, export) = match rt.compiled().methods.get(method) {
            Some(MethodKind::Query) => (
                ApiContext::NonReplicatedQuery,
                format!("canister_query {method}"),
            ),
            Some(MethodKind::CompositeQuery) => (
                ApiContext::CompositeQuery,
                format!("canister_composite_query {method}"),
            ),
            _ => return Err(Reject::method_not_found(canister, "query", method)),
        };
        let mut exec = Exec::new(context, caller, time, limit);
        exec.arg = arg.to_vec();
        exec.can_respond = true;
        exec.data_certificate = data_certificate.map(<[u8]>::to_vec);
        let outcome = rt.execute(Entry::Export(&export), exec, OnSuccess::Rollback);
        self.last_instructions = outcome.instructions;
        self.collect_logs(canister);
        match (outcome.result, outcome.response) {
            (Err(e), _) => Err(Reject::from_exec(canister, &e)),
            (Ok(()), Some(Response::Reply(bytes))) => Ok(bytes),
            (Ok(()), Some(Response::Reject(message))) => Err(Reject::explicit(message)),
            (Ok(()), None) => Err(Reject::did_not_reply(canister)),
        }
    }

    /// The runtime of `canister` if it exists, runs (not stopped) and has a module.
    fn running_runtime(&mut self, canister: Principal) -> Result<&mut Runtime, Reject> {
        let c = self
            .canisters
            .get_mut(&canister)
            .ok_or_else(|| Reject::canister_not_found(canister))?;
        if c.stopped {
            return Err(Reject::stopped(canister));
        }
        c.runtime
            .as_mut()
            .ok_or_else(|| Reject::no_wasm_module(canister))
    }

    /// Runs `canister_inspect_message` if the canister exports it (else accepts). Never changes
    /// state.
    pub fn inspect_message(
        &mut self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<(), Reject> {
        let time = self.time_ns();
        let limit = self.config.query_instruction_limit;
        let rt = self.running_runtime(canister)?;
        if !rt.compiled().exports("canister_inspect_message") {
            return Ok(());
        }
        let mut exec = Exec::new(ApiContext::InspectMessage, caller, time, limit);
        exec.arg = arg.to_vec();
        exec.method_name = method.to_string();
        let outcome = rt.execute(
            Entry::Export("canister_inspect_message"),
            exec,
            OnSuccess::Rollback,
        );
        self.last_instructions = outcome.instructions;
        self.collect_logs(canister);
        match outcome.result {
            Err(e) => Err(Reject::from_exec(canister, &e)),
            Ok(()) if outcome.accepted => Ok(()),
            Ok(()) => Err(Reject::new(
                RejectCode::CanisterReject,
                406,
                format!("Canister {canister} rejected the message"),
            )),
        }
    }

    // ---------------------------------------------------------------- timers

    /// Fires due global timers (and heartbeats), then runs every call they cause.
    pub fn tick(&mut self) {
        self.begin_round();
        let now = self.round_time;
        let ids: Vec<Principal> = self.canisters.keys().copied().collect();
        for id in ids {
            // Stopped canisters run no timers or heartbeats (as on the IC).
            let Some(rt) = self
                .canisters
                .get_mut(&id)
                .filter(|c| !c.stopped)
                .and_then(|c| c.runtime.as_mut())
            else {
                continue;
            };
            let timer = rt.host().global_timer;
            if timer != 0 && timer <= now {
                // Disarmed before the handler runs (and stays disarmed if it traps).
                rt.host_mut().global_timer = 0;
                if rt.compiled().exports("canister_global_timer") {
                    self.run_system_task(id, "canister_global_timer");
                }
            }
            let heartbeat = self
                .canisters
                .get(&id)
                .and_then(|c| c.runtime.as_ref())
                .is_some_and(|rt| rt.compiled().exports("canister_heartbeat"));
            if heartbeat {
                self.run_system_task(id, "canister_heartbeat");
            }
        }
        self.drain();
    }

    fn run_system_task(&mut self, id: Principal, export: &str) {
        let limit = self.config.update_instruction_limit;
        let time = self.round_time;
        let Some(rt) = self.canisters.get_mut(&id).and_then(|c| c.runtime.as_mut()) else {
            return;
        };
        let caller = Principal::management_canister();
        let exec = Exec::new(ApiContext::SystemTask, caller, time, limit);
        let outcome = rt.execute(Entry::Export(export), exec, OnSuccess::Commit);
        let cc = self.fresh_id();
        self.contexts.insert(
            cc,
            CallContext {
                canister: id,
                caller,
                origin: Origin::System,
                responded: true, // nobody waits for an answer
                outstanding: 0,
                instructions: 0,
                last_error: None,
            },
        );
        self.after_execution(cc, outcome);
    }
}
