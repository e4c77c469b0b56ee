//! The watchers' RBAC in deploy/rbac.yaml is read-only and grants exactly what the default
//! kinds need.

use std::collections::BTreeSet;

use korvid_ingest::{DEFAULT_KINDS, KindSpec};
use serde::Deserialize;

const RBAC: &str = include_str!("../../deploy/rbac.yaml");

#[derive(Deserialize)]
struct Doc {
    kind: String,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

fn cluster_role() -> Vec<Rule> {
    let roles: Vec<Doc> = serde_yaml::Deserializer::from_str(RBAC)
        .map(|d| Doc::deserialize(d).expect("every document parses"))
        .filter(|d| d.kind == "ClusterRole")
        .collect();
    assert_eq!(roles.len(), 1, "one ClusterRole");
    roles
        .into_iter()
        .next()
        .map(|r| r.rules)
        .unwrap_or_default()
}

#[test]
fn the_watcher_role_only_reads() {
    for rule in cluster_role() {
        for verb in &rule.verbs {
            assert!(
                matches!(verb.as_str(), "get" | "list" | "watch"),
                "verb {verb} on {:?}",
                rule.resources
            );
        }
        assert!(
            !rule.resources.iter().any(|r| r == "*" || r.contains('/')),
            "{:?}",
            rule.resources
        );
        assert!(!rule.api_groups.iter().any(|g| g == "*"));
    }
}

#[test]
fn the_role_covers_exactly_the_default_kinds() {
    let granted: BTreeSet<(String, String)> = cluster_role()
        .into_iter()
        .filter(|r| {
            ["list", "watch"]
                .iter()
                .all(|v| r.verbs.iter().any(|x| x == v))
        })
        .flat_map(|r| {
            let groups = r.api_groups.clone();
            r.resources
                .into_iter()
                .flat_map(move |res| groups.clone().into_iter().map(move |g| (g, res.clone())))
        })
        .collect();
    let needed: BTreeSet<(String, String)> = DEFAULT_KINDS
        .iter()
        .map(|k| {
            let spec = KindSpec::parse(k).expect("default kinds parse");
            (spec.group.clone(), spec.api_resource().plural)
        })
        .collect();
    assert_eq!(granted, needed);
}
