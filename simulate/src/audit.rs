//! Audit events as the API server writes them (`audit.k8s.io/v1` Event, JSON), built from a
//! compact request description.

use serde_json::{Value, json};

use crate::rng::Rng;

/// One API request, with defaults for what a scenario does not care about.
#[derive(Debug, Clone)]
pub struct Req {
    user: String,
    groups: Vec<String>,
    verb: String,
    resource: Option<String>,
    subresource: Option<String>,
    api_group: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    query: Option<String>,
    code: u16,
    body: Option<Value>,
    source_ip: String,
    user_agent: String,
    path: Option<String>,
}

impl Req {
    /// `user` does `verb` on `resource` (core group unless [`Req::group`] says otherwise).
    pub fn new(user: &str, verb: &str, resource: &str) -> Self {
        let groups = if user.starts_with("system:serviceaccount:") {
            let ns = user.split(':').nth(2).unwrap_or_default();
            vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ]
        } else if user.starts_with("system:node:") {
            vec!["system:nodes".into(), "system:authenticated".into()]
        } else if user == "system:anonymous" {
            vec!["system:unauthenticated".into()]
        } else {
            vec!["system:authenticated".into()]
        };
        let user_agent = if user.starts_with("system:node:") {
            "kubelet/v1.31.2 (linux/amd64) kubernetes/5864a46"
        } else if user.starts_with("system:") {
            "kube-controller-manager/v1.31.2 (linux/amd64) kubernetes/5864a46/system:serviceaccount"
        } else {
            "kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46"
        };
        Req {
            user: user.into(),
            groups,
            verb: verb.into(),
            resource: Some(resource.into()),
            subresource: None,
            api_group: None,
            namespace: None,
            name: None,
            query: None,
            code: if verb == "create" { 201 } else { 200 },
            body: None,
            source_ip: "10.0.0.5".into(),
            user_agent: user_agent.into(),
            path: None,
        }
    }

    /// A request to a non-resource URL (`/version`, `/healthz`).
    pub fn non_resource(user: &str, path: &str) -> Self {
        let mut r = Req::new(user, "get", "");
        r.resource = None;
        r.path = Some(path.into());
        r
    }

    /// In namespace `ns`.
    pub fn ns(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// On the object `name`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Of subresource `sub` (`exec`, `log`, `status`, `token`).
    pub fn subresource(mut self, sub: &str) -> Self {
        self.subresource = Some(sub.into());
        self
    }

    /// In API group `group`.
    pub fn group(mut self, group: &str) -> Self {
        self.api_group = Some(group.into());
        self
    }

    /// With this query string.
    pub fn query(mut self, q: &str) -> Self {
        self.query = Some(q.into());
        self
    }

    /// With this response code.
    pub fn code(mut self, code: u16) -> Self {
        self.code = code;
        self
    }

    /// Carrying this request object.
    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// From this address.
    pub fn from(mut self, ip: &str) -> Self {
        self.source_ip = ip.into();
        self
    }

    /// With this user agent.
    pub fn agent(mut self, agent: &str) -> Self {
        self.user_agent = agent.into();
        self
    }

    /// The user making it.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The audit event, at `ms` (Unix milliseconds).
    pub fn event(&self, rng: &mut Rng, ms: i64) -> Value {
        let group_path = match &self.api_group {
            Some(g) => format!("/apis/{g}/v1"),
            None => "/api/v1".into(),
        };
        let mut uri = match (&self.path, &self.resource) {
            (Some(p), _) => p.clone(),
            (None, Some(r)) => {
                let mut u = group_path;
                if let Some(ns) = &self.namespace {
                    u.push_str(&format!("/namespaces/{ns}"));
                }
                u.push('/');
                u.push_str(r);
                if let Some(n) = &self.name {
                    u.push('/');
                    u.push_str(n);
                }
                if let Some(s) = &self.subresource {
                    u.push('/');
                    u.push_str(s);
                }
                u
            }
            (None, None) => "/".into(),
        };
        if let Some(q) = &self.query {
            uri.push('?');
            uri.push_str(q);
        }
        let stamp = stamp(ms);
        let mut e = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1",
            "level": if self.body.is_some() { "RequestResponse" } else { "Metadata" },
            "auditID": rng.uid(), "stage": "ResponseComplete", "requestURI": uri, "verb": self.verb,
            "user": {"username": self.user, "groups": self.groups},
            "sourceIPs": [self.source_ip], "userAgent": self.user_agent,
            "responseStatus": {"metadata": {}, "code": self.code},
            "requestReceivedTimestamp": stamp, "stageTimestamp": stamp,
            "annotations": {"authorization.k8s.io/decision": if self.code == 403 { "forbid" } else { "allow" }},
        });
        if let Some(r) = &self.resource {
            let mut object_ref = json!({"resource": r, "apiVersion": "v1"});
            if let Some(g) = &self.api_group {
                object_ref["apiGroup"] = g.as_str().into();
            }
            for (k, v) in [
                ("namespace", &self.namespace),
                ("name", &self.name),
                ("subresource", &self.subresource),
            ] {
                if let Some(v) = v {
                    object_ref[k] = v.as_str().into();
                }
            }
            e["objectRef"] = object_ref;
        }
        if let Some(b) = &self.body {
            e["requestObject"] = b.clone();
        }
        e
    }
}

/// RFC 3339 with microseconds, as audit logs write it.
pub fn stamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}
