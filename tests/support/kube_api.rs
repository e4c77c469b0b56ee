//! A local HTTP server that speaks the Kubernetes list/watch protocol for scripted resources:
//! paginated-list responses with `metadata.resourceVersion`, chunked watch streams of
//! `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR` events, `410 Gone` to force a re-list,
//! `404` Status bodies for resources the "cluster" does not serve, and bearer-token checks.
//! No kube-apiserver can run here; this is the peer the watchers are tested against.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

/// What one resource path answers: the n-th list call gets `lists[n]` (the last one repeats);
/// the n-th watch call streams `watches[n]`, and the last watch then stays open.
#[derive(Clone, Default)]
pub struct Script {
    pub lists: Vec<(String, Vec<Value>)>,
    pub watches: Vec<Vec<Value>>,
}

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub query: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    scripts: HashMap<String, Script>,
    lists: HashMap<String, usize>,
    watches: HashMap<String, usize>,
    seen: Vec<Seen>,
}

/// The running fake API server.
#[derive(Clone)]
pub struct FakeApiServer {
    pub url: String,
    pub token: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeApiServer {
    /// Serves `scripts` (keyed by collection path, e.g. `/api/v1/pods`) on a free port.
    pub async fn start(scripts: HashMap<String, Script>) -> FakeApiServer {
        let inner = Arc::new(Mutex::new(Inner {
            scripts,
            ..Default::default()
        }));
        let token = "fake-apiserver-token-0123456789".to_string();
        let state = (inner.clone(), token.clone());
        let app = Router::new().fallback(serve).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API server");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeApiServer {
            url: format!("http://{addr}"),
            token,
            inner,
        }
    }

    /// A kubeconfig pointing at this server, written to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\nusers:\n- name: watcher\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: watcher\ncurrent-context: fake\n",
            url = self.url,
            token = self.token
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// Replaces what `path` answers from now on (its list and watch counts start again).
    pub fn set_script(&self, path: &str, script: Script) {
        let mut inner = self.inner.lock().expect("lock");
        inner.scripts.insert(path.to_string(), script);
        inner.lists.remove(path);
        inner.watches.remove(path);
    }

    /// Requests seen for `path`.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        let inner = self.inner.lock().expect("lock");
        inner
            .seen
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

type Shared = (Arc<Mutex<Inner>>, String);

async fn serve(
    State((inner, token)): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if presented != format!("Bearer {token}") {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "no or wrong bearer token",
        );
    }
    let path = uri.path().to_string();
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let mut guard = inner.lock().expect("lock");
    guard.seen.push(Seen {
        path: path.clone(),
        query: query.clone(),
    });
    let Some(script) = guard.scripts.get(&path).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        );
    };
    if watching {
        let n = *guard.watches.entry(path.clone()).or_default();
        guard.watches.insert(path, n + 1);
        drop(guard);
        let lines: Vec<Value> = script.watches.get(n).cloned().unwrap_or_default();
        let last = n + 1 >= script.watches.len();
        let body = futures::stream::iter(
            lines
                .into_iter()
                .map(|l| Ok::<_, std::io::Error>(format!("{l}\n").into_bytes())),
        );
        // The last scripted watch stays open, like a quiet cluster's.
        let body = if last {
            body.chain(futures::stream::pending()).boxed()
        } else {
            body.boxed()
        };
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(body))
            .expect("response")
    } else {
        let n = *guard.lists.entry(path.clone()).or_default();
        guard.lists.insert(path, n + 1);
        drop(guard);
        let Some((rv, items)) = script.lists.get(n).or(script.lists.last()).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", "no list scripted");
        };
        axum::Json(json!({
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }))
        .into_response()
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// A watch event line.
pub fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// A `BOOKMARK` at `rv`.
pub fn bookmark(api_version: &str, kind: &str, rv: &str) -> Value {
    json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
        "metadata": {"resourceVersion": rv}}})
}

/// The `ERROR` event a watch gets when its resourceVersion is too old (410 Gone).
pub fn gone() -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}})
}
