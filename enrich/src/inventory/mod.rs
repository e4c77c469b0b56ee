//! The inventory: every object of a cluster (from the compacted objects topic, or a snapshot
//! offline) and every image scan, turned into a typed graph of entities and relations — who can
//! do what to which object, what runs where with which image and which holes, and what is
//! exposed. Detection reasons over this graph; windows carry the part of it around what changed.
//!
//! Ids are `Kind/namespace/name` (namespace empty for cluster-scoped entities), containers
//! `Container/ns/pod:container`, volumes `Volume/ns/pod:volume`, host paths `HostPath//path`.

pub mod pods;
pub mod rbac;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use korvid_schemas::image_ref::split_reference;
use korvid_schemas::{ImageScan, ObjectChange, ObjectOp};
use serde_json::Value;

use self::pods::{VolumeSource, pod_spec};
use self::rbac::{aggregation_selectors, capabilities, rules_of};

/// A typed attribute value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attr {
    /// A flag.
    Bool(bool),
    /// A number.
    Int(i64),
    /// Text (lists are comma-joined, sorted).
    Text(String),
}

impl Attr {
    /// The flag, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Attr::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Attr::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// Attribute names and values of an entity or relation.
pub type Attrs = BTreeMap<&'static str, Attr>;

/// One entity of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// `Kind/namespace/name`.
    pub id: String,
    /// Kind (`Pod`, `Container`, `ServiceAccount`, `HostPath`, ...).
    pub kind: String,
    /// Namespace, for namespaced entities.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Typed attributes (`privileged`, `host_pid`, `capabilities`, `vuln_critical`, ...).
    pub attrs: Attrs,
}

/// A relation `src -[kind]-> dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Source entity id.
    pub src: String,
    /// Destination entity id.
    pub dst: String,
    /// `runs_on`, `owns`, `uses_sa`, `contains`, `mounts`, `host_path`, `bound_to`, ...
    pub kind: &'static str,
    /// Typed attributes (`path`, `read_only`, `capabilities`, `scope`, `binding`, ...).
    pub attrs: Attrs,
}

/// Entities and relations, ordered (so windows built from them are byte-stable).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    /// By id.
    pub entities: BTreeMap<String, Entity>,
    /// By (src, kind, dst).
    pub relations: BTreeMap<(String, &'static str, String), Relation>,
    /// For a neighbourhood, the entities it was grown around (what a window is about); `None`
    /// for a whole graph, all of which is in focus.
    pub focus: Option<BTreeSet<String>>,
}

impl Graph {
    fn entity(&mut self, kind: &str, namespace: Option<&str>, name: &str) -> &mut Entity {
        let id = entity_id(kind, namespace, name);
        self.entities.entry(id.clone()).or_insert_with(|| Entity {
            id,
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
            attrs: Attrs::new(),
        })
    }

    fn relate(&mut self, src: &str, kind: &'static str, dst: &str) -> &mut Relation {
        self.relations
            .entry((src.to_string(), kind, dst.to_string()))
            .or_insert_with(|| Relation {
                src: src.to_string(),
                dst: dst.to_string(),
                kind,
                attrs: Attrs::new(),
            })
    }

    /// Relations of `kind` leaving `src`.
    pub fn out<'a>(&'a self, src: &'a str, kind: &'a str) -> impl Iterator<Item = &'a Relation> {
        self.relations
            .range((src.to_string(), "", String::new())..)
            .take_while(move |((s, _, _), _)| s == src)
            .filter(move |((_, k, _), _)| *k == kind)
            .map(|(_, r)| r)
    }

    /// Entities of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Entity> {
        self.entities.values().filter(move |e| e.kind == kind)
    }

    /// The sub-graph within `hops` relations (either direction) of `seeds`.
    pub fn neighbourhood(&self, seeds: &BTreeSet<String>, hops: usize) -> Graph {
        self.neighbourhood_in(&self.adjacency(), seeds, hops)
    }

    /// For each entity, the relations touching it (build once, reuse for many neighbourhoods).
    pub fn adjacency(&self) -> Adjacency {
        let mut map: HashMap<String, Vec<RelationKey>> = HashMap::new();
        for k in self.relations.keys() {
            map.entry(k.0.clone()).or_default().push(k.clone());
            if k.2 != k.0 {
                map.entry(k.2.clone()).or_default().push(k.clone());
            }
        }
        Adjacency(map)
    }

    /// [`Graph::neighbourhood`] with a prebuilt adjacency: cost follows the neighbourhood's
    /// size, not the graph's.
    pub fn neighbourhood_in(
        &self,
        adjacency: &Adjacency,
        seeds: &BTreeSet<String>,
        hops: usize,
    ) -> Graph {
        let mut keep: BTreeSet<&str> = seeds
            .iter()
            .filter(|s| self.entities.contains_key(*s))
            .map(String::as_str)
            .collect();
        let mut frontier: Vec<&str> = keep.iter().copied().collect();
        for _ in 0..hops {
            let mut next = Vec::new();
            for id in frontier {
                for (src, _, dst) in adjacency.0.get(id).into_iter().flatten() {
                    let other = if src == id { dst } else { src };
                    if keep.insert(other) {
                        next.push(other.as_str());
                    }
                }
            }
            frontier = next;
        }
        let mut relations = BTreeMap::new();
        for id in &keep {
            for key in adjacency.0.get(*id).into_iter().flatten() {
                if keep.contains(key.0.as_str())
                    && keep.contains(key.2.as_str())
                    && let Some(r) = self.relations.get(key)
                {
                    relations.entry(key.clone()).or_insert_with(|| r.clone());
                }
            }
        }
        Graph {
            entities: keep
                .iter()
                .filter_map(|id| self.entities.get(*id).map(|e| (e.id.clone(), e.clone())))
                .collect(),
            relations,
            focus: Some(
                seeds
                    .iter()
                    .filter(|s| self.entities.contains_key(*s))
                    .cloned()
                    .collect(),
            ),
        }
    }
}

/// Key of a relation: (src, kind, dst).
pub type RelationKey = (String, &'static str, String);

/// The relations touching each entity of a [`Graph`].
#[derive(Debug, Default)]
pub struct Adjacency(HashMap<String, Vec<RelationKey>>);

/// Approximate heap bytes of a JSON tree (allocations and their bookkeeping, not its text).
fn approx_bytes(v: &Value) -> usize {
    const NODE: usize = 32;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => NODE,
        Value::String(s) => NODE + s.capacity(),
        Value::Array(a) => NODE + a.capacity() * NODE + a.iter().map(approx_bytes).sum::<usize>(),
        Value::Object(m) => {
            NODE + m
                .iter()
                .map(|(k, v)| 48 + k.capacity() + approx_bytes(v))
                .sum::<usize>()
        }
    }
}

/// `Kind/namespace/name`.
pub fn entity_id(kind: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{kind}/{}/{name}", namespace.unwrap_or(""))
}

/// One stored object.
#[derive(Debug, Clone)]
struct Stored {
    kind: String,
    namespace: Option<String>,
    name: String,
    labels: BTreeMap<String, String>,
    body: Value,
    /// Approximate heap bytes of this entry.
    bytes: usize,
}

/// Every object and image scan of one cluster.
#[derive(Debug, Default)]
pub struct Inventory {
    /// By entity id (`Kind/ns/name`).
    objects: BTreeMap<String, Stored>,
    /// uid -> entity id, for deletions by uid.
    by_uid: HashMap<String, String>,
    /// Scans by digest.
    scans: BTreeMap<String, ImageScan>,
    /// Digest of the newest scan of each `registry/repository:tag`.
    scans_by_ref: HashMap<String, String>,
    /// Approximate heap bytes of `objects`, kept as they come and go.
    bytes: usize,
}

/// Summary of what an inventory holds, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InventorySize {
    /// Objects.
    pub objects: usize,
    /// Image scans.
    pub scans: usize,
    /// Approximate bytes held (object bodies and scans).
    pub bytes: usize,
}

impl Inventory {
    /// Applies one object change; returns the entity id it touched.
    pub fn apply(&mut self, change: &ObjectChange) -> Option<String> {
        if change.op == ObjectOp::Delete {
            let id = self.by_uid.remove(&change.uid).unwrap_or_else(|| {
                entity_id(&change.kind, change.namespace.as_deref(), &change.name)
            });
            if let Some(old) = self.objects.remove(&id) {
                self.bytes -= old.bytes;
            }
            return Some(id);
        }
        let body: Value = change
            .object_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(Value::Null);
        let id = entity_id(&change.kind, change.namespace.as_deref(), &change.name);
        self.by_uid.insert(change.uid.clone(), id.clone());
        let bytes = 256 + approx_bytes(&body) + 2 * change.uid.len() + 2 * id.len();
        self.bytes += bytes;
        if let Some(old) = self.objects.insert(
            id.clone(),
            Stored {
                bytes,
                kind: change.kind.clone(),
                namespace: change.namespace.clone(),
                name: change.name.clone(),
                labels: change
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                body,
            },
        ) {
            self.bytes -= old.bytes;
        }
        Some(id)
    }

    /// Removes an object by its topic key's uid (a tombstone).
    pub fn forget_uid(&mut self, uid: &str) -> Option<String> {
        let id = self.by_uid.remove(uid)?;
        if let Some(old) = self.objects.remove(&id) {
            self.bytes -= old.bytes;
        }
        Some(id)
    }

    /// Applies one image scan (the newest per digest wins).
    pub fn apply_scan(&mut self, scan: ImageScan) {
        let reference = format!(
            "{}/{}:{}",
            scan.registry,
            scan.repository,
            scan.tag.as_deref().unwrap_or("latest")
        );
        self.scans_by_ref
            .insert(reference, scan.image_digest.clone());
        self.scans.insert(scan.image_digest.clone(), scan);
    }

    /// How much it holds.
    pub fn size(&self) -> InventorySize {
        InventorySize {
            objects: self.objects.len(),
            scans: self.scans.len(),
            bytes: self.bytes
                + self
                    .scans
                    .values()
                    .map(|s| 256 + s.vulnerabilities.len() * 96)
                    .sum::<usize>(),
        }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Stored> {
        self.objects.values().filter(move |o| o.kind == kind)
    }

    /// The whole graph.
    pub fn graph(&self) -> Graph {
        let mut g = Graph::default();
        for o in self.objects.values() {
            let e = g.entity(&o.kind, o.namespace.as_deref(), &o.name);
            if let Some(t) = o.body.get("type").and_then(Value::as_str) {
                e.attrs.insert("type", Attr::Text(t.to_string()));
            }
            if !o.labels.is_empty() {
                e.attrs.insert("labels", Attr::Text(label_text(&o.labels)));
            }
            owners(&mut g, o);
        }
        for node in self.of_kind("Node") {
            // Every kubelet authenticates as system:node:<name> in group system:nodes.
            let id = entity_id("Node", None, &node.name);
            let user = g
                .entity("User", None, &format!("system:node:{}", node.name))
                .id
                .clone();
            let group = g.entity("Group", None, "system:nodes").id.clone();
            g.relate(&id, "identity", &user);
            g.relate(&user, "member_of", &group);
        }
        for sa in self.of_kind("ServiceAccount") {
            let e = g.entity("ServiceAccount", sa.namespace.as_deref(), &sa.name);
            if let Some(a) = sa
                .body
                .get("automountServiceAccountToken")
                .and_then(Value::as_bool)
            {
                e.attrs.insert("automount_token", Attr::Bool(a));
            }
        }
        for pod in self.of_kind("Pod") {
            self.pod(&mut g, pod);
        }
        for kind in [
            "Deployment",
            "DaemonSet",
            "StatefulSet",
            "ReplicaSet",
            "Job",
        ] {
            for w in self.of_kind(kind) {
                if let Some(spec) = w.body.pointer("/spec/template/spec") {
                    workload_template(&mut g, w, spec);
                }
            }
        }
        for cj in self.of_kind("CronJob") {
            if let Some(spec) = cj.body.pointer("/spec/jobTemplate/spec/template/spec") {
                workload_template(&mut g, cj, spec);
            }
        }
        self.rbac(&mut g);
        self.services(&mut g);
        for pvc in self.of_kind("PersistentVolumeClaim") {
            if let Some(pv) = pvc.body.pointer("/spec/volumeName").and_then(Value::as_str) {
                let src = entity_id("PersistentVolumeClaim", pvc.namespace.as_deref(), &pvc.name);
                g.relate(&src, "claims", &entity_id("PersistentVolume", None, pv));
            }
        }
        for pv in self.of_kind("PersistentVolume") {
            if let Some(path) = pv
                .body
                .pointer("/spec/hostPath/path")
                .and_then(Value::as_str)
            {
                let host = g.entity("HostPath", None, path).id.clone();
                g.relate(
                    &entity_id("PersistentVolume", None, &pv.name),
                    "host_path",
                    &host,
                );
            }
        }
        for np in self.of_kind("NetworkPolicy") {
            let selector = np
                .body
                .pointer("/spec/podSelector")
                .cloned()
                .unwrap_or(Value::Null);
            let src = entity_id("NetworkPolicy", np.namespace.as_deref(), &np.name);
            for pod in self.of_kind("Pod").filter(|p| p.namespace == np.namespace) {
                if selects(&selector, &pod.labels) {
                    g.relate(
                        &src,
                        "applies_to",
                        &entity_id("Pod", pod.namespace.as_deref(), &pod.name),
                    );
                }
            }
        }
        g
    }

    fn pod(&self, g: &mut Graph, pod: &Stored) {
        let ns = pod.namespace.as_deref();
        let spec = pod_spec(
            pod.body.get("spec").unwrap_or(&Value::Null),
            pod.body.pointer("/metadata/annotations"),
            pod.body.get("status"),
        );
        let pod_id = entity_id("Pod", ns, &pod.name);
        let sa_id = entity_id("ServiceAccount", ns, &spec.service_account);
        let sa_automount = self
            .objects
            .get(&sa_id)
            .and_then(|sa| sa.body.get("automountServiceAccountToken"))
            .and_then(Value::as_bool);
        let token_mounted = spec.automount_token.or(sa_automount).unwrap_or(true)
            || spec
                .volumes
                .iter()
                .any(|(_, v)| *v == VolumeSource::ServiceAccountToken);
        {
            let e = g.entity("Pod", ns, &pod.name);
            for (k, v) in [
                ("host_pid", spec.host_pid),
                ("host_ipc", spec.host_ipc),
                ("host_network", spec.host_network),
                ("share_process_namespace", spec.share_process_namespace),
                ("token_mounted", token_mounted),
            ] {
                e.attrs.insert(k, Attr::Bool(v));
            }
            e.attrs.insert(
                "privileged",
                Attr::Bool(spec.containers.iter().any(|c| c.privileged)),
            );
            e.attrs
                .insert("unsafe_sysctls", Attr::Text(spec.unsafe_sysctls.join(",")));
            e.attrs.insert(
                "flex_volume_drivers",
                Attr::Text(spec.flex_drivers.join(",")),
            );
            let mut kinds: Vec<String> = spec
                .volumes
                .iter()
                .map(|(_, v)| match v {
                    VolumeSource::HostPath(_) => "hostPath".to_string(),
                    VolumeSource::Secret(_) => "secret".to_string(),
                    VolumeSource::ConfigMap(_) => "configMap".to_string(),
                    VolumeSource::Claim(_) => "persistentVolumeClaim".to_string(),
                    VolumeSource::ServiceAccountToken => "projected".to_string(),
                    VolumeSource::Other(k) => k.clone(),
                })
                .collect();
            kinds.sort();
            kinds.dedup();
            e.attrs.insert("volume_types", Attr::Text(kinds.join(",")));
        }
        g.entity("ServiceAccount", ns, &spec.service_account);
        g.relate(&pod_id, "uses_sa", &sa_id)
            .attrs
            .insert("token_mounted", Attr::Bool(token_mounted));
        if let Some(node) = &spec.node_name {
            let node_id = g.entity("Node", None, node).id.clone();
            g.relate(&pod_id, "runs_on", &node_id);
        }
        for (name, source) in &spec.volumes {
            let vol_id = entity_id("Volume", ns, &format!("{}:{name}", pod.name));
            let e = g.entity("Volume", ns, &format!("{}:{name}", pod.name));
            let (source_kind, target) = match source {
                VolumeSource::HostPath(p) => ("hostPath", Some(("HostPath", None, p.clone()))),
                VolumeSource::Secret(s) => ("secret", Some(("Secret", ns, s.clone()))),
                VolumeSource::ConfigMap(c) => ("configMap", Some(("ConfigMap", ns, c.clone()))),
                VolumeSource::Claim(c) => (
                    "persistentVolumeClaim",
                    Some(("PersistentVolumeClaim", ns, c.clone())),
                ),
                VolumeSource::ServiceAccountToken => ("serviceAccountToken", None),
                VolumeSource::Other(k) => (k.as_str(), None),
            };
            e.attrs
                .insert("source", Attr::Text(source_kind.to_string()));
            if let VolumeSource::HostPath(p) = source {
                e.attrs.insert("host_path", Attr::Text(p.clone()));
            }
            g.relate(&pod_id, "has_volume", &vol_id);
            if let Some((kind, tns, tname)) = target {
                let kind_rel = if kind == "HostPath" {
                    "host_path"
                } else {
                    "backed_by"
                };
                let target_id = g.entity(kind, tns, &tname).id.clone();
                g.relate(&vol_id, kind_rel, &target_id);
            }
        }
        for c in &spec.containers {
            let cname = format!("{}:{}", pod.name, c.name);
            let cid = entity_id("Container", ns, &cname);
            {
                let e = g.entity("Container", ns, &cname);
                // A container is found as itself; exceptions and routes still want its pod's labels.
                if !pod.labels.is_empty() {
                    e.attrs
                        .insert("labels", Attr::Text(label_text(&pod.labels)));
                }
                e.attrs.insert("privileged", Attr::Bool(c.privileged));
                e.attrs
                    .insert("may_run_as_root", Attr::Bool(c.may_run_as_root));
                e.attrs.insert(
                    "allow_privilege_escalation",
                    Attr::Bool(c.allow_privilege_escalation),
                );
                e.attrs
                    .insert("read_only_root", Attr::Bool(c.read_only_root));
                e.attrs.insert("role", Attr::Text(c.role.to_string()));
                e.attrs
                    .insert("seccomp_profile", Attr::Text(c.seccomp.clone()));
                e.attrs
                    .insert("apparmor_profile", Attr::Text(c.apparmor.clone()));
                e.attrs
                    .insert("selinux_custom", Attr::Bool(c.selinux_custom));
                e.attrs
                    .insert("proc_mount_unmasked", Attr::Bool(c.proc_mount_unmasked));
                e.attrs.insert("host_process", Attr::Bool(c.host_process));
                e.attrs.insert("probe_host", Attr::Bool(c.probe_host));
                e.attrs.insert("image", Attr::Text(c.image.clone()));
                e.attrs.insert(
                    "linux_capabilities",
                    Attr::Text(c.capabilities_added.join(",")),
                );
                e.attrs.insert("host_pid", Attr::Bool(spec.host_pid));
                e.attrs
                    .insert("host_network", Attr::Bool(spec.host_network));
                let ports: Vec<String> = c
                    .ports
                    .iter()
                    .map(|(n, p, h)| match h {
                        Some(h) => format!("{n}:{p}->host:{h}"),
                        None => format!("{n}:{p}"),
                    })
                    .collect();
                e.attrs.insert("ports", Attr::Text(ports.join(",")));
            }
            g.relate(&pod_id, "contains", &cid);
            for (vol, path, ro) in &c.mounts {
                let vol_id = entity_id("Volume", ns, &format!("{}:{vol}", pod.name));
                let r = g.relate(&cid, "mounts", &vol_id);
                r.attrs.insert("path", Attr::Text(path.clone()));
                r.attrs.insert("read_only", Attr::Bool(*ro));
            }
            for (name, port, host) in &c.ports {
                if let Some(h) = host {
                    let ep = g
                        .entity("Endpoint", ns, &format!("{cname}:host:{h}"))
                        .id
                        .clone();
                    let r = g.relate(&ep, "exposes", &cid);
                    r.attrs.insert("port", Attr::Int(*port));
                    r.attrs.insert("exposure", Attr::Text("host_port".into()));
                    r.attrs.insert("port_name", Attr::Text(name.clone()));
                }
            }
            for s in &c.env_from_secrets {
                let sid = g.entity("Secret", ns, s).id.clone();
                g.relate(&cid, "env_from", &sid);
            }
            for cm in &c.env_from_configmaps {
                let id = g.entity("ConfigMap", ns, cm).id.clone();
                g.relate(&cid, "env_from", &id);
            }
            let digest = spec
                .image_ids
                .iter()
                .find(|(n, _)| *n == c.name)
                .map(|(_, d)| d.clone());
            self.image(g, &cid, &c.image, digest.as_deref());
        }
        if spec.share_process_namespace {
            let ids: Vec<String> = spec
                .containers
                .iter()
                .map(|c| entity_id("Container", ns, &format!("{}:{}", pod.name, c.name)))
                .collect();
            for a in &ids {
                for b in &ids {
                    if a != b {
                        g.relate(a, "shares_pid_namespace", b);
                    }
                }
            }
        }
    }

    /// `container -[runs_image]-> Image` with the image's vulnerability summary.
    fn image(&self, g: &mut Graph, container_id: &str, reference: &str, digest: Option<&str>) {
        let (registry, repository, tag) = split_reference(reference);
        let normal = format!(
            "{registry}/{repository}:{}",
            tag.as_deref().unwrap_or("latest")
        );
        let scan = digest.and_then(|d| self.scans.get(d)).or_else(|| {
            self.scans_by_ref
                .get(&normal)
                .and_then(|d| self.scans.get(d))
        });
        let e = g.entity("Image", None, &normal);
        e.attrs.insert("registry", Attr::Text(registry));
        if let Some(d) = digest.or(scan.map(|s| s.image_digest.as_str())) {
            e.attrs.insert("digest", Attr::Text(d.to_string()));
        }
        e.attrs.insert("scanned", Attr::Bool(scan.is_some()));
        if let Some(s) = scan {
            e.attrs
                .insert("vuln_critical", Attr::Int(i64::from(s.counts.critical)));
            e.attrs
                .insert("vuln_high", Attr::Int(i64::from(s.counts.high)));
            e.attrs.insert(
                "vuln_fixable",
                Attr::Int(
                    s.vulnerabilities
                        .iter()
                        .filter(|v| v.fixed_version.is_some())
                        .count() as i64,
                ),
            );
            e.attrs.insert(
                "known_exploited",
                Attr::Bool(s.vulnerabilities.iter().any(|v| v.known_exploited)),
            );
        }
        let image_id = e.id.clone();
        g.relate(container_id, "runs_image", &image_id);
    }

    /// Roles with their capabilities; every binding as `subject -[bound_to]-> role` carrying the
    /// binding, its scope and what it grants.
    fn rbac(&self, g: &mut Graph) {
        // Resolve aggregated ClusterRoles: their rules are the union of the roles they select.
        let mut cluster_rules: BTreeMap<String, Vec<rbac::PolicyRule>> = BTreeMap::new();
        for cr in self.of_kind("ClusterRole") {
            cluster_rules.insert(cr.name.clone(), rules_of(&cr.body));
        }
        for cr in self.of_kind("ClusterRole") {
            let selectors = aggregation_selectors(&cr.body);
            if selectors.is_empty() {
                continue;
            }
            let mut rules = cluster_rules.get(&cr.name).cloned().unwrap_or_default();
            for other in self.of_kind("ClusterRole").filter(|o| o.name != cr.name) {
                if selectors.iter().any(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| other.labels.get(k) == Some(v))
                }) {
                    rules.extend(rules_of(&other.body));
                }
            }
            cluster_rules.insert(cr.name.clone(), rules);
        }
        let mut role_caps: BTreeMap<String, String> = BTreeMap::new();
        for (name, rules) in &cluster_rules {
            let caps = rbac::names(&capabilities(rules));
            let e = g.entity("ClusterRole", None, name);
            e.attrs
                .insert("rbac_capabilities", Attr::Text(caps.clone()));
            role_caps.insert(e.id.clone(), caps);
        }
        for r in self.of_kind("Role") {
            let caps = rbac::names(&capabilities(&rules_of(&r.body)));
            let e = g.entity("Role", r.namespace.as_deref(), &r.name);
            e.attrs
                .insert("rbac_capabilities", Attr::Text(caps.clone()));
            role_caps.insert(e.id.clone(), caps);
        }
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            for b in self.of_kind(kind) {
                let binding_id = entity_id(kind, b.namespace.as_deref(), &b.name);
                let Some(role_kind) = b.body.pointer("/roleRef/kind").and_then(Value::as_str)
                else {
                    continue;
                };
                // The API server refuses a ClusterRoleBinding to a Role; a manifest may still
                // hold one, and it grants nothing.
                if kind == "ClusterRoleBinding" && role_kind != "ClusterRole" {
                    g.entity(kind, None, &b.name).attrs.insert(
                        "invalid",
                        Attr::Text("a ClusterRoleBinding can only refer to a ClusterRole".into()),
                    );
                    continue;
                }
                let role_name = b
                    .body
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                // A RoleBinding's Role is in its namespace; a ClusterRole has none.
                let role_ns = (role_kind == "Role")
                    .then_some(b.namespace.as_deref())
                    .flatten();
                let role_id = g.entity(role_kind, role_ns, role_name).id.clone();
                g.relate(&binding_id, "role_ref", &role_id);
                let scope = match kind {
                    "RoleBinding" => b.namespace.clone().unwrap_or_default(),
                    _ => "*".to_string(),
                };
                let caps = role_caps.get(&role_id).cloned().unwrap_or_default();
                for s in b
                    .body
                    .get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let skind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
                    let sname = s.get("name").and_then(Value::as_str).unwrap_or_default();
                    let sns = match skind {
                        "ServiceAccount" => s
                            .get("namespace")
                            .and_then(Value::as_str)
                            .or(b.namespace.as_deref()),
                        _ => None,
                    };
                    if !matches!(skind, "ServiceAccount" | "User" | "Group") || sname.is_empty() {
                        continue;
                    }
                    let subject_id = g.entity(skind, sns, sname).id.clone();
                    g.relate(&binding_id, "binds", &subject_id);
                    let r = g.relate(&subject_id, "bound_to", &role_id);
                    r.attrs.insert("binding", Attr::Text(binding_id.clone()));
                    r.attrs.insert("scope", Attr::Text(scope.clone()));
                    r.attrs
                        .insert("rbac_capabilities", Attr::Text(caps.clone()));
                }
            }
        }
    }

    /// Services select pods and expose them; Ingresses route to Services.
    fn services(&self, g: &mut Graph) {
        for svc in self.of_kind("Service") {
            let ns = svc.namespace.as_deref();
            let svc_id = entity_id("Service", ns, &svc.name);
            let svc_type = svc
                .body
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP")
                .to_string();
            g.entity("Service", ns, &svc.name)
                .attrs
                .insert("service_type", Attr::Text(svc_type.clone()));
            let external = matches!(svc_type.as_str(), "LoadBalancer" | "NodePort");
            let Some(selector) = svc
                .body
                .pointer("/spec/selector")
                .and_then(Value::as_object)
            else {
                continue;
            };
            if selector.is_empty() {
                continue;
            }
            let wanted: Vec<(String, String)> = selector
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect();
            for pod in self.of_kind("Pod").filter(|p| p.namespace == svc.namespace) {
                if wanted.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                    let pod_id = entity_id("Pod", ns, &pod.name);
                    g.relate(&svc_id, "selects", &pod_id);
                    if external {
                        g.relate(&svc_id, "exposes", &pod_id)
                            .attrs
                            .insert("exposure", Attr::Text(svc_type.to_ascii_lowercase()));
                    }
                }
            }
        }
        for ing in self.of_kind("Ingress") {
            let ns = ing.namespace.as_deref();
            let ing_id = entity_id("Ingress", ns, &ing.name);
            let mut backends = Vec::new();
            if let Some(n) = ing
                .body
                .pointer("/spec/defaultBackend/service/name")
                .and_then(Value::as_str)
            {
                backends.push(n.to_string());
            }
            for rule in ing
                .body
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for p in rule
                    .pointer("/http/paths")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(n) = p.pointer("/backend/service/name").and_then(Value::as_str) {
                        backends.push(n.to_string());
                    }
                }
            }
            backends.sort();
            backends.dedup();
            for b in backends {
                let svc = g.entity("Service", ns, &b).id.clone();
                g.relate(&ing_id, "routes", &svc);
            }
        }
    }
}

/// `owner -[owns]-> object` for each controller owner reference.
fn owners(g: &mut Graph, o: &Stored) {
    let id = entity_id(&o.kind, o.namespace.as_deref(), &o.name);
    for r in o
        .body
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(kind), Some(name)) = (
            r.get("kind").and_then(Value::as_str),
            r.get("name").and_then(Value::as_str),
        ) {
            let owner_ns = if matches!(kind, "Node" | "Namespace") {
                None
            } else {
                o.namespace.as_deref()
            };
            let owner = g.entity(kind, owner_ns, name).id.clone();
            g.relate(&owner, "owns", &id);
        }
    }
}

/// A workload's pod template summarised on the workload entity (what its pods will be).
fn workload_template(g: &mut Graph, w: &Stored, spec: &Value) {
    let p = pod_spec(spec, None, None);
    let id = entity_id(&w.kind, w.namespace.as_deref(), &w.name);
    let sa = g
        .entity("ServiceAccount", w.namespace.as_deref(), &p.service_account)
        .id
        .clone();
    g.relate(&id, "uses_sa", &sa);
    let e = g.entity(&w.kind, w.namespace.as_deref(), &w.name);
    for (k, v) in [
        ("privileged", p.containers.iter().any(|c| c.privileged)),
        ("host_pid", p.host_pid),
        ("host_ipc", p.host_ipc),
        ("host_network", p.host_network),
        (
            "host_path_mounted",
            p.volumes
                .iter()
                .any(|(_, v)| matches!(v, VolumeSource::HostPath(_))),
        ),
    ] {
        e.attrs.insert(k, Attr::Bool(v));
    }
    let images: BTreeSet<&str> = p.containers.iter().map(|c| c.image.as_str()).collect();
    e.attrs.insert(
        "images",
        Attr::Text(images.into_iter().collect::<Vec<_>>().join(",")),
    );
}

/// Labels as the `labels` column spells them: `key=value` pairs, sorted by key, comma-joined
/// (neither label keys nor values may contain a comma or `=`, so this is unambiguous).
fn label_text(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in labels {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Whether a label selector (`matchLabels` and `matchExpressions`) selects `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let ok_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| {
            m.iter()
                .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
        });
    let ok_exprs = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|exprs| {
            exprs.iter().all(|e| {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let values: Vec<&str> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|v| v.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let have = labels.get(key).map(String::as_str);
                match e.get("operator").and_then(Value::as_str) {
                    Some("In") => have.is_some_and(|h| values.contains(&h)),
                    Some("NotIn") => have.is_none_or(|h| !values.contains(&h)),
                    Some("Exists") => have.is_some(),
                    Some("DoesNotExist") => have.is_none(),
                    _ => false,
                }
            })
        });
    ok_labels && ok_exprs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(obj: Value) -> ObjectChange {
        let meta = &obj["metadata"];
        ObjectChange {
            cluster: "c".into(),
            event_time: 0,
            op: ObjectOp::Snapshot,
            uid: format!(
                "{}-{}-{}",
                obj["kind"].as_str().unwrap_or(""),
                meta["namespace"].as_str().unwrap_or(""),
                meta["name"].as_str().unwrap_or("")
            ),
            api_version: obj["apiVersion"].as_str().unwrap_or("v1").into(),
            kind: obj["kind"].as_str().unwrap_or("").into(),
            namespace: meta["namespace"].as_str().map(str::to_string),
            name: meta["name"].as_str().unwrap_or("").into(),
            resource_version: None,
            labels: meta["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            object_json: Some(obj.to_string()),
        }
    }

    fn cluster() -> Inventory {
        let rbac = "rbac.authorization.k8s.io/v1";
        let objects = vec![
            json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}),
            json!({"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"deployer","namespace":"ci"}}),
            json!({"apiVersion":rbac,"kind":"Role","metadata":{"name":"run-pods","namespace":"ci"},
                "rules":[{"apiGroups":[""],"resources":["pods"],"verbs":["create"]},
                         {"apiGroups":[""],"resources":["pods/exec"],"verbs":["create"]}]}),
            json!({"apiVersion":rbac,"kind":"RoleBinding","metadata":{"name":"deployer-runs-pods","namespace":"ci"},
                "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"run-pods"},
                "subjects":[{"kind":"ServiceAccount","name":"deployer","namespace":"ci"}]}),
            // Aggregated: its rules come from the labelled role.
            json!({"apiVersion":rbac,"kind":"ClusterRole","metadata":{"name":"reader"},
                "aggregationRule":{"clusterRoleSelectors":[{"matchLabels":{"korvid.test/aggregate":"true"}}]}}),
            json!({"apiVersion":rbac,"kind":"ClusterRole","metadata":{"name":"secret-lister","labels":{"korvid.test/aggregate":"true"}},
                "rules":[{"apiGroups":[""],"resources":["secrets"],"verbs":["list"]}]}),
            json!({"apiVersion":rbac,"kind":"ClusterRoleBinding","metadata":{"name":"ops-read"},
                "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"reader"},
                "subjects":[{"kind":"Group","name":"ops"}]}),
            json!({"apiVersion":rbac,"kind":"ClusterRoleBinding","metadata":{"name":"broken"},
                "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"run-pods"},
                "subjects":[{"kind":"User","name":"eve"}]}),
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"agent","namespace":"ci","labels":{"app":"agent"},
                    "ownerReferences":[{"kind":"DaemonSet","name":"agent","controller":true}]},
                "spec":{"nodeName":"n1","serviceAccountName":"deployer","hostPID":true,"shareProcessNamespace":true,
                    "containers":[
                        {"name":"main","image":"registry.example.com/ci/agent:2.1",
                         "securityContext":{"privileged":true},
                         "ports":[{"name":"metrics","containerPort":9100,"hostPort":9100}],
                         "volumeMounts":[{"name":"root","mountPath":"/host"}]},
                        {"name":"side","image":"busybox"}],
                    "volumes":[{"name":"root","hostPath":{"path":"/"}}]},
                "status":{"containerStatuses":[{"name":"main","imageID":"registry.example.com/ci/agent@sha256:aa"}]}}),
            json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"agent","namespace":"ci"},
                "spec":{"type":"NodePort","selector":{"app":"agent"}}}),
        ];
        let mut inv = Inventory::default();
        for o in objects {
            inv.apply(&change(o));
        }
        inv.apply_scan(ImageScan {
            cluster: "c".into(),
            event_time: 0,
            image_digest: "sha256:aa".into(),
            image_ref: "registry.example.com/ci/agent:2.1".into(),
            registry: "registry.example.com".into(),
            repository: "ci/agent".into(),
            tag: Some("2.1".into()),
            scanner: "trivy".into(),
            scanner_version: None,
            os_family: None,
            vulnerabilities: vec![],
            counts: korvid_schemas::SeverityCounts {
                critical: 2,
                ..Default::default()
            },
        });
        inv
    }

    #[test]
    fn bindings_carry_what_their_subject_can_do() {
        let g = cluster().graph();
        let sa = "ServiceAccount/ci/deployer";
        let bound: Vec<&Relation> = g.out(sa, "bound_to").collect();
        assert_eq!(bound.len(), 1);
        assert_eq!(bound[0].dst, "Role/ci/run-pods");
        assert_eq!(
            bound[0].attrs["rbac_capabilities"],
            Attr::Text("create_pods,exec_pods".into())
        );
        assert_eq!(bound[0].attrs["scope"], Attr::Text("ci".into()));
        let ops: Vec<&Relation> = g.out("Group//ops", "bound_to").collect();
        assert_eq!(
            ops[0].attrs["rbac_capabilities"],
            Attr::Text("list_secrets".into()),
            "aggregated"
        );
        assert_eq!(ops[0].attrs["scope"], Attr::Text("*".into()));
        assert!(
            g.out("User//eve", "bound_to").next().is_none(),
            "a CRB to a Role grants nothing"
        );
    }

    #[test]
    fn pods_show_privileges_mounts_exposure_and_images() {
        let g = cluster().graph();
        let main = "Container/ci/agent:main";
        assert_eq!(g.entities[main].attrs["privileged"], Attr::Bool(true));
        let agent_labels = Attr::Text("app=agent".into());
        assert_eq!(g.entities["Pod/ci/agent"].attrs["labels"], agent_labels);
        assert_eq!(
            g.entities[main].attrs["labels"], agent_labels,
            "a container carries its pod's labels"
        );
        assert!(!g.entities["Node//n1"].attrs.contains_key("labels"));
        let mount: Vec<&Relation> = g.out(main, "mounts").collect();
        assert_eq!(mount[0].attrs["read_only"], Attr::Bool(false));
        assert!(
            g.out(&mount[0].dst, "host_path")
                .any(|r| r.dst == "HostPath///")
        );
        assert!(
            g.out("Pod/ci/agent", "runs_on")
                .any(|r| r.dst == "Node//n1")
        );
        assert!(
            g.out("Pod/ci/agent", "uses_sa")
                .any(|r| r.attrs["token_mounted"] == Attr::Bool(true))
        );
        assert!(
            g.out("DaemonSet/ci/agent", "owns")
                .any(|r| r.dst == "Pod/ci/agent")
        );
        assert!(
            g.out("Service/ci/agent", "exposes")
                .any(|r| r.dst == "Pod/ci/agent")
        );
        assert!(g.relations.values().any(|r| r.kind == "exposes"
            && r.dst == main
            && r.attrs["exposure"] == Attr::Text("host_port".into())));
        assert!(
            g.out(main, "shares_pid_namespace")
                .any(|r| r.dst == "Container/ci/agent:side")
        );
        let image: Vec<&Relation> = g.out(main, "runs_image").collect();
        let img = &g.entities[&image[0].dst];
        assert_eq!(img.attrs["vuln_critical"], Attr::Int(2));
        assert_eq!(
            g.entities["Image//docker.io/library/busybox:latest"].attrs["scanned"],
            Attr::Bool(false)
        );
        assert!(
            g.out("Node//n1", "identity")
                .any(|r| r.dst == "User//system:node:n1")
        );
    }

    #[test]
    fn size_follows_applies_replacements_and_deletes() {
        let mut inv = Inventory::default();
        let pod = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"n"},
            "spec":{"containers":[{"name":"c","image":"nginx"}]}});
        inv.apply(&change(pod.clone()));
        let one = inv.size().bytes;
        assert!(one > 500, "{one}");
        inv.apply(&change(pod.clone()));
        assert_eq!(inv.size().bytes, one, "a replacement is not counted twice");
        let mut gone = change(pod);
        gone.op = ObjectOp::Delete;
        inv.apply(&gone);
        assert_eq!((inv.size().objects, inv.size().bytes), (0, 0));
    }

    #[test]
    fn neighbourhoods_and_deletes() {
        let mut inv = cluster();
        let g = inv.graph();
        let seeds: BTreeSet<String> = ["ServiceAccount/ci/deployer".to_string()].into();
        let near = g.neighbourhood(&seeds, 1);
        assert!(
            near.entities.contains_key("Pod/ci/agent")
                && near.entities.contains_key("Role/ci/run-pods")
        );
        assert!(
            !near.entities.contains_key("Container/ci/agent:main"),
            "two hops away"
        );
        assert!(
            g.neighbourhood(&seeds, 2)
                .entities
                .contains_key("Container/ci/agent:main")
        );
        let mut gone = change(
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"agent","namespace":"ci"}}),
        );
        gone.op = ObjectOp::Delete;
        assert_eq!(inv.apply(&gone).as_deref(), Some("Pod/ci/agent"));
        let g = inv.graph();
        assert!(!g.entities.contains_key("Pod/ci/agent"));
        assert!(!g.entities.contains_key("Container/ci/agent:main"));
    }
}
