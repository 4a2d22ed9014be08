//! Request handlers of the IC HTTP interface.
//!
//! Each handler: parse the effective canister id from the URL, authenticate the envelope
//! ([`crate::auth`]), apply the IC's routing rules, then touch the engine on the blocking pool.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use candid::Principal;
use ic_transport_types::{
    EnvelopeContent, NodeSignature, QueryResponse, RejectCode as WireRejectCode, RejectResponse,
    ReplyResponse,
};
use serde::Serialize;

use crate::auth::{self, AuthError, AuthenticatedRequest};
use crate::certification::{to_self_describing_cbor, Path};
use crate::engine::Reject;
use crate::replica::{IngressRecord, Replica};

/// An answer that is not a CBOR success body: HTTP status + plain-text reason, as the IC sends.
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<AuthError> for HttpError {
    fn from(e: AuthError) -> Self {
        HttpError::bad_request(e.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        tracing::debug!(status = %self.status, "{}", self.message);
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message,
        )
            .into_response()
    }
}

type HttpResult = Result<Response, HttpError>;

fn cbor_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/cbor")], body).into_response()
}

fn parse_ecid(text: &str) -> Result<Principal, HttpError> {
    Principal::from_text(text)
        .map_err(|e| HttpError::bad_request(format!("Invalid effective canister id '{text}': {e}")))
}

/// Runs `f` on the blocking pool (it may execute wasm for a long time).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!("replica task failed: {e}");
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    })
}

fn reject_response(reject: &Reject) -> RejectResponse {
    RejectResponse {
        reject_code: WireRejectCode::try_from(reject.code as u64)
            .unwrap_or(WireRejectCode::SysFatal),
        reject_message: reject.message.clone(),
        error_code: reject.error_code.clone(),
    }
}

/// `GET /api/v2/status`
pub(crate) async fn status(State(replica): State<Replica>) -> Response {
    use serde_cbor::Value;
    let mut map = BTreeMap::new();
    let text = |s: &str| Value::Text(s.to_string());
    map.insert(text("ic_api_version"), text("0.18.0"));
    map.insert(
        text("impl_source"),
        text("https://github.com/ic-ws/ic-ws (ic-ws-replica)"),
    );
    map.insert(text("impl_version"), text(env!("CARGO_PKG_VERSION")));
    map.insert(text("replica_health_status"), text("healthy"));
    map.insert(text("root_key"), Value::Bytes(replica.root_key_der()));
    cbor_response(StatusCode::OK, to_self_describing_cbor(&Value::Map(map)))
}

/// Unknown routes.
pub(crate) async fn not_found(uri: Uri) -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, format!("Not found: {}", uri.path()))
}

/// The checks every call and query share: authentication, request kind, routing.
/// Returns (request, canister, method, arg).
fn accept_canister_request(
    replica: &Replica,
    ecid: Principal,
    body: &[u8],
    want_call: bool,
) -> Result<(AuthenticatedRequest, Principal, String, Vec<u8>), HttpError> {
    let request = auth::authenticate_with_root_key(
        body,
        replica.ingress_time_ns(),
        Some(&replica.root_key_der()),
    )?;
    let (canister, method, arg) = match (&request.content, want_call) {
        (
            EnvelopeContent::Call {
                canister_id,
                method_name,
                arg,
                ..
            },
            true,
        )
        | (
            EnvelopeContent::Query {
                canister_id,
                method_name,
                arg,
                ..
            },
            false,
        ) => (*canister_id, method_name.clone(), arg.clone()),
        _ => {
            let expected = if want_call { "call" } else { "query" };
            return Err(HttpError::bad_request(format!(
                "Expected a '{expected}' request on this endpoint"
            )));
        }
    };
    if canister != Principal::management_canister() && canister != ecid {
        return Err(HttpError::bad_request(format!(
            "Specified CanisterId {canister} does not match effective canister id in URL {ecid}"
        )));
    }
    request.check_target(&canister)?;
    Ok((request, canister, method, arg))
}

enum Accepted {
    /// Pre-processing refused the message (canister missing, inspect_message rejected).
    Rejected(Reject),
    /// Newly accepted: execution was scheduled.
    Scheduled(tokio::task::JoinHandle<()>),
    /// The same request id was already accepted (a replay or a client retry).
    Duplicate { completed: bool },
}

/// Validates and schedules an ingress call; shared by the async (v2) and sync (v3/v4) endpoints.
async fn accept_call(
    replica: &Replica,
    ecid: Principal,
    body: &[u8],
) -> Result<(Accepted, [u8; 32]), HttpError> {
    let (request, canister, method, arg) = accept_canister_request(replica, ecid, body, true)?;
    let request_id = request.request_id;
    let expiry_ns = request.content.ingress_expiry();
    let sender = request.sender;
    let management = canister == Principal::management_canister();
    if management {
        // The interface specification's rule: the URL's effective canister id is the
        // argument's `canister_id` (any id for the create methods).
        match crate::management::effective_canister_id(&method, &arg) {
            Err(reject) => return Ok((Accepted::Rejected(reject), request_id)),
            Ok(Some(target)) if target != ecid => {
                return Err(HttpError::bad_request(format!(
                    "Specified CanisterId {target} (the canister_id of the {method} argument) does not match \
                     effective canister id in URL {ecid}"
                )));
            }
            Ok(_) => {}
        }
    }
    let admission = {
        let replica = replica.clone();
        let method = method.clone();
        let arg = arg.clone();
        blocking(move || {
            let mut core = replica.core();
            if let Some(known) = core.request(&request_id) {
                return Ok(Some(known.completed));
            }
            if !management {
                if !core.engine.canister_exists(canister) {
                    return Err(crate::replica::canister_not_found(canister));
                }
                // canister_inspect_message runs for ingress updates only, before induction.
                core.engine
                    .inspect_message(canister, &method, &arg, sender)?;
            }
            core.register_request(
                request_id,
                IngressRecord {
                    sender,
                    // What read_state of the request id is addressed to (the effective id).
                    canister: if management { ecid } else { canister },
                    expiry_ns,
                    completed: false,
                },
            );
            Ok(None)
        })
        .await?
    };
    match admission {
        Err(reject) => Ok((Accepted::Rejected(reject), request_id)),
        Ok(Some(completed)) => Ok((Accepted::Duplicate { completed }, request_id)),
        Ok(None) => {
            let replica = replica.clone();
            let delay = replica.config().round_delay;
            let task = tokio::spawn(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let executed = tokio::task::spawn_blocking(move || {
                    let _ = replica
                        .core()
                        .execute_ingress(request_id, canister, &method, &arg, sender);
                })
                .await;
                if let Err(e) = executed {
                    tracing::error!("ingress execution failed: {e}");
                }
            });
            Ok((Accepted::Scheduled(task), request_id))
        }
    }
}

/// `POST /api/v2/canister/<ecid>/call`: 202 once accepted; 200 + reject for pre-processing
/// failures (IC interface spec).
pub(crate) async fn call_async(
    State(replica): State<Replica>,
    UrlPath(ecid): UrlPath<String>,
    body: Bytes,
) -> HttpResult {
    let ecid = parse_ecid(&ecid)?;
    let (accepted, _) = accept_call(&replica, ecid, &body).await?;
    Ok(match accepted {
        Accepted::Rejected(reject) => cbor_response(
            StatusCode::OK,
            to_self_describing_cbor(&reject_response(&reject)),
        ),
        Accepted::Scheduled(_) | Accepted::Duplicate { .. } => StatusCode::ACCEPTED.into_response(),
    })
}

#[derive(Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum SyncCallResponse {
    Replied {
        #[serde(with = "serde_bytes")]
        certificate: Vec<u8>,
    },
    NonReplicatedRejection(RejectResponse),
}

/// `POST /api/v3|v4/canister/<ecid>/call`: waits (up to the configured budget) for the
/// certified outcome; 202 if it takes longer, and the client polls `read_state`.
pub(crate) async fn call_sync(
    State(replica): State<Replica>,
    UrlPath(ecid): UrlPath<String>,
    body: Bytes,
) -> HttpResult {
    let ecid = parse_ecid(&ecid)?;
    let (accepted, request_id) = accept_call(&replica, ecid, &body).await?;
    let completed = match accepted {
        Accepted::Rejected(reject) => {
            let body = SyncCallResponse::NonReplicatedRejection(reject_response(&reject));
            return Ok(cbor_response(
                StatusCode::OK,
                to_self_describing_cbor(&body),
            ));
        }
        Accepted::Duplicate { completed } => completed,
        Accepted::Scheduled(task) => {
            let budget = replica.config().sync_call_timeout;
            matches!(tokio::time::timeout(budget, task).await, Ok(Ok(())))
        }
    };
    if !completed {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let certificate = blocking(move || {
        let paths = vec![vec![b"request_status".to_vec(), request_id.to_vec()]];
        replica.certificate_unlocked(&paths)
    })
    .await?;
    let body = SyncCallResponse::Replied { certificate };
    Ok(cbor_response(
        StatusCode::OK,
        to_self_describing_cbor(&body),
    ))
}

/// `POST /api/v2|v3/canister/<ecid>/query`: executes the query with a data certificate and
/// signs the response with the node key.
pub(crate) async fn query(
    State(replica): State<Replica>,
    UrlPath(ecid): UrlPath<String>,
    body: Bytes,
) -> HttpResult {
    let ecid = parse_ecid(&ecid)?;
    let (request, canister, method, arg) = accept_canister_request(&replica, ecid, &body, false)?;
    let sender = request.sender;
    let request_id = request.request_id;
    let response = blocking(move || {
        let (result, timestamp) = if canister == Principal::management_canister() {
            let mut core = replica.core();
            let result = crate::management::query(&mut core, ecid, &method, &arg, sender);
            (result, core.engine.time_ns())
        } else {
            let mut core = replica.core();
            let result = core.query(&replica.shared.keys, canister, &method, &arg, sender);
            (result, core.engine.time_ns())
        };
        let mut response = match result {
            Ok(arg) => QueryResponse::Replied {
                reply: ReplyResponse { arg },
                signatures: vec![],
            },
            Err(reject) => QueryResponse::Rejected {
                reject: reject_response(&reject),
                signatures: vec![],
            },
        };
        // Signed outside the core lock: Ed25519 is cheap but needs no engine.
        let signable =
            response.signable(ic_transport_types::RequestId::new(&request_id), timestamp);
        let signature = NodeSignature {
            timestamp,
            signature: replica.shared.keys.node_sign(&signable),
            identity: replica.shared.keys.node_id(),
        };
        match &mut response {
            QueryResponse::Replied { signatures, .. }
            | QueryResponse::Rejected { signatures, .. } => signatures.push(signature),
        }
        to_self_describing_cbor(&response)
    })
    .await?;
    Ok(cbor_response(StatusCode::OK, response))
}

/// Checks requested paths the way the IC does; returns them as byte labels.
fn check_read_state_paths(
    replica: &Replica,
    request: &AuthenticatedRequest,
    ecid: Principal,
) -> Result<Vec<Path>, HttpError> {
    let EnvelopeContent::ReadState { paths, .. } = &request.content else {
        return Err(HttpError::bad_request(
            "Expected a 'read_state' request on this endpoint",
        ));
    };
    if paths.len() > 1_000 {
        return Err(HttpError::bad_request("Too many paths requested"));
    }
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let labels: Vec<Vec<u8>> = path.iter().map(|l| l.as_bytes().to_vec()).collect();
        match labels.first().map(Vec::as_slice) {
            Some(b"time" | b"subnet" | b"api_boundary_nodes" | b"canister_ranges") => {}
            Some(b"canister") => {
                let requested = labels
                    .get(1)
                    .map(|id| Principal::try_from_slice(id))
                    .transpose()
                    .map_err(|e| {
                        HttpError::bad_request(format!("Invalid canister id in path: {e}"))
                    })?;
                let Some(requested) = requested else {
                    return Err(HttpError::new(
                        StatusCode::NOT_FOUND,
                        "Invalid path requested: /canister needs a canister id",
                    ));
                };
                if requested != ecid {
                    return Err(HttpError::bad_request(format!(
                        "Effective principal id in URL {ecid} does not match requested canister id: {requested}"
                    )));
                }
                request.check_target(&requested)?;
                // A private metadata section (`icp:private`) is for the controllers only,
                // whether named or inside a wider path (`/canister/<id>`,
                // `/canister/<id>/metadata`), which would carry the whole subtree.
                let third = labels.get(2).map(Vec::as_slice);
                let whole_metadata = labels.len() == 2
                    || (labels.len() == 3 && third == Some(b"metadata".as_slice()));
                let named = match (third, labels.get(3)) {
                    (Some(b"metadata"), Some(name)) => Some(name.as_slice()),
                    _ => None,
                };
                if whole_metadata || named.is_some() {
                    let core = replica.core();
                    let private = core
                        .engine
                        .metadata(requested)
                        .iter()
                        .any(|m| !m.public && named.is_none_or(|n| m.name.as_bytes() == n));
                    let controller = core
                        .engine
                        .controllers(requested)
                        .unwrap_or_default()
                        .contains(&request.sender);
                    if private && !controller {
                        return Err(HttpError::new(
                            StatusCode::FORBIDDEN,
                            format!(
                                "Custom section {} can only be requested by the controllers of the canister.",
                                named.map_or_else(
                                    || "metadata (private sections)".into(),
                                    String::from_utf8_lossy
                                )
                            ),
                        ));
                    }
                }
            }
            Some(b"request_status") => {
                let Some(rid) = labels.get(1) else {
                    return Err(HttpError::new(
                        StatusCode::NOT_FOUND,
                        "Invalid path requested: /request_status needs a request id",
                    ));
                };
                let rid: [u8; 32] = rid
                    .as_slice()
                    .try_into()
                    .map_err(|_| HttpError::bad_request("Request ids are 32 bytes"))?;
                if let Some(record) = replica.core().request(&rid).cloned() {
                    if record.sender != request.sender {
                        return Err(HttpError::new(
                            StatusCode::FORBIDDEN,
                            "Request IDs must be for requests signed by the caller",
                        ));
                    }
                    if record.canister != ecid {
                        return Err(HttpError::bad_request(format!(
                            "Request {} targets canister {} but the effective canister id is {ecid}",
                            hex::encode(rid),
                            record.canister
                        )));
                    }
                }
            }
            _ => {
                return Err(HttpError::new(
                    StatusCode::NOT_FOUND,
                    "Invalid path requested",
                ));
            }
        }
        out.push(labels);
    }
    Ok(out)
}

#[derive(Serialize)]
struct ReadStateBody {
    #[serde(with = "serde_bytes")]
    certificate: Vec<u8>,
}

/// `POST /api/v2|v3/canister/<ecid>/read_state`. `/time` and `/subnet` are answered for any
/// effective canister id (the JS agent's syncTime asks with the ledger's id).
pub(crate) async fn read_state(
    State(replica): State<Replica>,
    UrlPath(ecid): UrlPath<String>,
    body: Bytes,
) -> HttpResult {
    let ecid = parse_ecid(&ecid)?;
    let request = auth::authenticate_with_root_key(
        &body,
        replica.ingress_time_ns(),
        Some(&replica.root_key_der()),
    )?;
    let checked = {
        let replica = replica.clone();
        blocking(move || check_read_state_paths(&replica, &request, ecid)).await?
    };
    let paths = checked?;
    let certificate = blocking(move || replica.certificate_unlocked(&paths)).await?;
    Ok(cbor_response(
        StatusCode::OK,
        to_self_describing_cbor(&ReadStateBody { certificate }),
    ))
}
