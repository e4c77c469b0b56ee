//! Effective RBAC: roles and cluster roles (aggregated ones resolved through their label
//! selectors) reduced to the capabilities attackers use, so a binding edge says what its
//! subject can do, not only which role it names.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

/// One `rules[]` entry of a Role or ClusterRole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// API groups (`""` is core, `*` all).
    #[serde(default)]
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource`, or `*`.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Verbs, or `*`.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Names the rule is limited to (empty: every name).
    #[serde(default)]
    pub resource_names: Vec<String>,
    /// Non-resource URLs (`/metrics`, ...).
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

impl PolicyRule {
    /// Whether this rule allows `verb` on `group`/`resource` (for any name).
    pub fn allows(&self, group: &str, resource: &str, verb: &str) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        // A rule restricted to named objects grants less than "any object"; it still counts,
        // since the named objects are often exactly the dangerous ones.
        any(&self.api_groups, group)
            && (any(&self.resources, resource) || self.resources.iter().any(|r| r == "*/*"))
            && any(&self.verbs, verb)
    }
}

/// What a set of rules lets a subject do that matters for attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `create pods/exec`: run commands in containers.
    ExecPods,
    /// `create pods/attach`.
    AttachPods,
    /// `create pods/portforward`.
    PortForward,
    /// `create pods`: run anything, on any node.
    CreatePods,
    /// `patch`/`update pods`: change a running pod's image or command.
    PatchPods,
    /// `create` of a controller that makes pods (deployments, daemonsets, jobs, ...).
    CreateWorkloads,
    /// `get secrets`: read a secret by name (service-account tokens included).
    GetSecrets,
    /// `list`/`watch secrets`: read every secret in scope.
    ListSecrets,
    /// `bind` roles: grant roles one does not hold.
    BindRoles,
    /// `escalate` roles: edit roles beyond one's own permissions.
    EscalateRoles,
    /// `create` role bindings.
    CreateBindings,
    /// `impersonate` users, groups or service accounts.
    Impersonate,
    /// `get`/`create nodes/proxy`: the kubelet API, exec into any pod on the node.
    NodesProxy,
    /// `create serviceaccounts/token`: mint tokens for service accounts.
    CreateTokens,
    /// `create certificatesigningrequests` and approve them.
    CertificateSigning,
    /// `patch`/`update` admission webhooks: intercept or alter every request.
    ModifyWebhooks,
    /// `delete events`: erase the cluster's record.
    DeleteEvents,
    /// Every verb on every resource.
    ClusterAdmin,
}

impl Capability {
    /// Stable snake_case name, as rules and tables spell it.
    pub fn name(self) -> &'static str {
        match self {
            Capability::ExecPods => "exec_pods",
            Capability::AttachPods => "attach_pods",
            Capability::PortForward => "port_forward",
            Capability::CreatePods => "create_pods",
            Capability::PatchPods => "patch_pods",
            Capability::CreateWorkloads => "create_workloads",
            Capability::GetSecrets => "get_secrets",
            Capability::ListSecrets => "list_secrets",
            Capability::BindRoles => "bind_roles",
            Capability::EscalateRoles => "escalate_roles",
            Capability::CreateBindings => "create_bindings",
            Capability::Impersonate => "impersonate",
            Capability::NodesProxy => "nodes_proxy",
            Capability::CreateTokens => "create_tokens",
            Capability::CertificateSigning => "certificate_signing",
            Capability::ModifyWebhooks => "modify_webhooks",
            Capability::DeleteEvents => "delete_events",
            Capability::ClusterAdmin => "cluster_admin",
        }
    }
}

/// The capabilities `rules` grant.
pub fn capabilities(rules: &[PolicyRule]) -> BTreeSet<Capability> {
    let can = |group: &str, resource: &str, verbs: &[&str]| {
        rules
            .iter()
            .any(|r| verbs.iter().any(|v| r.allows(group, resource, v)))
    };
    let mut out = BTreeSet::new();
    let mut add = |c: Capability, yes: bool| {
        if yes {
            out.insert(c);
        }
    };
    add(
        Capability::ExecPods,
        can("", "pods/exec", &["create", "get"]),
    );
    add(
        Capability::AttachPods,
        can("", "pods/attach", &["create", "get"]),
    );
    add(
        Capability::PortForward,
        can("", "pods/portforward", &["create", "get"]),
    );
    add(Capability::CreatePods, can("", "pods", &["create"]));
    add(Capability::PatchPods, can("", "pods", &["patch", "update"]));
    add(
        Capability::CreateWorkloads,
        ["deployments", "daemonsets", "statefulsets", "replicasets"]
            .iter()
            .any(|r| can("apps", r, &["create", "patch", "update"]))
            || ["jobs", "cronjobs"]
                .iter()
                .any(|r| can("batch", r, &["create", "patch", "update"])),
    );
    add(Capability::GetSecrets, can("", "secrets", &["get"]));
    add(
        Capability::ListSecrets,
        can("", "secrets", &["list", "watch"]),
    );
    let rbac = "rbac.authorization.k8s.io";
    add(
        Capability::BindRoles,
        can(rbac, "roles", &["bind"]) || can(rbac, "clusterroles", &["bind"]),
    );
    add(
        Capability::EscalateRoles,
        can(rbac, "roles", &["escalate"]) || can(rbac, "clusterroles", &["escalate"]),
    );
    add(
        Capability::CreateBindings,
        can(rbac, "rolebindings", &["create", "patch", "update"])
            || can(rbac, "clusterrolebindings", &["create", "patch", "update"]),
    );
    add(
        Capability::Impersonate,
        ["users", "groups", "serviceaccounts"]
            .iter()
            .any(|r| can("", r, &["impersonate"]))
            || can("authentication.k8s.io", "userextras", &["impersonate"]),
    );
    add(
        Capability::NodesProxy,
        can("", "nodes/proxy", &["get", "create"]),
    );
    add(
        Capability::CreateTokens,
        can("", "serviceaccounts/token", &["create"]),
    );
    let certs = "certificates.k8s.io";
    add(
        Capability::CertificateSigning,
        can(certs, "certificatesigningrequests", &["create"])
            && can(
                certs,
                "certificatesigningrequests/approval",
                &["update", "patch"],
            ),
    );
    let adm = "admissionregistration.k8s.io";
    add(
        Capability::ModifyWebhooks,
        [
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
        ]
        .iter()
        .any(|r| can(adm, r, &["create", "patch", "update", "delete"])),
    );
    add(
        Capability::DeleteEvents,
        can("", "events", &["delete", "deletecollection"])
            || can("events.k8s.io", "events", &["delete", "deletecollection"]),
    );
    add(
        Capability::ClusterAdmin,
        rules.iter().any(|r| {
            r.api_groups.iter().any(|g| g == "*")
                && r.resources.iter().any(|x| x == "*")
                && r.verbs.iter().any(|v| v == "*")
                && r.resource_names.is_empty()
        }),
    );
    out
}

/// The rules of a Role or ClusterRole object.
pub fn rules_of(role: &Value) -> Vec<PolicyRule> {
    role.get("rules")
        .and_then(|r| serde_json::from_value::<Vec<PolicyRule>>(r.clone()).ok())
        .unwrap_or_default()
}

/// The label selectors (`matchLabels` only) of an aggregated ClusterRole.
pub fn aggregation_selectors(role: &Value) -> Vec<Vec<(String, String)>> {
    role.pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
        .map(|sels| {
            sels.iter()
                .map(|s| {
                    s.get("matchLabels")
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter()
                                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Comma-joined capability names, in alphabetical order.
pub fn names(caps: &BTreeSet<Capability>) -> String {
    let mut names: Vec<&str> = caps.iter().map(|c| c.name()).collect();
    names.sort_unstable();
    names.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        PolicyRule {
            api_groups: s(groups),
            resources: s(resources),
            verbs: s(verbs),
            ..PolicyRule::default()
        }
    }

    #[test]
    fn capabilities_follow_verbs_resources_and_wildcards() {
        let exec = capabilities(&[rule(&[""], &["pods/exec"], &["create"])]);
        assert_eq!(names(&exec), "exec_pods");
        let admin = capabilities(&[rule(&["*"], &["*"], &["*"])]);
        assert!(admin.contains(&Capability::ClusterAdmin));
        assert!(
            admin.contains(&Capability::ListSecrets) && admin.contains(&Capability::NodesProxy)
        );
        let secrets = capabilities(&[rule(&[""], &["secrets"], &["get"])]);
        assert_eq!(names(&secrets), "get_secrets");
        let read_only = capabilities(&[rule(
            &["", "apps"],
            &["pods", "deployments"],
            &["get", "list", "watch"],
        )]);
        assert!(read_only.is_empty(), "{read_only:?}");
        let bind = capabilities(&[
            rule(&["rbac.authorization.k8s.io"], &["clusterroles"], &["bind"]),
            rule(
                &["rbac.authorization.k8s.io"],
                &["rolebindings"],
                &["create"],
            ),
        ]);
        assert_eq!(names(&bind), "bind_roles,create_bindings");
    }
}
