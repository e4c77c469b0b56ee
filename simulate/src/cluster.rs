//! The simulated cluster: nodes, system components, an operator with broad RBAC, CI and backup
//! identities, and application namespaces with workloads, service accounts, roles, services
//! (some exposed), secrets, config maps and images (some with critical CVEs), written as the
//! manifests a `kubectl get -A -o json` would return, plus Trivy reports for the images.

use serde_json::{Value, json};

use crate::rng::Rng;

/// A pod the traffic and the attacks refer to.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its service account.
    pub service_account: String,
    /// Node it runs on.
    pub node: String,
    /// Exposed through a LoadBalancer service.
    pub exposed: bool,
    /// Critical CVEs in its image.
    pub critical_cves: u32,
}

/// An application namespace and what lives in it.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Its pods.
    pub pods: Vec<Pod>,
    /// Secret names.
    pub secrets: Vec<String>,
    /// ConfigMap names.
    pub configmaps: Vec<String>,
    /// The developer who works in it (a user with `edit`).
    pub developer: String,
}

/// The whole simulated cluster.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Every object, as the API server returns it.
    pub objects: Vec<Value>,
    /// Trivy JSON reports, one per application image.
    pub scans: Vec<Value>,
    /// Node names.
    pub nodes: Vec<String>,
    /// Application namespaces.
    pub namespaces: Vec<Namespace>,
    /// Pods of the system namespaces (kube-system, monitoring).
    pub system_pods: Vec<Pod>,
}

const WORDS: &[&str] = &[
    "cart",
    "orders",
    "search",
    "billing",
    "users",
    "media",
    "auth",
    "ledger",
    "catalog",
    "mail",
    "reports",
    "pricing",
    "quotes",
    "inventory",
    "reviews",
    "shipping",
];

/// Builds a cluster of `namespaces` application namespaces with about `pods_per_namespace` pods
/// each.
pub fn build(rng: &mut Rng, namespaces: usize, pods_per_namespace: usize) -> Cluster {
    let mut c = Cluster::default();
    let total_pods = namespaces * pods_per_namespace;
    let node_count = (total_pods / 30).clamp(3, 200);
    for i in 0..node_count {
        let name = format!("node-{i}");
        c.objects.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": rng.uid(), "labels": {"kubernetes.io/hostname": name}},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("10.0.0.{}", 10 + i)}]}}));
        c.nodes.push(name);
    }
    for ns in ["kube-system", "monitoring", "ci"] {
        c.objects.push(namespace(rng, ns));
    }
    system_components(rng, &mut c);
    for i in 0..namespaces {
        let team = format!("team-{}-{i}", WORDS[i % WORDS.len()]);
        c.objects.push(namespace(rng, &team));
        app_namespace(rng, &mut c, &team, pods_per_namespace);
    }
    ci_and_backup(rng, &mut c);
    c
}

fn namespace(rng: &mut Rng, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": rng.uid(), "labels": {"kubernetes.io/metadata.name": name}}})
}

fn meta(rng: &mut Rng, ns: &str, name: &str) -> Value {
    json!({"name": name, "namespace": ns, "uid": rng.uid(), "resourceVersion": "1"})
}

fn service_account(rng: &mut Rng, ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(rng, ns, name)})
}

fn cluster_role(rng: &mut Rng, name: &str, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "uid": rng.uid()}, "rules": rules})
}

fn cluster_binding(rng: &mut Rng, name: &str, role: &str, sa_ns: &str, sa: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "uid": rng.uid()},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}]})
}

fn role_binding(
    rng: &mut Rng,
    ns: &str,
    name: &str,
    role_kind: &str,
    role: &str,
    subject: Value,
) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta(rng, ns, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [subject]})
}

/// A running pod with an owner, on a node.
fn pod(rng: &mut Rng, ns: &str, name: &str, owner: (&str, &str), node: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["nodeName"] = node.into();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": rng.uid(), "resourceVersion": "1",
            "labels": {"app": owner.1},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
                "uid": rng.uid(), "controller": true}]},
        "spec": spec,
        "status": {"phase": "Running", "hostIP": "10.0.0.10",
            "podIP": format!("10.244.{}.{}", rng.below(250), rng.between(2, 250))}})
}

fn suffix(rng: &mut Rng) -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| CHARS[rng.below(CHARS.len())] as char)
        .collect()
}

fn system_components(rng: &mut Rng, c: &mut Cluster) {
    let nodes = c.nodes.clone();
    for sa in ["kube-proxy", "calico-node", "coredns"] {
        c.objects.push(service_account(rng, "kube-system", sa));
    }
    c.objects
        .push(service_account(rng, "monitoring", "prometheus-operator"));
    c.objects
        .push(service_account(rng, "monitoring", "node-exporter"));
    for node in &nodes {
        for (ds, image, sa) in [
            (
                "kube-proxy",
                "registry.k8s.io/kube-proxy:v1.31.2",
                "kube-proxy",
            ),
            (
                "calico-node",
                "docker.io/calico/node:v3.28.1",
                "calico-node",
            ),
        ] {
            let name = format!("{ds}-{}", suffix(rng));
            c.objects.push(pod(rng, "kube-system", &name, ("DaemonSet", ds), node, json!({
                "serviceAccountName": sa, "hostNetwork": true, "priorityClassName": "system-node-critical",
                "containers": [{"name": ds, "image": image, "securityContext": {"privileged": true},
                    "volumeMounts": [{"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": true}]}],
                "volumes": [{"name": "lib-modules", "hostPath": {"path": "/lib/modules"}}]})));
            c.system_pods.push(Pod {
                namespace: "kube-system".into(),
                name,
                service_account: sa.into(),
                node: node.clone(),
                exposed: false,
                critical_cves: 0,
            });
        }
        let name = format!("node-exporter-{}", suffix(rng));
        c.objects.push(pod(rng, "monitoring", &name, ("DaemonSet", "node-exporter"), node, json!({
            "serviceAccountName": "node-exporter", "hostNetwork": true, "hostPID": true,
            "containers": [{"name": "node-exporter", "image": "quay.io/prometheus/node-exporter:v1.8.2",
                "securityContext": {"readOnlyRootFilesystem": true, "runAsNonRoot": true, "runAsUser": 65534},
                "volumeMounts": [{"name": "proc", "mountPath": "/host/proc", "readOnly": true}]}],
            "volumes": [{"name": "proc", "hostPath": {"path": "/proc"}}]})));
    }
    for _ in 0..2 {
        let name = format!("coredns-7db6d8ff4d-{}", suffix(rng));
        let node = rng.pick(&nodes).clone();
        c.objects.push(pod(rng, "kube-system", &name, ("ReplicaSet", "coredns-7db6d8ff4d"), &node, json!({
            "serviceAccountName": "coredns",
            "containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.3",
                "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                    "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}}]})));
        c.system_pods.push(Pod {
            namespace: "kube-system".into(),
            name,
            service_account: "coredns".into(),
            node,
            exposed: false,
            critical_cves: 0,
        });
    }
    c.objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(rng, "kube-system", "coredns"),
        "data": {"Corefile": ".:53 {\n    errors\n    health\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n       pods insecure\n       fallthrough in-addr.arpa ip6.arpa\n    }\n    forward . /etc/resolv.conf\n    cache 30\n}\n"}}));
    // The operator watches every secret and config map in the cluster (its informers).
    c.objects.push(cluster_role(
        rng,
        "prometheus-operator",
        json!([
        {"apiGroups": [""], "resources": ["secrets", "configmaps", "services", "endpoints", "pods"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["monitoring.coreos.com"], "resources": ["*"], "verbs": ["*"]}]),
    ));
    c.objects.push(cluster_binding(
        rng,
        "prometheus-operator",
        "prometheus-operator",
        "monitoring",
        "prometheus-operator",
    ));
    c.objects.push(cluster_role(rng, "calico-node", json!([
        {"apiGroups": [""], "resources": ["pods", "nodes", "namespaces"], "verbs": ["get", "list", "watch"]}])));
    c.objects.push(cluster_binding(
        rng,
        "calico-node",
        "calico-node",
        "kube-system",
        "calico-node",
    ));
}

fn app_namespace(rng: &mut Rng, c: &mut Cluster, ns: &str, pods_per_namespace: usize) {
    let developer = format!("dev-{}", ns.trim_start_matches("team-"));
    let apps = rng.between(2, 4);
    let mut n = Namespace {
        name: ns.to_string(),
        pods: Vec::new(),
        secrets: vec!["db-credentials".into(), "api-key".into(), "tls-cert".into()],
        configmaps: vec!["app-config".into(), "feature-flags".into()],
        developer: developer.clone(),
    };
    for s in n.secrets.clone() {
        c.objects.push(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(rng, ns, &s),
            "type": "Opaque", "data": {"value": "c2ltdWxhdGVk"}}),
        );
    }
    for m in n.configmaps.clone() {
        c.objects.push(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(rng, ns, &m),
            "data": {"LOG_LEVEL": "info"}}),
        );
    }
    c.objects.push(role_binding(
        rng,
        ns,
        "developers",
        "ClusterRole",
        "edit",
        json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": developer}),
    ));
    let per_app = (pods_per_namespace / apps).max(1);
    for a in 0..apps {
        let app = format!(
            "{}-{}",
            WORDS[rng.below(WORDS.len())],
            ["api", "worker", "web", "cron"][a % 4]
        );
        let version = format!("1.{}.{}", rng.below(20), rng.below(10));
        let image = format!("registry.example.com/{ns}/{app}:{version}");
        let critical = if rng.chance(0.25) {
            rng.between(1, 4) as u32
        } else {
            0
        };
        let high = rng.between(0, 12) as u32;
        c.scans.push(trivy_report(rng, &image, critical, high));
        c.objects.push(service_account(rng, ns, &app));
        if rng.chance(0.4) {
            c.objects.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": meta(rng, ns, &format!("{app}-reader")),
                "rules": [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list"]}]}));
            c.objects.push(role_binding(
                rng,
                ns,
                &format!("{app}-reader"),
                "Role",
                &format!("{app}-reader"),
                json!({"kind": "ServiceAccount", "name": app, "namespace": ns}),
            ));
        }
        let exposed = a == 0 && rng.chance(0.3);
        c.objects.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(rng, ns, &app),
            "spec": {"type": if exposed { "LoadBalancer" } else { "ClusterIP" }, "selector": {"app": app},
                "ports": [{"port": 80, "targetPort": 8080}]}}));
        let hash = format!("{:x}", rng.next_u64() & 0xff_ffff_ffff);
        let rs = format!("{app}-{hash}");
        for _ in 0..per_app {
            let name = format!("{rs}-{}", suffix(rng));
            let node = rng.pick(&c.nodes).clone();
            let env_secret = rng.chance(0.3);
            let mut container = json!({"name": app, "image": image,
                "ports": [{"containerPort": 8080}],
                "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": rng.chance(0.6)}});
            if env_secret {
                container["env"] = json!([{"name": "DB_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": "db-credentials", "key": "value"}}}]);
            }
            c.objects.push(pod(
                rng,
                ns,
                &name,
                ("ReplicaSet", &rs),
                &node,
                json!({
                "serviceAccountName": app, "containers": [container]}),
            ));
            n.pods.push(Pod {
                namespace: ns.into(),
                name,
                service_account: app.clone(),
                node,
                exposed,
                critical_cves: critical,
            });
        }
    }
    c.namespaces.push(n);
}

fn ci_and_backup(rng: &mut Rng, c: &mut Cluster) {
    c.objects.push(service_account(rng, "ci", "runner"));
    c.objects.push(service_account(rng, "ci", "backup"));
    c.objects.push(cluster_role(
        rng,
        "ci-exec",
        json!([
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]),
    ));
    // A backup tool reads every secret to back it up.
    c.objects.push(cluster_role(
        rng,
        "backup-reader",
        json!([
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}]),
    ));
    c.objects.push(cluster_binding(
        rng,
        "backup-reader",
        "backup-reader",
        "ci",
        "backup",
    ));
    let names: Vec<String> = c.namespaces.iter().map(|n| n.name.clone()).collect();
    for ns in names {
        c.objects.push(role_binding(
            rng,
            &ns,
            "ci-exec",
            "ClusterRole",
            "ci-exec",
            json!({"kind": "ServiceAccount", "name": "runner", "namespace": "ci"}),
        ));
    }
}

/// A Trivy report for `image` with `critical` and `high` findings.
fn trivy_report(rng: &mut Rng, image: &str, critical: u32, high: u32) -> Value {
    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
    let digest = format!(
        "sha256:{:016x}{:016x}{:016x}{:016x}",
        rng.next_u64(),
        rng.next_u64(),
        rng.next_u64(),
        rng.next_u64()
    );
    let mut vulns = Vec::new();
    for (severity, count) in [("CRITICAL", critical), ("HIGH", high)] {
        for _ in 0..count {
            vulns.push(
                json!({"VulnerabilityID": format!("CVE-2024-{}", rng.between(10000, 59999)),
                "PkgName": rng.pick(&["openssl", "glibc", "curl", "zlib", "libxml2"]),
                "InstalledVersion": "1.0.0", "FixedVersion": "1.0.1", "Severity": severity}),
            );
        }
    }
    json!({"SchemaVersion": 2, "ArtifactName": image, "ArtifactType": "container_image",
        "Metadata": {"RepoDigests": [format!("{repo}@{digest}")]},
        "Results": [{"Target": format!("{image} (debian 12.7)"), "Class": "os-pkgs", "Type": "debian",
            "Vulnerabilities": vulns}]})
}
