//! Measures the inventory graph against KubeHound's edge test cluster: for each expected attack
//! edge in `EXPECTED_EDGES.jsonl`, does our graph hold the relations it is derived from?
//!
//! ```sh
//! cargo run -p korvid-enrich --example kubehound -- ../shared/corpora/kubehound
//! ```
//!
//! The corpus stays outside the repository. Its manifests are read with ingest's snapshot
//! import (namespace-less manifests land in `default`, as `kubectl apply` puts them); the kind
//! cluster's three nodes, which only exist once the cluster runs, are added as Node objects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use korvid_enrich::inventory::{Attr, Graph, Inventory, entity_id};
use korvid_ingest::sanitize::Sanitizer;
use korvid_ingest::snapshot::read_paths;
use korvid_schemas::{ObjectChange, ObjectOp};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    test: String,
    edge_labels: Vec<String>,
    expected_paths: Vec<Path>,
    expected_values: Vec<String>,
    expected_containers: Vec<String>,
}

#[derive(Deserialize)]
struct Path {
    src: String,
    dst: String,
}

const NS: &str = "default";

fn main() -> ExitCode {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "../shared/corpora/kubehound".into()),
    );
    let expected = match std::fs::read_to_string(root.join("EXPECTED_EDGES.jsonl")) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}/EXPECTED_EDGES.jsonl: {e}", root.display());
            return ExitCode::from(2);
        }
    };
    let snapshot = read_paths(
        &[root.join("test-cluster/attacks")],
        "kubehound",
        &Sanitizer::new(b"kubehound-measure-key"),
        0,
    );
    for r in &snapshot.refused {
        eprintln!("refused {}: {}", r.origin, r.reason);
    }
    let mut inv = Inventory::default();
    for c in &snapshot.changes {
        inv.apply(c);
    }
    for node in [
        "kubehound.test.local-control-plane",
        "kubehound.test.local-worker",
        "kubehound.test.local-worker2",
    ] {
        inv.apply(&node_object(node));
    }
    let g = inv.graph();
    println!(
        "objects {} -> {} entities, {} relations",
        snapshot.changes.len(),
        g.entities.len(),
        g.relations.len()
    );
    let (mut held, mut total) = (0, 0);
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let e: Expected = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(err) => {
                eprintln!("bad line: {err}");
                return ExitCode::from(2);
            }
        };
        let (ok, n, missing) = check(&e, &g);
        held += ok;
        total += n;
        println!(
            "{:<40} {:>3}/{:<3} {}",
            e.test,
            ok,
            n,
            if missing.is_empty() {
                String::new()
            } else {
                format!("missing: {}", missing.join("; "))
            }
        );
    }
    println!("derivable: {held}/{total} expected edges");
    ExitCode::SUCCESS
}

fn node_object(name: &str) -> ObjectChange {
    ObjectChange {
        cluster: "kubehound".into(),
        event_time: 0,
        op: ObjectOp::Snapshot,
        uid: format!("node-{name}"),
        api_version: "v1".into(),
        kind: "Node".into(),
        namespace: None,
        name: name.into(),
        resource_version: None,
        labels: Default::default(),
        object_json: Some(format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}}}}"#
        )),
    }
}

fn flag(g: &Graph, id: &str, attr: &str) -> bool {
    g.entities
        .get(id)
        .and_then(|e| e.attrs.get(attr))
        .and_then(Attr::as_bool)
        .unwrap_or(false)
}

fn text<'a>(g: &'a Graph, id: &str, attr: &str) -> &'a str {
    g.entities
        .get(id)
        .and_then(|e| e.attrs.get(attr))
        .and_then(Attr::as_text)
        .unwrap_or("")
}

/// Containers (ids) named `name` (KubeHound names containers by their own name).
fn containers<'a>(g: &'a Graph, name: &'a str) -> impl Iterator<Item = &'a str> {
    g.of_kind("Container")
        .filter(move |c| c.name.rsplit_once(':').is_some_and(|(_, n)| n == name))
        .map(|c| c.id.as_str())
}

/// Host paths a container mounts, with whether the mount is writable.
fn host_mounts(g: &Graph, container: &str) -> Vec<(String, bool)> {
    g.out(container, "mounts")
        .filter_map(|m| {
            let path = text(g, &m.dst, "host_path");
            (!path.is_empty()).then(|| {
                let ro = m
                    .attrs
                    .get("read_only")
                    .and_then(Attr::as_bool)
                    .unwrap_or(false);
                (path.to_string(), !ro)
            })
        })
        .collect()
}

/// `role::binding` -> (capabilities, scope) of the bound_to relations made by that binding.
fn grants(g: &Graph) -> BTreeMap<String, (String, String)> {
    g.relations
        .values()
        .filter(|r| r.kind == "bound_to")
        .filter_map(|r| {
            let binding = r.attrs.get("binding")?.as_text()?;
            let role = g.entities.get(&r.dst)?;
            let binding_name = binding.rsplit('/').next()?;
            Some((
                format!("{}::{binding_name}", role.name),
                (
                    r.attrs.get("rbac_capabilities")?.as_text()?.to_string(),
                    r.attrs.get("scope")?.as_text()?.to_string(),
                ),
            ))
        })
        .collect()
}

fn has_cap(caps: &str, cap: &str) -> bool {
    caps.split(',').any(|c| c == cap || c == "cluster_admin")
}

fn in_scope(scope: &str) -> bool {
    scope == "*" || scope == NS
}

/// (held, expected, what is missing) for one expected test.
fn check(e: &Expected, g: &Graph) -> (usize, usize, Vec<String>) {
    let grants = grants(g);
    let mut missing = Vec::new();
    let mut held = 0;
    let mut count = |ok: bool, what: String| {
        if ok {
            held += 1;
        } else {
            missing.push(what);
        }
    };
    let label = e.edge_labels.first().map(String::as_str).unwrap_or("");
    for c in &e.expected_containers {
        let ok = containers(g, c).any(|id| {
            let caps = text(g, id, "linux_capabilities");
            let mounts = host_mounts(g, id);
            match label {
                "CE_MODULE_LOAD" => caps.split(',').any(|x| x == "SYS_MODULE"),
                "CE_NSENTER" => flag(g, id, "privileged") && flag(g, id, "host_pid"),
                "CE_PRIV_MOUNT" => flag(g, id, "privileged"),
                "CE_SYS_PTRACE" => {
                    caps.split(',').any(|x| x == "SYS_PTRACE") && flag(g, id, "host_pid")
                }
                "CE_UMH_CORE_PATTERN" => mounts
                    .iter()
                    .any(|(p, w)| *w && "/proc/sys/kernel".starts_with(p.trim_end_matches('/'))),
                "CE_VAR_LOG_SYMLINK" => mounts
                    .iter()
                    .any(|(p, _)| "/var/log".starts_with(p.trim_end_matches('/'))),
                _ => false,
            }
        });
        count(ok, c.clone());
    }
    for v in &e.expected_values {
        let ok = match e.test.as_str() {
            "TestEdge_TOKEN_STEAL" => g.relations.values().any(|r| {
                r.kind == "uses_sa"
                    && r.dst == entity_id("ServiceAccount", Some(NS), v)
                    && r.attrs.get("token_mounted").and_then(Attr::as_bool) == Some(true)
            }),
            "TestEdge_ENDPOINT_EXPLOIT_ContainerPort" => g.of_kind("Container").any(|c| {
                text(g, &c.id, "ports")
                    .split(',')
                    .any(|p| p.starts_with(&format!("{v}:")))
            }),
            "TestEdge_ENDPOINT_EXPLOIT_NodePort" => g.relations.values().any(|r| {
                r.kind == "exposes"
                    && r.attrs.get("port_name").and_then(Attr::as_text) == Some(v.as_str())
            }),
            "TestEdge_ENDPOINT_EXPLOIT_External" => g
                .out(&entity_id("Service", Some(NS), v), "selects")
                .next()
                .is_some(),
            _ => false,
        };
        count(ok, v.clone());
    }
    for p in &e.expected_paths {
        let pod = |n: &str| entity_id("Pod", Some(NS), n);
        let sa = |n: &str| entity_id("ServiceAccount", Some(NS), n);
        let grant = |key: &str, cap: &str| {
            grants
                .get(key)
                .is_some_and(|(caps, scope)| has_cap(caps, cap) && in_scope(scope))
        };
        let ok = match label {
            "IDENTITY_ASSUME" if e.test.ends_with("Node") => {
                let user = format!("User//system:node:{}", p.src);
                g.out(&entity_id("Node", None, &p.src), "identity")
                    .any(|r| r.dst == user)
                    && g.out(&user, "member_of")
                        .any(|r| r.dst == entity_id("Group", None, &p.dst))
            }
            // KubeHound's source is the container; ours is its pod's uses_sa.
            "IDENTITY_ASSUME" => containers(g, &p.src).any(|c| {
                let pod_name = c
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.split_once(':'))
                    .map(|(p, _)| p);
                pod_name.is_some_and(|n| g.out(&pod(n), "uses_sa").any(|r| r.dst == sa(&p.dst)))
            }),
            "PERMISSION_DISCOVER" => {
                grants.contains_key(&p.dst)
                    && g.out(&sa(&p.src), "bound_to").any(|r| {
                        r.attrs
                            .get("binding")
                            .and_then(Attr::as_text)
                            .is_some_and(|b| {
                                p.dst
                                    .ends_with(&format!("::{}", b.rsplit('/').next().unwrap_or("")))
                            })
                    })
            }
            "POD_CREATE" => {
                grant(&p.src, "create_pods")
                    && g.entities.contains_key(&entity_id("Node", None, &p.dst))
            }
            "POD_EXEC" => grant(&p.src, "exec_pods") && g.entities.contains_key(&pod(&p.dst)),
            "POD_PATCH" => grant(&p.src, "patch_pods") && g.entities.contains_key(&pod(&p.dst)),
            "TOKEN_BRUTEFORCE" => {
                grant(&p.src, "get_secrets") && g.entities.contains_key(&sa(&p.dst))
            }
            "TOKEN_LIST" => grant(&p.src, "list_secrets") && g.entities.contains_key(&sa(&p.dst)),
            "EXPLOIT_HOST_READ" | "EXPLOIT_HOST_WRITE" => {
                let vol = entity_id("Volume", Some(NS), &format!("{}:{}", p.src, p.dst));
                let writable = g.relations.values().any(|r| {
                    r.kind == "mounts"
                        && r.dst == vol
                        && r.attrs.get("read_only") == Some(&Attr::Bool(false))
                });
                !text(g, &vol, "host_path").is_empty() && (label == "EXPLOIT_HOST_READ" || writable)
            }
            "SHARE_PS_NAMESPACE" => containers(g, &p.src).any(|a| {
                g.out(a, "shares_pid_namespace")
                    .any(|r| containers(g, &p.dst).any(|b| b == r.dst))
            }),
            "ROLE_BIND" => {
                grants.get(&p.src).is_some_and(|(caps, _)| {
                    has_cap(caps, "bind_roles") && has_cap(caps, "create_bindings")
                }) && grants.contains_key(&p.dst)
            }
            _ => false,
        };
        count(ok, format!("{} -> {}", p.src, p.dst));
    }
    // Tests that name no instances: the relation kind they rest on must exist at all.
    if e.expected_paths.is_empty()
        && e.expected_values.is_empty()
        && e.expected_containers.is_empty()
    {
        let rests_on = match label {
            "CONTAINER_ATTACH" => Some("contains"),
            "POD_ATTACH" => Some("runs_on"),
            "VOLUME_ACCESS" | "VOLUME_DISCOVER" => Some("mounts"),
            "EXPLOIT_HOST_TRAVERSE" => Some("host_path"),
            _ => None,
        };
        if let Some(kind) = rests_on {
            count(
                g.relations.values().any(|r| r.kind == kind),
                format!("any `{kind}` relation"),
            );
        }
    }
    let n = held + missing.len();
    (held, n, missing)
}
