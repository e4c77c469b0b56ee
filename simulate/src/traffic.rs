//! Benign behaviour: what a healthy cluster's audit log is made of. Kubelets read their pods'
//! secrets and report status, controllers renew leases and write endpoint slices and events,
//! an operator keeps informer caches of every secret, developers read pods and logs and now
//! and then exec into their own pods, a CI runner execs into pods to run smoke tests, a backup
//! job reads every namespace's secrets by hand, and deploys roll pods over. Several of these
//! look like attacks to a rule; they are labelled as benign so false alerts can be counted.

use serde_json::{Value, json};

use crate::audit::Req;
use crate::cluster::{Cluster, Pod};
use crate::rng::Rng;
use crate::{Label, Simulation};

/// Appends `duration_ms` of benign traffic at about `rate` events per second from `start_ms`.
pub fn generate(
    rng: &mut Rng,
    c: &Cluster,
    start_ms: i64,
    duration_ms: i64,
    rate: u32,
    out: &mut Simulation,
) {
    let count = (duration_ms.max(0) as u64 * u64::from(rate) / 1000) as usize;
    let app_pods: Vec<&Pod> = c.namespaces.iter().flat_map(|n| n.pods.iter()).collect();
    if app_pods.is_empty() {
        return;
    }
    for i in 0..count {
        let t = start_ms + (i as i64 * duration_ms) / count.max(1) as i64 + rng.below(200) as i64;
        let pod = *rng.pick(&app_pods);
        let ns = c
            .namespaces
            .iter()
            .find(|n| n.name == pod.namespace)
            .unwrap_or(&c.namespaces[0]);
        let node = format!("system:node:{}", pod.node);
        let roll = rng.below(1000);
        let req = match roll {
            0..=159 => Req::new(&node, "get", "secrets")
                .ns(&pod.namespace)
                .name(rng.pick(ns.secrets.as_slice()).as_str())
                .from(&node_ip(&pod.node)),
            160..=259 => Req::new(&node, "patch", "pods")
                .ns(&pod.namespace)
                .name(&pod.name)
                .subresource("status")
                .from(&node_ip(&pod.node)),
            260..=329 => Req::new(&node, "get", "pods")
                .ns(&pod.namespace)
                .name(&pod.name)
                .from(&node_ip(&pod.node)),
            330..=469 => Req::new("system:kube-controller-manager", "update", "leases")
                .group("coordination.k8s.io")
                .ns("kube-system")
                .name("kube-controller-manager"),
            470..=529 => Req::new(&node, "update", "leases")
                .group("coordination.k8s.io")
                .ns("kube-node-lease")
                .name(&pod.node)
                .from(&node_ip(&pod.node)),
            530..=619 => Req::new(
                "system:serviceaccount:kube-system:endpointslice-controller",
                "update",
                "endpointslices",
            )
            .group("discovery.k8s.io")
            .ns(&pod.namespace)
            .name(&format!("{}-abc12", pod.service_account)),
            620..=679 => Req::new(&node, "create", "events")
                .ns(&pod.namespace)
                .name(&format!("{}.{:x}", pod.name, rng.next_u64() & 0xffff_ffff)),
            680..=719 => Req::new(
                "system:serviceaccount:kube-system:replicaset-controller",
                "update",
                "replicasets",
            )
            .group("apps")
            .ns(&pod.namespace)
            .name(&pod.name[..pod.name.rfind('-').unwrap_or(pod.name.len())])
            .subresource("status"),
            720..=749 => Req::new(
                "system:serviceaccount:monitoring:prometheus-operator",
                "get",
                "services",
            )
            .ns(&pod.namespace)
            .name(&pod.service_account),
            750..=829 => Req::non_resource(
                "system:serviceaccount:monitoring:prometheus-operator",
                "/metrics",
            ),
            830..=889 => Req::new(&ns.developer, "get", "pods")
                .ns(&pod.namespace)
                .name(&pod.name)
                .from(&office_ip(rng)),
            890..=919 => Req::new(&ns.developer, "list", "pods")
                .ns(&pod.namespace)
                .query("limit=500")
                .from(&office_ip(rng)),
            920..=944 => Req::new(&ns.developer, "get", "pods")
                .ns(&pod.namespace)
                .name(&pod.name)
                .subresource("log")
                .from(&office_ip(rng)),
            945..=969 => Req::new(&ns.developer, "get", "configmaps")
                .ns(&pod.namespace)
                .name(rng.pick(ns.configmaps.as_slice()).as_str())
                .from(&office_ip(rng)),
            970..=979 => Req::new(
                "system:serviceaccount:kube-system:generic-garbage-collector",
                "list",
                "pods",
            )
            .query("limit=500&resourceVersion=0"),
            _ => Req::non_resource("system:anonymous", "/healthz").from(&node_ip(&pod.node)),
        };
        out.record((t, req.event(rng, t)));
    }
    operator_informers(rng, start_ms, out);
    let minutes = (duration_ms / 60_000).max(1);
    for m in 0..minutes {
        let t = start_ms + m * 60_000;
        ci_smoke_tests(rng, c, t + 13_000, out);
        if m % 10 == 0 {
            backup(rng, c, t + 31_000, out);
        }
        if m % 3 == 1 {
            deploy(rng, c, t + 47_000, out);
        }
        if m % 5 == 2 {
            developer_exec(rng, c, t + 22_000, out);
        }
    }
}

fn node_ip(node: &str) -> String {
    format!(
        "10.0.0.{}",
        10 + node.trim_start_matches("node-").parse::<u32>().unwrap_or(0)
    )
}

fn office_ip(rng: &mut Rng) -> String {
    format!("10.8.{}.{}", rng.below(4), rng.between(10, 200))
}

/// The operator's informers: a list with a resourceVersion, then a watch with bookmarks.
fn operator_informers(rng: &mut Rng, t: i64, out: &mut Simulation) {
    let sa = "system:serviceaccount:monitoring:prometheus-operator";
    let from = out.audit.len();
    for (i, resource) in ["secrets", "configmaps", "pods", "services"]
        .iter()
        .enumerate()
    {
        let at = t + 500 + i as i64 * 40;
        out.record((
            at,
            Req::new(sa, "list", resource)
                .query("limit=500&resourceVersion=0")
                .event(rng, at),
        ));
        out.record((at + 30, Req::new(sa, "watch", resource)
            .query("allowWatchBookmarks=true&resourceVersion=6578368&timeoutSeconds=503&watch=true").event(rng, at + 30)));
    }
    let label = Label::benign(
        "operator-informers",
        "the monitoring operator caches every secret and config map",
        t + 500,
        t + 700,
        vec!["ServiceAccount/monitoring/prometheus-operator".into()],
    )
    .with_events(&out.audit[from..]);
    out.labels.push(label);
}

/// The CI runner execs a smoke test into one pod of a namespace.
fn ci_smoke_tests(rng: &mut Rng, c: &Cluster, t: i64, out: &mut Simulation) {
    let ns = rng.pick(&c.namespaces);
    let Some(pod) = ns.pods.first() else { return };
    let req = Req::new("system:serviceaccount:ci:runner", "create", "pods")
        .ns(&ns.name)
        .name(&pod.name)
        .subresource("exec")
        .query("command=%2Fbin%2Fsmoke-test&container=app&stderr=true&stdout=true")
        .code(101)
        .from("10.0.3.7")
        .agent("ci-runner/2.4 (linux/amd64)");
    out.record((t, req.event(rng, t)));
    let label = Label::benign(
        "ci-exec",
        "the CI runner execs a smoke test",
        t,
        t,
        vec![
            format!("Pod/{}/{}", ns.name, pod.name),
            "ServiceAccount/ci/runner".into(),
        ],
    )
    .with_events(&out.audit[out.audit.len() - 1..]);
    out.labels.push(label);
}

/// The backup job reads every namespace's secrets, one list per namespace.
fn backup(rng: &mut Rng, c: &Cluster, t: i64, out: &mut Simulation) {
    let sa = "system:serviceaccount:ci:backup";
    let from = out.audit.len();
    for (i, ns) in c.namespaces.iter().enumerate() {
        let at = t + i as i64 * 150;
        for resource in ["secrets", "configmaps"] {
            out.record((
                at,
                Req::new(sa, "list", resource)
                    .ns(&ns.name)
                    .query("limit=500")
                    .from("10.0.3.9")
                    .agent("backup-agent/1.14")
                    .event(rng, at),
            ));
        }
    }
    let end = t + c.namespaces.len() as i64 * 150;
    let label = Label::benign(
        "backup",
        "the backup job reads every namespace's secrets",
        t,
        end,
        vec!["ServiceAccount/ci/backup".into()],
    )
    .with_events(&out.audit[from..]);
    out.labels.push(label);
}

/// A rollout: the deployer patches a deployment, the controllers replace one pod.
fn deploy(rng: &mut Rng, c: &Cluster, t: i64, out: &mut Simulation) {
    let ns = rng.pick(&c.namespaces);
    let Some(pod) = ns.pods.get(rng.below(ns.pods.len())) else {
        return;
    };
    let app = pod.service_account.clone();
    let from = out.audit.len();
    out.record((
        t,
        Req::new("ci-deployer", "patch", "deployments")
            .group("apps")
            .ns(&ns.name)
            .name(&app)
            .from("10.0.3.8")
            .agent("Helm/3.15.2")
            .event(rng, t),
    ));
    let new_pod = format!(
        "{app}-{:x}-{:x}",
        rng.next_u64() & 0xff_ffff,
        rng.next_u64() & 0xfff
    );
    let body = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": new_pod, "namespace": ns.name, "labels": {"app": app}},
        "spec": {"serviceAccountName": app, "containers": [{"name": app,
            "image": format!("registry.example.com/{}/{app}:1.{}.0", ns.name, rng.below(20)),
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true}}]}});
    out.record((
        t + 400,
        Req::new(
            "system:serviceaccount:kube-system:replicaset-controller",
            "create",
            "pods",
        )
        .ns(&ns.name)
        .name(&new_pod)
        .body(body)
        .event(rng, t + 400),
    ));
    out.record((
        t + 9_000,
        Req::new(
            "system:serviceaccount:kube-system:replicaset-controller",
            "delete",
            "pods",
        )
        .ns(&ns.name)
        .name(&pod.name)
        .event(rng, t + 9_000),
    ));
    let label = Label::benign(
        "deploy",
        "a Helm rollout replaces a pod",
        t,
        t + 9_000,
        vec![
            format!("Pod/{}/{new_pod}", ns.name),
            format!("Pod/{}/{}", ns.name, pod.name),
        ],
    )
    .with_events(&out.audit[from..]);
    out.labels.push(label);
}

/// A developer opens a shell in their own pod to debug it.
fn developer_exec(rng: &mut Rng, c: &Cluster, t: i64, out: &mut Simulation) {
    let ns = rng.pick(&c.namespaces);
    let Some(pod) = ns.pods.last() else { return };
    let ip = office_ip(rng);
    let req: Value = Req::new(&ns.developer, "create", "pods")
        .ns(&ns.name)
        .name(&pod.name)
        .subresource("exec")
        .query("command=sh&stdin=true&stdout=true&tty=true")
        .code(101)
        .from(&ip)
        .event(rng, t);
    out.record((t, req));
    let label = Label::benign(
        "developer-exec",
        "a developer debugs their own pod",
        t,
        t,
        vec![
            format!("Pod/{}/{}", ns.name, pod.name),
            format!("User//{}", ns.developer),
        ],
    )
    .with_events(&out.audit[out.audit.len() - 1..]);
    out.labels.push(label);
}
