//! The deployment artefacts in deploy/ agree with the code: every Deployment runs a real
//! subcommand of the `korvid` image as a locked-down non-root user, the shipped korvid.toml
//! loads through the real settings loader, its listen ports are the ones the Services, probes
//! and scrape annotations use, the watcher role reads exactly what ingest watches, the API
//! server's webhook kubeconfig posts to the route ingest serves, the production overlay's Kafka
//! security (protocol in the ConfigMap, password and CA from Secrets) reaches every pod, the
//! telemetry server's TLS and token come from Secrets with probes and scrape annotations to
//! match, and the dashboard queries only metrics korvid registers. The Helm chart gets the same
//! checks when `helm` is on PATH, and kustomize's own rendering when `kubectl` is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, PodSpec, Secret, Service,
    ServiceAccount, Volume,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use korvid_common::kafka::{KafkaSettings, SaslMechanism, SecurityProtocol};
use korvid_common::settings::{SettingsError, Validate};
use korvid_common::telemetry::TelemetrySettings;
use korvid_ingest::IngestSettings;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The services, one Deployment each.
const SERVICES: [&str; 5] = ["ingest", "enrich", "detect", "notify", "lake"];
/// The services with a consumer group (ingest only produces): each pod joins as itself.
const GROUP_CONSUMERS: [&str; 4] = ["enrich", "detect", "notify", "lake"];
/// The image's user (Dockerfile `USER 10001`).
const UID: i64 = 10001;
/// The telemetry routes (common/src/telemetry.rs); `the_probe_and_scrape_paths_are_served`
/// checks that korvid serves them.
const LIVENESS: &str = "/healthz";
const READINESS: &str = "/readyz";
const METRICS: &str = "/metrics";
/// The variables that give every pod the telemetry server's access settings: certificate, key,
/// client CA and token as files from mounted Secrets, and whether the probes need the token.
const TELEMETRY_VARS: [&str; 5] = [
    "KORVID__TELEMETRY__TLS__CERT_FILE",
    "KORVID__TELEMETRY__TLS__KEY_FILE",
    "KORVID__TELEMETRY__TLS__CLIENT_CA_FILE",
    "KORVID__TELEMETRY__BEARER_TOKEN_FILE",
    "KORVID__TELEMETRY__PROBES_REQUIRE_TOKEN",
];

/// A Service port: (Service, namespace, port) -> (subcommand of the pods, pod port).
type Reach = BTreeMap<(String, String, i32), (String, i32)>;

fn repo() -> PathBuf {
    // Read at run time: a test binary built from another checkout sharing the target directory
    // must look at the checkout being tested.
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(text: &str, origin: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"))
}

fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Manifests as Kubernetes types

/// Every object of one rendering, typed.
#[derive(Default)]
struct Manifests {
    origin: String,
    /// Namespace of namespaced objects that name none (kustomize's `namespace`, helm's
    /// `--namespace`).
    namespace: String,
    namespaces: Vec<Namespace>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    autoscalers: Vec<HorizontalPodAutoscaler>,
    disruption_budgets: Vec<PodDisruptionBudget>,
    claims: Vec<PersistentVolumeClaim>,
}

impl Manifests {
    fn new(origin: &str, namespace: &str) -> Self {
        Manifests {
            origin: origin.to_string(),
            namespace: namespace.to_string(),
            ..Default::default()
        }
    }

    /// Adds every document of a multi-document YAML text; an unexpected kind is a failure.
    fn add(&mut self, text: &str, file: &str) {
        for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: document {i} is not YAML: {e}"));
            if doc.is_null() {
                continue;
            }
            let field = |k: &str| {
                doc.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let (api_version, kind) = (field("apiVersion"), field("kind"));
            let at = format!("{file} (document {i}, {kind})");
            match (api_version.as_str(), kind.as_str()) {
                ("v1", "Namespace") => self.namespaces.push(typed(doc, &at)),
                ("v1", "ConfigMap") => self.config_maps.push(typed(doc, &at)),
                ("v1", "Secret") => self.secrets.push(typed(doc, &at)),
                ("v1", "ServiceAccount") => self.service_accounts.push(typed(doc, &at)),
                ("v1", "Service") => self.services.push(typed(doc, &at)),
                ("v1", "PersistentVolumeClaim") => self.claims.push(typed(doc, &at)),
                ("apps/v1", "Deployment") => self.deployments.push(typed(doc, &at)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    self.cluster_roles.push(typed(doc, &at))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    self.cluster_role_bindings.push(typed(doc, &at))
                }
                ("autoscaling/v2", "HorizontalPodAutoscaler") => {
                    self.autoscalers.push(typed(doc, &at))
                }
                ("policy/v1", "PodDisruptionBudget") => {
                    self.disruption_budgets.push(typed(doc, &at))
                }
                _ => panic!("{at}: unexpected kind {api_version}/{kind}"),
            }
        }
    }

    fn namespace_of(&self, meta: &ObjectMeta) -> String {
        meta.namespace
            .clone()
            .unwrap_or_else(|| self.namespace.clone())
    }

    /// (kind, namespace, name) of every object, to compare renderings.
    fn identities(&self) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        let mut add = |kind: &str, meta: &ObjectMeta, namespaced: bool| {
            let ns = if namespaced {
                self.namespace_of(meta)
            } else {
                String::new()
            };
            out.insert((kind.to_string(), ns, name(meta)));
        };
        for o in &self.namespaces {
            add("Namespace", &o.metadata, false);
        }
        for o in &self.config_maps {
            add("ConfigMap", &o.metadata, true);
        }
        for o in &self.secrets {
            add("Secret", &o.metadata, true);
        }
        for o in &self.service_accounts {
            add("ServiceAccount", &o.metadata, true);
        }
        for o in &self.cluster_roles {
            add("ClusterRole", &o.metadata, false);
        }
        for o in &self.cluster_role_bindings {
            add("ClusterRoleBinding", &o.metadata, false);
        }
        for o in &self.deployments {
            add("Deployment", &o.metadata, true);
        }
        for o in &self.services {
            add("Service", &o.metadata, true);
        }
        for o in &self.autoscalers {
            add("HorizontalPodAutoscaler", &o.metadata, true);
        }
        for o in &self.disruption_budgets {
            add("PodDisruptionBudget", &o.metadata, true);
        }
        for o in &self.claims {
            add("PersistentVolumeClaim", &o.metadata, true);
        }
        out
    }
}

/// Parses a document into its Kubernetes type and fails on any field the type does not have
/// (k8s-openapi skips unknown fields, so a misspelt `readOnlyRootFilesystem` would pass).
fn typed<T: DeserializeOwned + Serialize>(doc: serde_yaml::Value, at: &str) -> T {
    let original = serde_json::to_value(&doc).unwrap_or_else(|e| panic!("{at}: {e}"));
    let object: T =
        serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let back = serde_json::to_value(&object).unwrap_or_else(|e| panic!("{at}: {e}"));
    let mut unknown = Vec::new();
    dropped_fields(&original, &back, "", &mut unknown);
    assert!(
        unknown.is_empty(),
        "{at}: fields the Kubernetes schema does not have: {unknown:?}"
    );
    object
}

fn dropped_fields(
    original: &serde_json::Value,
    back: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let at = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => dropped_fields(v, w, &at, out),
                    None if !v.is_null() => out.push(at),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                dropped_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// deploy/kustomize/base, loaded as kustomize would: the listed files, in its namespace.
fn kustomize_base() -> Manifests {
    let dir = repo().join("deploy/kustomize/base");
    let k = yaml(&read(&dir.join("kustomization.yaml")), "kustomization.yaml");
    let namespace = k
        .get("namespace")
        .and_then(|n| n.as_str())
        .expect("the base sets a namespace");
    let mut m = Manifests::new("deploy/kustomize/base", namespace);
    let resources = k
        .get("resources")
        .and_then(|r| r.as_sequence())
        .expect("kustomization.yaml lists resources");
    for r in resources {
        let file = r.as_str().expect("a resource is a path");
        let path = dir.join(file);
        assert!(path.is_file(), "base resource {file} is not a file");
        m.add(&read(&path), &format!("deploy/kustomize/base/{file}"));
    }
    m
}

/// What a tool prints, when it is on PATH.
fn tool_output(tool: &str, args: &[&str]) -> Option<String> {
    match Command::new(tool).args(args).current_dir(repo()).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{tool} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8(out.stdout).expect("UTF-8 output"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// What each pod runs with

/// The sections of korvid.toml the manifests must agree with, loaded and validated by the real
/// loader (the binary's whole `KorvidSettings` is checked by running korvid on the same file).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeployedSettings {
    kafka: KafkaSettings,
    telemetry: TelemetrySettings,
    ingest: IngestSettings,
}

impl Validate for DeployedSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        self.kafka.validate()?;
        self.telemetry.validate()?;
        self.ingest.validate()
    }
}

/// One Deployment's pod and the settings it runs with.
struct Pod<'a> {
    name: String,
    subcommand: String,
    spec: &'a PodSpec,
    container: &'a Container,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    settings: DeployedSettings,
}

impl Pod<'_> {
    fn port(&self, port: &IntOrString) -> i32 {
        match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(s) => self
                .container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .unwrap_or_else(|| panic!("{}: no container port named {s}", self.name)),
        }
    }

    fn named_port(&self, port: &str) -> i32 {
        self.port(&IntOrString::String(port.to_string()))
    }

    fn env(&self, name: &str) -> Option<String> {
        self.container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }
}

/// The volume mounted at the longest mount path holding `path`, and the path inside it.
fn volume_holding<'a>(
    spec: &'a PodSpec,
    c: &Container,
    path: &str,
) -> Option<(&'a Volume, String)> {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?;
    let inside = Path::new(path)
        .strip_prefix(&mount.mount_path)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Some((volume, inside))
}

fn socket(listen: &str, key: &str) -> SocketAddr {
    listen
        .parse()
        .unwrap_or_else(|e| panic!("{key} = {listen:?}: {e}"))
}

/// korvid.toml as the pod sees it: the file KORVID_CONFIG names, from the ConfigMap mounted
/// there (secrets stay out of it: they come as KORVID__ variables from Secrets).
fn config_text(m: &Manifests, pod: &str, spec: &PodSpec, c: &Container) -> String {
    let path = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "KORVID_CONFIG")
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("{pod}: KORVID_CONFIG is not set"));
    let (volume, key) =
        volume_holding(spec, c, &path).unwrap_or_else(|| panic!("{pod}: {path} is not mounted"));
    if let Some(source) = &volume.config_map {
        let map = m
            .config_maps
            .iter()
            .find(|x| name(&x.metadata) == source.name)
            .unwrap_or_else(|| panic!("{pod}: ConfigMap {} is not in {}", source.name, m.origin));
        return map
            .data
            .as_ref()
            .and_then(|d| d.get(&key))
            .unwrap_or_else(|| panic!("{pod}: ConfigMap {} has no key {key}", source.name))
            .clone();
    }
    panic!("{pod}: korvid.toml does not come from a ConfigMap");
}

/// The name a pod of Deployment `deployment` gets (the downward API's `metadata.name`).
fn pod_name(deployment: &str) -> String {
    format!("{deployment}-7c9f8d6b5-x2v4q")
}

/// A variable's value with the `$(NAME)` references to variables defined before it replaced,
/// as the kubelet expands them (an undefined reference stays as written).
fn expand(value: &str, defined: &[(String, String)]) -> String {
    defined.iter().fold(value.to_string(), |v, (name, with)| {
        v.replace(&format!("$({name})"), with)
    })
}

/// Loads korvid.toml with the pod's KORVID__ variables through the real loader, and runs the
/// binary on the same file and variables. A variable naming a file (`..._FILE`) must point
/// into a mounted Secret or ConfigMap; here it names a placeholder file instead (the real one
/// exists only in the pod), so its name and its fit with the other settings are still checked.
/// A variable from a Secret key stands in with a placeholder value, for the same reason; one
/// from the pod's `metadata.name` gets [`pod_name`]. `$(NAME)` references are expanded.
fn load_settings(
    pod: &str,
    text: &str,
    c: &Container,
    mounted: impl Fn(&str) -> bool,
) -> DeployedSettings {
    let dir = tempfile::tempdir().expect("tmp");
    let mut env = Vec::new();
    let mut defined: Vec<(String, String)> = Vec::new();
    for var in c.env.iter().flatten() {
        let field = var
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        let value = match (&var.value, field) {
            (Some(v), _) => Some(expand(v, &defined)),
            (None, Some("metadata.name")) => Some(pod_name(pod)),
            (None, Some(path)) => Some(format!("placeholder-for-{path}")),
            (None, None) => None,
        };
        if let Some(v) = &value {
            defined.push((var.name.clone(), v.clone()));
        }
        if !var.name.starts_with("KORVID__") {
            continue;
        }
        match &value {
            Some(v) if var.name.ends_with("_FILE") => {
                assert!(
                    mounted(v),
                    "{pod}: {} = {v} is not in a mounted Secret or ConfigMap",
                    var.name
                );
                // Long enough for a bearer token; certificates are parsed only when served.
                let stand_in = dir.path().join(var.name.to_lowercase());
                std::fs::write(&stand_in, "placeholder-for-a-mounted-secret-file\n")
                    .expect("write a placeholder file");
                env.push((var.name.clone(), stand_in.display().to_string()));
            }
            Some(v) => env.push((var.name.clone(), v.clone())),
            None => {
                let from = var
                    .value_from
                    .as_ref()
                    .and_then(|f| f.secret_key_ref.as_ref());
                assert!(
                    from.is_some_and(|s| !s.name.is_empty() && !s.key.is_empty()),
                    "{pod}: {} has neither a value nor a Secret key",
                    var.name
                );
                env.push((var.name.clone(), "placeholder-for-a-secret-value".into()));
            }
        }
    }
    let file = dir.path().join("korvid.toml");
    std::fs::write(&file, text).expect("write korvid.toml");
    let settings: DeployedSettings = korvid_common::settings::load(Some(&file), env.clone())
        .unwrap_or_else(|e| panic!("{pod}: its korvid.toml does not load: {e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_korvid"))
        .env_clear()
        .envs(env)
        .arg("--config")
        .arg(&file)
        .args(["rules", "list"])
        .output()
        .expect("run korvid");
    assert!(
        out.status.success(),
        "{pod}: korvid refuses its configuration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    settings
}

fn pods(m: &Manifests) -> Vec<Pod<'_>> {
    m.deployments
        .iter()
        .map(|d| {
            let dname = name(&d.metadata);
            let template = &d.spec.template;
            let spec = template.spec.as_ref().expect("pod spec");
            assert_eq!(spec.containers.len(), 1, "{dname}: one container");
            let c = &spec.containers[0];
            let image = c.image.clone().unwrap_or_default();
            let repository = image.split('@').next().unwrap_or_default();
            let repository = match repository.rsplit_once(':') {
                Some((r, tag)) if !tag.contains('/') => r,
                _ => repository,
            };
            assert_eq!(
                repository.rsplit('/').next(),
                Some("korvid"),
                "{dname}: image {image} is not korvid"
            );
            assert!(
                c.command.is_none(),
                "{dname}: the entrypoint is the image's korvid"
            );
            let args = c.args.clone().unwrap_or_default();
            assert_eq!(args.len(), 1, "{dname}: args are one subcommand: {args:?}");
            let text = config_text(m, &dname, spec, c);
            let mounted = |p: &str| {
                volume_holding(spec, c, p).is_some_and(|(v, inside)| {
                    !inside.is_empty() && (v.secret.is_some() || v.config_map.is_some())
                })
            };
            let settings = load_settings(&dname, &text, c, mounted);
            let meta = template.metadata.clone().unwrap_or_default();
            Pod {
                name: dname,
                subcommand: args[0].clone(),
                spec,
                container: c,
                labels: meta.labels.unwrap_or_default(),
                annotations: meta.annotations.unwrap_or_default(),
                settings,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checks of one rendering

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn match_labels(s: &LabelSelector) -> BTreeMap<String, String> {
    assert!(
        s.match_expressions.is_none(),
        "selectors use matchLabels only"
    );
    s.match_labels.clone().unwrap_or_default()
}

/// One Deployment per service, each a real subcommand.
fn check_services_run(pods: &[Pod<'_>], origin: &str) {
    let mut run: Vec<&str> = pods.iter().map(|p| p.subcommand.as_str()).collect();
    run.sort_unstable();
    let mut expected = SERVICES.to_vec();
    expected.sort_unstable();
    assert_eq!(run, expected, "{origin}: one Deployment per service");
    for sub in run {
        let out = Command::new(env!("CARGO_BIN_EXE_korvid"))
            .args([sub, "--help"])
            .output()
            .expect("run korvid");
        assert!(
            out.status.success(),
            "{origin}: `korvid {sub}` is not a subcommand"
        );
    }
}

/// Non-root, read-only root, no capabilities, RuntimeDefault seccomp, bounded resources.
fn check_locked_down(p: &Pod<'_>) {
    let n = &p.name;
    let pod_sc = p.spec.security_context.clone().unwrap_or_default();
    let sc = p.container.security_context.clone().unwrap_or_default();
    assert_eq!(
        sc.run_as_non_root.or(pod_sc.run_as_non_root),
        Some(true),
        "{n}: runAsNonRoot"
    );
    assert_eq!(
        sc.run_as_user.or(pod_sc.run_as_user),
        Some(UID),
        "{n}: runAsUser"
    );
    let seccomp = sc
        .seccomp_profile
        .or(pod_sc.seccomp_profile)
        .map(|s| s.type_);
    assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"), "{n}: seccomp");
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{n}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{n}: allowPrivilegeEscalation"
    );
    assert_ne!(sc.privileged, Some(true), "{n}: privileged");
    let caps = sc.capabilities.unwrap_or_default();
    assert!(
        caps.add.unwrap_or_default().is_empty(),
        "{n}: adds capabilities"
    );
    assert!(
        caps.drop.unwrap_or_default().iter().any(|c| c == "ALL"),
        "{n}: drops ALL capabilities"
    );
    for (flag, on) in [
        ("hostNetwork", p.spec.host_network),
        ("hostPID", p.spec.host_pid),
        ("hostIPC", p.spec.host_ipc),
    ] {
        assert_ne!(on, Some(true), "{n}: {flag}");
    }
    // A read-only root still needs somewhere for scratch files.
    let (tmp, _) = volume_holding(p.spec, p.container, "/tmp/scratch")
        .unwrap_or_else(|| panic!("{n}: nothing is mounted at /tmp"));
    assert!(tmp.empty_dir.is_some(), "{n}: /tmp is an emptyDir");
    let resources = p.container.resources.clone().unwrap_or_default();
    for (what, list) in [
        ("requests", resources.requests),
        ("limits", resources.limits),
    ] {
        let list = list.unwrap_or_default();
        for r in ["cpu", "memory"] {
            assert!(list.contains_key(r), "{n}: no {r} in resources.{what}");
        }
    }
}

/// The telemetry server listens where the probes, scrape annotations and ports say, and the
/// probes reach it as its access settings allow: a GET without headers (over HTTPS with
/// `telemetry.tls`) while the probes are open, a TCP check of the port where the kubelet cannot
/// pass (it presents no client certificate, and a token in the pod spec would leak).
fn check_telemetry(p: &Pod<'_>) {
    let n = &p.name;
    let listen = socket(&p.settings.telemetry.listen, "telemetry.listen");
    assert!(
        listen.ip().is_unspecified(),
        "{n}: telemetry.listen {listen} is out of the kubelet's and Prometheus's reach"
    );
    let port = i32::from(listen.port());
    assert_eq!(
        p.named_port("metrics"),
        port,
        "{n}: containerPort metrics vs telemetry.listen"
    );
    let t = &p.settings.telemetry;
    let https = t.tls.is_some();
    let mutual = t
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca_file.is_some());
    let closed = mutual || t.probes_require_token;
    for (probe, path, what) in [
        (&p.container.liveness_probe, LIVENESS, "liveness"),
        (&p.container.readiness_probe, READINESS, "readiness"),
    ] {
        let probe = probe
            .as_ref()
            .unwrap_or_else(|| panic!("{n}: no {what} probe"));
        if closed {
            let tcp = probe.tcp_socket.as_ref().unwrap_or_else(|| {
                panic!(
                    "{n}: the {what} probe cannot pass mutual TLS or a token: probe the port \
                     with tcpSocket"
                )
            });
            assert!(
                probe.http_get.is_none() && probe.exec.is_none() && probe.grpc.is_none(),
                "{n}: one {what} probe handler"
            );
            assert_eq!(p.port(&tcp.port), port, "{n}: {what} probe port");
            continue;
        }
        let get = probe
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("{n}: no HTTP {what} probe"));
        assert_eq!(get.path.as_deref(), Some(path), "{n}: {what} probe path");
        assert_eq!(p.port(&get.port), port, "{n}: {what} probe port");
        assert_eq!(
            get.scheme.as_deref().unwrap_or("HTTP"),
            if https { "HTTPS" } else { "HTTP" },
            "{n}: {what} probe scheme vs telemetry.tls"
        );
        assert!(
            get.http_headers.as_ref().is_none_or(Vec::is_empty),
            "{n}: the {what} probe sends headers to probes that need none"
        );
    }
    let annotation = |k: &str| p.annotations.get(k).map(String::as_str);
    assert_eq!(
        annotation("prometheus.io/scrape"),
        Some("true"),
        "{n}: scrape"
    );
    assert_eq!(
        annotation("prometheus.io/port"),
        Some(port.to_string().as_str()),
        "{n}: scrape port"
    );
    assert_eq!(
        annotation("prometheus.io/path"),
        Some(METRICS),
        "{n}: scrape path"
    );
    assert_eq!(
        annotation("prometheus.io/scheme").unwrap_or("http"),
        if https { "https" } else { "http" },
        "{n}: scrape scheme vs telemetry.tls"
    );
}

/// Every pod serves its telemetry the same way (one scrape config fits them all), and its
/// certificate, key, client CA and token are files in mounted Secrets, named by variables.
fn check_telemetry_access(m: &Manifests, pods: &[Pod<'_>]) {
    let origin = &m.origin;
    let way = |p: &Pod<'_>| {
        let t = &p.settings.telemetry;
        (
            t.tls.is_some(),
            t.tls
                .as_ref()
                .is_some_and(|tls| tls.client_ca_file.is_some()),
            t.bearer_token_file.is_some(),
            t.probes_require_token,
        )
    };
    let Some(first) = pods.first() else { return };
    for p in pods {
        let n = &p.name;
        assert_eq!(
            way(p),
            way(first),
            "{origin}: {n} and {} serve telemetry differently",
            first.name
        );
        let (tls, mutual, token, _) = way(p);
        for (var, set) in [
            (TELEMETRY_VARS[0], tls),
            (TELEMETRY_VARS[1], tls),
            (TELEMETRY_VARS[2], mutual),
            (TELEMETRY_VARS[3], token),
        ] {
            if !set {
                continue;
            }
            let path = p
                .env(var)
                .unwrap_or_else(|| panic!("{origin}: {n}: the file is not given by {var}"));
            let (volume, _) = volume_holding(p.spec, p.container, &path)
                .unwrap_or_else(|| panic!("{origin}: {n}: {path} is not mounted"));
            assert!(
                volume.secret.is_some(),
                "{origin}: {n}: {var} = {path} is not in a mounted Secret"
            );
        }
    }
}

/// Every Service selects pods, and forwards only to ports they declare.
fn check_services(m: &Manifests, pods: &[Pod<'_>]) -> Reach {
    let mut reach = Reach::new();
    for s in &m.services {
        let sname = name(&s.metadata);
        let spec = s.spec.clone().unwrap_or_default();
        let selector = spec.selector.unwrap_or_default();
        let selected: Vec<&Pod<'_>> = pods
            .iter()
            .filter(|p| selects(&selector, &p.labels))
            .collect();
        assert!(
            !selected.is_empty(),
            "{}: Service {sname} selects no pod",
            m.origin
        );
        for port in spec.ports.unwrap_or_default() {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            for p in &selected {
                let pod_port = p.port(&target);
                let declared = p
                    .container
                    .ports
                    .iter()
                    .flatten()
                    .any(|c| c.container_port == pod_port);
                assert!(
                    declared,
                    "{}: {sname}:{} reaches port {pod_port} of {}, which it does not declare",
                    m.origin, port.port, p.name
                );
                reach.insert(
                    (sname.clone(), m.namespace_of(&s.metadata), port.port),
                    (p.subcommand.clone(), pod_port),
                );
            }
        }
    }
    reach
}

/// ingest: the webhook listens on its declared port; the watchers' account is bound to a
/// read-only role granting exactly the kinds they watch.
fn check_ingest(m: &Manifests, ingest: &Pod<'_>) {
    let n = &ingest.name;
    let w = &ingest.settings.ingest.audit_webhook;
    assert!(w.enabled, "{n}: the audit webhook is off");
    let listen = socket(&w.listen, "ingest.audit_webhook.listen");
    assert!(
        listen.ip().is_unspecified(),
        "{n}: the webhook listens on {listen} only"
    );
    assert_eq!(
        ingest.named_port("webhook"),
        i32::from(listen.port()),
        "{n}: containerPort webhook vs ingest.audit_webhook.listen"
    );

    let k = &ingest.settings.ingest.kubernetes;
    assert!(k.enabled, "{n}: the watchers are off");
    let account = ingest
        .spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let sa = m
        .service_accounts
        .iter()
        .find(|s| name(&s.metadata) == account)
        .unwrap_or_else(|| panic!("{n}: ServiceAccount {account} is not in {}", m.origin));
    let token = ingest
        .spec
        .automount_service_account_token
        .or(sa.automount_service_account_token);
    assert_ne!(
        token,
        Some(false),
        "{n}: the watchers need the in-cluster token"
    );
    let namespace = m.namespace_of(&sa.metadata);
    let roles: Vec<&ClusterRole> = m
        .cluster_role_bindings
        .iter()
        .filter(|b| {
            b.subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == account
                    && s.namespace.as_deref().unwrap_or(&m.namespace) == namespace
            })
        })
        .map(|b| {
            assert_eq!(b.role_ref.kind, "ClusterRole");
            m.cluster_roles
                .iter()
                .find(|r| name(&r.metadata) == b.role_ref.name)
                .unwrap_or_else(|| panic!("ClusterRole {} is not in {}", b.role_ref.name, m.origin))
        })
        .collect();
    assert!(
        !roles.is_empty(),
        "{n}: {account} is bound to no ClusterRole"
    );
    let rules: Vec<PolicyRule> = roles
        .iter()
        .flat_map(|r| r.rules.clone().unwrap_or_default())
        .collect();
    check_read_only(&rules, &m.origin);
    let granted: BTreeSet<(String, String)> = rules
        .iter()
        .filter(|r| {
            ["get", "list", "watch"]
                .iter()
                .all(|v| r.verbs.iter().any(|x| x == v))
        })
        .flat_map(|r| {
            let groups = r.api_groups.clone().unwrap_or_default();
            r.resources
                .clone()
                .unwrap_or_default()
                .into_iter()
                .flat_map(move |res| groups.clone().into_iter().map(move |g| (g, res.clone())))
        })
        .collect();
    // What the watchers list and watch: ingest.kubernetes.kinds + extra_kinds, as
    // ingest/src/kube_watch.rs resolves them.
    let watched: BTreeSet<(String, String)> = k
        .kind_specs()
        .expect("kinds parse")
        .iter()
        .map(|spec| (spec.group.clone(), spec.api_resource().plural))
        .collect();
    assert_eq!(
        granted, watched,
        "{}: the watcher role grants exactly what ingest watches",
        m.origin
    );
}

fn check_read_only(rules: &[PolicyRule], origin: &str) {
    for r in rules {
        for verb in &r.verbs {
            assert!(
                matches!(verb.as_str(), "get" | "list" | "watch"),
                "{origin}: verb {verb} on {:?}",
                r.resources
            );
        }
        let resources = r.resources.clone().unwrap_or_default();
        assert!(
            !resources.iter().any(|x| x == "*" || x.contains('/')),
            "{origin}: {resources:?}"
        );
        assert!(
            !r.api_groups.iter().flatten().any(|g| g == "*"),
            "{origin}: apiGroups *"
        );
        assert!(r.non_resource_urls.is_none(), "{origin}: nonResourceURLs");
    }
}

/// The autoscaler scales detect on something detect requests, within the partitions it can
/// consume, and the Deployment leaves the count to it.
fn check_autoscaler(m: &Manifests, pods: &[Pod<'_>]) {
    assert_eq!(m.autoscalers.len(), 1, "{}: one autoscaler", m.origin);
    let spec = m.autoscalers[0].spec.clone();
    assert_eq!(spec.scale_target_ref.kind, "Deployment");
    let detect = pods
        .iter()
        .find(|p| p.name == spec.scale_target_ref.name)
        .unwrap_or_else(|| panic!("{}: no Deployment {}", m.origin, spec.scale_target_ref.name));
    assert_eq!(
        detect.subcommand, "detect",
        "{}: the autoscaler scales detect",
        m.origin
    );
    let deployment = m
        .deployments
        .iter()
        .find(|d| name(&d.metadata) == detect.name)
        .expect("the Deployment");
    assert!(
        deployment.spec.replicas.is_none(),
        "{}: {} sets replicas, which every apply would force over the autoscaler's",
        m.origin,
        detect.name
    );
    let min = spec.min_replicas.unwrap_or(1);
    assert!(
        min >= 1 && min <= spec.max_replicas,
        "{}: replicas {min}..={}",
        m.origin,
        spec.max_replicas
    );
    let partitions = detect.settings.kafka.partitions;
    assert!(
        spec.max_replicas <= partitions,
        "{}: maxReplicas {} > kafka.partitions {partitions}: the extra consumers would idle",
        m.origin,
        spec.max_replicas
    );
    let metrics = spec.metrics.unwrap_or_default();
    assert!(
        !metrics.is_empty(),
        "{}: the autoscaler has no metric",
        m.origin
    );
    let requests = detect
        .container
        .resources
        .clone()
        .unwrap_or_default()
        .requests
        .unwrap_or_default();
    for metric in metrics {
        if let Some(r) = metric.resource {
            assert!(
                requests.contains_key(&r.name),
                "{}: detect requests no {}",
                m.origin,
                r.name
            );
        }
    }
}

/// Every Deployment has one disruption budget; every budget and Deployment selects its pods.
fn check_disruption_budgets(m: &Manifests, pods: &[Pod<'_>]) {
    let budgets: Vec<(String, BTreeMap<String, String>)> = m
        .disruption_budgets
        .iter()
        .map(|b| {
            let selector = b
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .expect("a budget has a selector");
            (name(&b.metadata), match_labels(selector))
        })
        .collect();
    for p in pods {
        let n = budgets
            .iter()
            .filter(|(_, s)| selects(s, &p.labels))
            .count();
        assert_eq!(n, 1, "{}: {} has {n} disruption budgets", m.origin, p.name);
    }
    for (b, selector) in &budgets {
        assert!(
            pods.iter().any(|p| selects(selector, &p.labels)),
            "{}: budget {b} selects nothing",
            m.origin
        );
    }
    for d in &m.deployments {
        let spec = &d.spec;
        let template = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        assert!(
            selects(&match_labels(&spec.selector), &template),
            "{}: {} does not select its own pods",
            m.origin,
            name(&d.metadata)
        );
    }
}

/// Every pod talks to Kafka the same way, and its credentials come from Secrets, never from a
/// ConfigMap: the SASL password is a Secret key (`KORVID__KAFKA__SECURITY__PASSWORD`) or a file
/// in a mounted Secret, and so is a client key; CA and certificate files are mounted.
fn check_kafka_security(m: &Manifests, pods: &[Pod<'_>]) {
    let origin = &m.origin;
    for map in &m.config_maps {
        for (key, text) in map.data.iter().flatten() {
            let secret = text.lines().map(str::trim_start).find(|l| {
                l.starts_with("password ")
                    || l.starts_with("password=")
                    || l.starts_with("\"sasl.password\"")
            });
            assert!(
                secret.is_none(),
                "{origin}: ConfigMap {} {key} holds a password: {secret:?}",
                name(&map.metadata)
            );
        }
    }
    let Some(first) = pods.first() else { return };
    let way = |p: &Pod<'_>| {
        let s = &p.settings.kafka.security;
        (
            s.protocol,
            s.sasl_mechanism,
            s.username.clone(),
            s.password.is_some() || s.password_file.is_some(),
            s.ca_file.is_some(),
            s.cert_file.is_some(),
        )
    };
    for p in pods {
        let n = &p.name;
        assert_eq!(
            way(p),
            way(first),
            "{origin}: {n} and {} talk to Kafka differently",
            first.name
        );
        let s = &p.settings.kafka.security;
        if s.password.is_some() {
            let from_secret = p
                .container
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "KORVID__KAFKA__SECURITY__PASSWORD")
                .and_then(|e| e.value_from.as_ref())
                .is_some_and(|f| f.secret_key_ref.is_some());
            assert!(
                from_secret,
                "{origin}: {n}: the Kafka password is not taken from a Secret"
            );
        }
        for (key, file, secret_only) in [
            ("password_file", &s.password_file, true),
            ("ca_file", &s.ca_file, false),
            ("cert_file", &s.cert_file, false),
            ("key_file", &s.key_file, true),
        ] {
            if file.is_none() {
                continue;
            }
            let var = format!("KORVID__KAFKA__SECURITY__{}", key.to_uppercase());
            let path = p.env(&var).unwrap_or_else(|| {
                panic!("{origin}: {n}: kafka.security.{key} is not given by {var}")
            });
            let (volume, _) = volume_holding(p.spec, p.container, &path)
                .unwrap_or_else(|| panic!("{origin}: {n}: {path} is not mounted"));
            assert!(
                volume.secret.is_some() || (!secret_only && volume.config_map.is_some()),
                "{origin}: {n}: {var} = {path} is not in a mounted Secret"
            );
        }
        s.properties().unwrap_or_else(|e| {
            panic!("{origin}: {n}: no librdkafka properties from [kafka.security]: {e}")
        });
    }
}

/// The production overlay's Kafka: SASL/SCRAM over TLS in every pod, with the password and the
/// brokers' CA from Secrets, as librdkafka will be given them.
fn check_production_kafka(pods: &[Pod<'_>], origin: &str) {
    assert_eq!(pods.len(), SERVICES.len(), "{origin}: every service");
    for p in pods {
        let n = &p.name;
        let s = &p.settings.kafka.security;
        assert_eq!(s.protocol, SecurityProtocol::SaslSsl, "{origin}: {n}");
        assert_eq!(
            s.sasl_mechanism,
            Some(SaslMechanism::ScramSha512),
            "{origin}: {n}"
        );
        assert!(s.ca_file.is_some(), "{origin}: {n}: no CA for the brokers");
        let props: BTreeMap<&str, String> = s
            .properties()
            .expect("checked by check_kafka_security")
            .into_iter()
            .collect();
        assert_eq!(props["security.protocol"], "sasl_ssl", "{origin}: {n}");
        assert_eq!(
            props.get("sasl.username").map(String::as_str),
            s.username.as_deref(),
            "{origin}: {n}"
        );
        assert!(
            !props["sasl.password"].is_empty(),
            "{origin}: {n}: no password reaches librdkafka"
        );
        assert!(
            props.contains_key("ssl.ca.location"),
            "{origin}: {n}: the CA does not reach librdkafka"
        );
    }
}

/// The production overlay's telemetry: HTTPS and a bearer token on /metrics in every pod, the
/// probes left open (no client CA, no token on them), so they stay HTTPS GETs.
fn check_production_telemetry(pods: &[Pod<'_>], origin: &str) {
    assert_eq!(pods.len(), SERVICES.len(), "{origin}: every service");
    for p in pods {
        let n = &p.name;
        let t = &p.settings.telemetry;
        let tls = t
            .tls
            .as_ref()
            .unwrap_or_else(|| panic!("{origin}: {n}: telemetry over plain HTTP"));
        assert!(
            tls.client_ca_file.is_none(),
            "{origin}: {n}: mutual TLS would shut the kubelet's probes out"
        );
        assert!(
            t.bearer_token_file.is_some(),
            "{origin}: {n}: /metrics without a token"
        );
        assert!(
            !t.probes_require_token,
            "{origin}: {n}: probes need the token"
        );
    }
}

/// Static group membership: every consumer pod joins its group as itself, its own name (from
/// the downward API) as `kafka.group_instance_id`, so a restarted pod gets its partitions back
/// without a rebalance; two pods never share an id (the broker would fence one of them).
fn check_static_membership(pods: &[Pod<'_>], origin: &str) {
    for p in pods {
        if !GROUP_CONSUMERS.contains(&p.subcommand.as_str()) {
            continue;
        }
        let own = pod_name(&p.name);
        assert_eq!(
            p.settings.kafka.group_instance_id.as_deref(),
            Some(own.as_str()),
            "{origin}: {}: kafka.group_instance_id is not the pod's name",
            p.name
        );
        assert!(
            !p.settings.kafka.client.contains_key("group.instance.id"),
            "{origin}: {}: one group.instance.id for every pod",
            p.name
        );
    }
}

/// Every check above, for one rendering.
fn check_rendering(m: &Manifests) -> Vec<Pod<'_>> {
    let pods = pods(m);
    check_services_run(&pods, &m.origin);
    for p in &pods {
        check_locked_down(p);
        check_telemetry(p);
    }
    let ingest = pods
        .iter()
        .find(|p| p.subcommand == "ingest")
        .expect("ingest");
    check_ingest(m, ingest);
    check_services(m, &pods);
    check_autoscaler(m, &pods);
    check_disruption_budgets(m, &pods);
    check_kafka_security(m, &pods);
    check_telemetry_access(m, &pods);
    check_static_membership(&pods, &m.origin);
    for r in &m.cluster_roles {
        check_read_only(&r.rules.clone().unwrap_or_default(), &m.origin);
    }
    pods
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn the_kustomize_base_agrees_with_the_code() {
    let base = kustomize_base();
    assert_eq!(base.namespaces.len(), 1, "the base creates its namespace");
    assert_eq!(name(&base.namespaces[0].metadata), base.namespace);
    check_rendering(&base);
    // README, ingest's 403 message and ingest/tests/rbac.rs name deploy/rbac.yaml.
    assert_eq!(
        read(&repo().join("deploy/kustomize/base/rbac.yaml")),
        read(&repo().join("deploy/rbac.yaml")),
        "deploy/kustomize/base/rbac.yaml must be a copy of deploy/rbac.yaml"
    );
}

#[test]
fn the_audit_webhook_kubeconfig_posts_to_the_route_ingest_serves() {
    let base = kustomize_base();
    let pods = pods(&base);
    let reach = check_services(&base, &pods);
    let ingest = pods
        .iter()
        .find(|p| p.subcommand == "ingest")
        .expect("ingest");

    let kubeconfig = yaml(
        &read(&repo().join("deploy/audit-webhook-kubeconfig.yaml")),
        "deploy/audit-webhook-kubeconfig.yaml",
    );
    let server = kubeconfig["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("clusters[0].cluster.server");
    let (scheme, rest) = server.split_once("://").expect("the server is a URL");
    let (authority, route) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .expect("the server names its port");
    let port: i32 = port.parse().expect("a numeric port");

    // AuditWebhook::router (ingest/src/webhook.rs) serves ingest.audit_webhook.path.
    let webhook = &ingest.settings.ingest.audit_webhook;
    assert_eq!(route, webhook.path, "{server} vs ingest.audit_webhook.path");

    // <service>.<namespace>.svc: the Service forwards that port to ingest's webhook port.
    let mut labels = host.split('.');
    let (service, namespace) = (labels.next().unwrap_or(""), labels.next().unwrap_or(""));
    let (component, pod_port) = reach
        .get(&(service.to_string(), namespace.to_string(), port))
        .unwrap_or_else(|| panic!("{server}: no Service {service} in {namespace} on port {port}"));
    assert_eq!(component, "ingest", "{server} reaches {component}");
    assert_eq!(*pod_port, ingest.named_port("webhook"));

    // https exactly when the webhook serves TLS.
    let tls = webhook.tls.is_some()
        || ingest
            .env("KORVID__INGEST__AUDIT_WEBHOOK__TLS__CERT_FILE")
            .is_some();
    assert_eq!(scheme == "https", tls, "{server} vs the webhook's TLS");
}

#[test]
fn kustomize_renders_the_base_and_the_production_overlay() {
    let Some(rendered) = tool_output("kubectl", &["kustomize", "deploy/kustomize/base"]) else {
        println!(
            "kubectl is not on PATH: kustomize's rendering of the base and the production \
             overlay was not checked (the base's files were, by the other tests)"
        );
        return;
    };
    let files = kustomize_base();
    let mut base = Manifests::new("kubectl kustomize deploy/kustomize/base", &files.namespace);
    base.add(&rendered, "kubectl kustomize deploy/kustomize/base");
    assert_eq!(
        base.identities(),
        files.identities(),
        "kustomize renders the listed files"
    );
    check_rendering(&base);

    let dir = "deploy/kustomize/overlays/production";
    let rendered = tool_output("kubectl", &["kustomize", dir]).expect("kubectl ran before");
    let mut overlay = Manifests::new(dir, &files.namespace);
    overlay.add(&rendered, dir);
    let pods = check_rendering(&overlay);
    check_production_kafka(&pods, dir);
    check_production_telemetry(&pods, dir);
}

/// The patches of the production overlay that change every Deployment: Kafka's credentials and
/// the telemetry server's access.
const PRODUCTION_PATCHES: [&str; 2] = ["kafka-sasl.yaml", "telemetry-access.yaml"];

/// The production overlay without kubectl: the base with the overlay's korvid.toml in the
/// ConfigMap (its configMapGenerator replaces the base's) and [`PRODUCTION_PATCHES`] merged into
/// every Deployment as kustomize merges them (env by name, mounts by path, volumes by name, pod
/// annotations by key, the probes' scheme). `kustomize_renders_the_base_and_the_production_overlay`
/// checks kustomize's own rendering where kubectl is installed.
fn production_overlay_by_hand() -> Manifests {
    let dir = repo().join("deploy/kustomize/overlays/production");
    let k = yaml(&read(&dir.join("kustomization.yaml")), "kustomization.yaml");
    let generated = k["configMapGenerator"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|g| {
            g["name"].as_str() == Some("korvid-config")
                && g["behavior"].as_str() == Some("replace")
                && g["files"]
                    .as_sequence()
                    .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("korvid.toml")))
        });
    assert!(
        generated,
        "the overlay replaces korvid-config with its korvid.toml"
    );
    for file in PRODUCTION_PATCHES {
        let patched = k["patches"].as_sequence().into_iter().flatten().any(|p| {
            p["path"].as_str() == Some(file)
                && p["target"]["kind"].as_str() == Some("Deployment")
                && p["target"]["name"].is_null()
        });
        assert!(patched, "{file} patches every Deployment");
    }

    let mut overlay = kustomize_base();
    overlay.origin = format!(
        "deploy/kustomize/overlays/production (korvid.toml, {})",
        PRODUCTION_PATCHES.join(", ")
    );
    let config = overlay
        .config_maps
        .iter_mut()
        .find(|c| name(&c.metadata) == "korvid-config")
        .expect("the base's ConfigMap");
    config
        .data
        .get_or_insert_with(BTreeMap::new)
        .insert("korvid.toml".into(), read(&dir.join("korvid.toml")));
    for file in PRODUCTION_PATCHES {
        let patch = yaml(&read(&dir.join(file)), file);
        merge_into_every_deployment(&mut overlay, &patch, file);
    }
    overlay
}

/// Merges one patch of every Deployment's pod template into each Deployment.
fn merge_into_every_deployment(overlay: &mut Manifests, patch: &serde_yaml::Value, file: &str) {
    let template = &patch["spec"]["template"];
    let annotations: BTreeMap<String, String> = match &template["metadata"]["annotations"] {
        serde_yaml::Value::Null => BTreeMap::new(),
        a => serde_yaml::from_value(a.clone())
            .unwrap_or_else(|e| panic!("{file}: pod annotations: {e}")),
    };
    let pod = &template["spec"];
    // A probe patch names only what it changes (no port), which its Kubernetes type refuses:
    // its scheme is merged here, the rest of the container through the type.
    let mut schemes = Vec::new();
    let mut containers = pod["containers"].clone();
    for c in containers.as_sequence_mut().into_iter().flatten() {
        let c = c.as_mapping_mut().expect("a container is a mapping");
        for probe in ["livenessProbe", "readinessProbe"] {
            if let Some(p) = c.remove(probe) {
                let scheme = p["httpGet"]["scheme"].as_str().map(str::to_string);
                schemes.push((probe, scheme));
            }
        }
    }
    let containers: Vec<Container> = typed(containers, &format!("{file} containers"));
    let volumes: Vec<Volume> = match &pod["volumes"] {
        serde_yaml::Value::Null => Vec::new(),
        v => typed(v.clone(), &format!("{file} volumes")),
    };
    for d in &mut overlay.deployments {
        let meta = d
            .spec
            .template
            .metadata
            .get_or_insert_with(Default::default);
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(annotations.clone());
        let spec = d.spec.template.spec.as_mut().expect("pod spec");
        for patch in &containers {
            let c = spec
                .containers
                .iter_mut()
                .find(|c| c.name == patch.name)
                .unwrap_or_else(|| panic!("{file}: no container {}", patch.name));
            merge_by(&mut c.env, patch.env.iter().flatten(), |e| e.name.clone());
            merge_by(
                &mut c.volume_mounts,
                patch.volume_mounts.iter().flatten(),
                |m| m.mount_path.clone(),
            );
            for (probe, scheme) in &schemes {
                let into = match *probe {
                    "livenessProbe" => &mut c.liveness_probe,
                    _ => &mut c.readiness_probe,
                };
                let get = into
                    .as_mut()
                    .and_then(|p| p.http_get.as_mut())
                    .unwrap_or_else(|| panic!("{file}: {probe} patches no HTTP probe"));
                if scheme.is_some() {
                    get.scheme.clone_from(scheme);
                }
            }
        }
        merge_by(&mut spec.volumes, &volumes, |v| v.name.clone());
    }
}

/// The production overlay's Kafka security (without kubectl): SASL_SSL, password and CA from
/// Secrets.
#[test]
fn the_production_overlay_takes_kafka_credentials_from_secrets() {
    let overlay = production_overlay_by_hand();
    let pods = pods(&overlay);
    check_kafka_security(&overlay, &pods);
    check_static_membership(&pods, &overlay.origin);
    check_production_kafka(&pods, &overlay.origin);
}

/// The production overlay's telemetry (without kubectl): HTTPS and a bearer token from Secrets,
/// the probes HTTPS GETs, the scrape annotations https.
#[test]
fn the_production_overlay_serves_metrics_over_https_with_a_token() {
    let overlay = production_overlay_by_hand();
    let pods = pods(&overlay);
    for p in &pods {
        check_telemetry(p);
    }
    check_telemetry_access(&overlay, &pods);
    check_production_telemetry(&pods, &overlay.origin);
}

/// A strategic merge of one list: items with the key of an existing one replace it, others
/// are added.
fn merge_by<'a, T: Clone + 'a>(
    into: &mut Option<Vec<T>>,
    from: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&T) -> String,
) {
    let list = into.get_or_insert_with(Vec::new);
    for item in from {
        match list.iter_mut().find(|x| key(x) == key(item)) {
            Some(slot) => *slot = item.clone(),
            None => list.push(item.clone()),
        }
    }
}

#[test]
fn the_helm_chart_agrees_with_the_code() {
    let dir = repo().join("deploy/helm/korvid");
    let chart = yaml(&read(&dir.join("Chart.yaml")), "Chart.yaml");
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("korvid"));
    for key in ["version", "appVersion"] {
        assert!(
            chart[key].as_str().is_some_and(|v| !v.is_empty()),
            "Chart.yaml {key}"
        );
    }
    let values = yaml(&read(&dir.join("values.yaml")), "values.yaml");

    // Every `.Values.a.b` a template reads is in values.yaml.
    let mut templates: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
        .expect("templates/")
        .map(|e| e.expect("an entry").path())
        .collect();
    templates.sort();
    let mut references = 0;
    for file in &templates {
        let text = read(file);
        for (at, _) in text.match_indices(".Values.") {
            let path: String = text[at + ".Values.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            let path = path.trim_end_matches('.');
            let mut node = &values;
            for key in path.split('.') {
                node = node.get(key).unwrap_or_else(|| {
                    panic!("{}: .Values.{path} is not in values.yaml", file.display())
                });
            }
            references += 1;
        }
    }
    assert!(
        references > 50,
        "only {references} .Values references found"
    );

    // The chart's watcher rules are deploy/rbac.yaml's.
    let mut rbac = Manifests::new("deploy/rbac.yaml", "korvid");
    rbac.add(&read(&repo().join("deploy/rbac.yaml")), "deploy/rbac.yaml");
    let rules: Vec<PolicyRule> =
        serde_json::from_value(serde_json::to_value(&values["rbac"]["rules"]).expect("JSON"))
            .expect("rbac.rules are PolicyRules");
    assert_eq!(
        Some(rules),
        rbac.cluster_roles[0].rules.clone(),
        "values.yaml rbac.rules vs deploy/rbac.yaml"
    );

    // Static membership, on by default: each consumer's Deployment passes its pod's name
    // (downward API) as the group instance id when kafka.staticMembership is on; ingest has no
    // consumer group. The rendering below checks the ids themselves.
    assert_eq!(
        values["kafka"]["staticMembership"].as_bool(),
        Some(true),
        "values.yaml kafka.staticMembership"
    );
    for service in SERVICES {
        let file = format!("templates/deployment-{service}.yaml");
        let text = read(&dir.join(&file));
        let sets = text.contains("KORVID__KAFKA__GROUP_INSTANCE_ID");
        assert_eq!(
            sets,
            GROUP_CONSUMERS.contains(&service),
            "{file}: static membership exactly for the group consumers"
        );
        if sets {
            for part in [
                "if .Values.kafka.staticMembership",
                r#"(dict "name" "POD_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name")))"#,
                r#"(dict "name" "KORVID__KAFKA__GROUP_INSTANCE_ID" "value" "$(POD_NAME)")"#,
                r#"set $args "env""#,
                r#"include "korvid.deployment" $args"#,
            ] {
                assert!(text.contains(part), "{file}: no {part}");
            }
        }
    }

    check_chart_telemetry_access(&dir, &values);

    let chart_dir = dir.display().to_string();
    let Some(rendered) = tool_output(
        "helm",
        &["template", "korvid", &chart_dir, "--namespace", "korvid"],
    ) else {
        println!(
            "helm is not on PATH: the chart was not rendered; checked Chart.yaml, values.yaml, \
             its watcher rules and every .Values reference of its templates"
        );
        return;
    };
    let mut m = Manifests::new("helm template deploy/helm/korvid", "korvid");
    m.add(&rendered, "helm template deploy/helm/korvid");
    check_rendering(&m);

    // Static membership off: no pod sets a group instance id.
    let rendered = tool_output(
        "helm",
        &[
            "template",
            "korvid",
            &chart_dir,
            "--namespace",
            "korvid",
            "--set",
            "kafka.staticMembership=false",
        ],
    )
    .expect("helm ran before");
    let origin = "helm template deploy/helm/korvid (kafka.staticMembership: false)";
    let mut m = Manifests::new(origin, "korvid");
    m.add(&rendered, origin);
    for p in pods(&m) {
        assert_eq!(
            p.settings.kafka.group_instance_id, None,
            "{origin}: {}",
            p.name
        );
    }

    // Kafka over SASL_SSL with mutual TLS, every secret from a Secret.
    let mut args = vec!["template", "korvid", &chart_dir, "--namespace", "korvid"];
    for set in [
        "kafka.security.protocol=sasl_ssl",
        "kafka.security.saslMechanism=SCRAM-SHA-512",
        "kafka.security.username=korvid",
        "kafka.security.passwordSecret=korvid-kafka",
        "kafka.security.caSecret=korvid-kafka-ca",
        "kafka.security.clientCertSecret=korvid-kafka-client",
    ] {
        args.extend(["--set", set]);
    }
    let rendered = tool_output("helm", &args).expect("helm ran before");
    let origin = "helm template deploy/helm/korvid (kafka.security: sasl_ssl)";
    let mut m = Manifests::new(origin, "korvid");
    m.add(&rendered, origin);
    let pods = check_rendering(&m);
    check_production_kafka(&pods, origin);
    for p in &pods {
        let s = &p.settings.kafka.security;
        assert!(
            s.cert_file.is_some() && s.key_file.is_some(),
            "{origin}: {}: no client certificate",
            p.name
        );
    }

    render_chart_telemetry_access(&chart_dir);
}

/// The body of `{{- define "<name>" -}}` in a template file, to its closing `{{- end -}}`.
fn helm_define<'a>(text: &'a str, define: &str) -> &'a str {
    let open = format!("{{{{- define \"{define}\" -}}}}");
    let at = text
        .find(&open)
        .unwrap_or_else(|| panic!("no template {define}"))
        + open.len();
    let len = text[at..]
        .find("{{- end -}}")
        .unwrap_or_else(|| panic!("template {define} does not end"));
    &text[at..at + len]
}

/// The chart's telemetry access without helm: off by default; `_helpers.tpl` writes the
/// variables, mounts, volumes, probes and scrape annotations once, for the Deployment template
/// every service's file includes; and the variables it writes are settings korvid knows.
fn check_chart_telemetry_access(dir: &Path, values: &serde_yaml::Value) {
    let t = &values["telemetry"];
    for (key, value) in [
        ("bearerTokenSecret", &t["bearerTokenSecret"]),
        ("tls.secretName", &t["tls"]["secretName"]),
        ("tls.clientCaSecret", &t["tls"]["clientCaSecret"]),
    ] {
        assert_eq!(value.as_str(), Some(""), "values.yaml telemetry.{key}: off");
    }
    assert_eq!(
        t["probesRequireToken"].as_bool(),
        Some(false),
        "values.yaml telemetry.probesRequireToken"
    );
    for key in ["bearerTokenKey", "tls.clientCaKey"] {
        let node = key.split('.').fold(t, |n, k| &n[k]);
        assert!(
            node.as_str().is_some_and(|k| !k.is_empty()),
            "values.yaml telemetry.{key}"
        );
    }

    let helpers = read(&dir.join("templates/_helpers.tpl"));
    let env = helm_define(&helpers, "korvid.telemetryEnv");
    for var in TELEMETRY_VARS {
        assert!(
            env.contains(&format!("- name: {var}\n")),
            "korvid.telemetryEnv does not set {var}"
        );
    }
    let deployment = helm_define(&helpers, "korvid.deployment");
    for part in [
        r#"include "korvid.telemetryEnv" $root"#,
        r#"include "korvid.telemetryMounts" $root"#,
        r#"include "korvid.telemetryVolumes" $root"#,
        r#"include "korvid.telemetryProbe" (dict "root" $root "path" "/healthz")"#,
        r#"include "korvid.telemetryProbe" (dict "root" $root "path" "/readyz")"#,
        r#"include "korvid.scrapeAnnotations" $root"#,
    ] {
        assert!(deployment.contains(part), "korvid.deployment: no {part}");
    }
    assert!(
        !deployment.contains("httpGet") && !deployment.contains("prometheus.io/"),
        "korvid.deployment writes probes or scrape annotations of its own"
    );
    for service in SERVICES {
        let file = format!("templates/deployment-{service}.yaml");
        let text = read(&dir.join(&file));
        assert!(
            text.contains(r#"include "korvid.deployment""#),
            "{file}: not from korvid.deployment"
        );
        for own in ["KORVID__TELEMETRY__", "Probe", "prometheus.io/"] {
            assert!(
                !text.contains(own),
                "{file}: {own}... repeated instead of taken from _helpers.tpl"
            );
        }
    }

    // Each variable the helper writes, through the real loader: a _FILE one names a file, the
    // others take the value the helper gives them.
    let files = tempfile::tempdir().expect("tmp");
    let lines: Vec<&str> = env.lines().map(str::trim).collect();
    let mut vars = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(var) = line.strip_prefix("- name: ") else {
            continue;
        };
        let value = if var.ends_with("_FILE") {
            let stand_in = files.path().join(var.to_lowercase());
            std::fs::write(&stand_in, "placeholder-for-a-mounted-secret-file\n")
                .expect("write a placeholder file");
            stand_in.display().to_string()
        } else {
            let value = lines
                .get(i + 1)
                .and_then(|l| l.strip_prefix("value: "))
                .unwrap_or_else(|| panic!("korvid.telemetryEnv: {var} has no literal value"));
            value.trim_matches('"').to_string()
        };
        vars.push((var.to_string(), value));
    }
    let loaded: TelemetryOnly = korvid_common::settings::load(None, vars.clone())
        .unwrap_or_else(|e| panic!("korvid.telemetryEnv's variables {vars:?}: {e}"));
    let t = loaded.telemetry;
    let tls = t.tls.expect("KORVID__TELEMETRY__TLS__* make telemetry.tls");
    assert!(tls.client_ca_file.is_some(), "telemetry.tls.client_ca_file");
    assert!(t.bearer_token_file.is_some(), "telemetry.bearer_token_file");
    assert!(t.probes_require_token, "telemetry.probes_require_token");
}

/// `[telemetry]` alone, as the loader reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TelemetryOnly {
    telemetry: TelemetrySettings,
}

impl Validate for TelemetryOnly {
    fn validate(&self) -> Result<(), SettingsError> {
        self.telemetry.validate()
    }
}

/// `helm template` of the chart with `--set` values.
fn helm_template(chart_dir: &str, sets: &[&str]) -> Option<String> {
    let mut args = vec!["template", "korvid", chart_dir, "--namespace", "korvid"];
    for set in sets {
        args.extend(["--set", set]);
    }
    tool_output("helm", &args)
}

/// A file from a Secret: (variable naming it, its path in the pod, the Secret).
type SecretFile<'a> = (&'a str, &'a str, &'a str);

/// The telemetry access of every pod of a rendering, checked against what the chart promises:
/// the variables, their Secrets mounted read-only, the probes, the scrape scheme.
fn check_rendered_telemetry(
    pods: &[Pod<'_>],
    origin: &str,
    secrets: &[SecretFile<'_>],
    probes_require_token: bool,
    probes: &str,
) {
    assert_eq!(pods.len(), SERVICES.len(), "{origin}: every service");
    let https = secrets.iter().any(|(var, _, _)| *var == TELEMETRY_VARS[0]);
    for p in pods {
        let n = &p.name;
        for (var, path, secret) in secrets {
            assert_eq!(p.env(var).as_deref(), Some(*path), "{origin}: {n}: {var}");
            let (volume, _) = volume_holding(p.spec, p.container, path)
                .unwrap_or_else(|| panic!("{origin}: {n}: {path} is not mounted"));
            assert_eq!(
                volume
                    .secret
                    .as_ref()
                    .and_then(|s| s.secret_name.as_deref()),
                Some(*secret),
                "{origin}: {n}: {path}"
            );
            let mount = p
                .container
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == volume.name)
                .expect("the mount holding it");
            assert_eq!(
                mount.read_only,
                Some(true),
                "{origin}: {n}: {path} writable"
            );
        }
        for var in &TELEMETRY_VARS[..4] {
            assert_eq!(
                p.env(var).is_some(),
                secrets.iter().any(|(v, _, _)| v == var),
                "{origin}: {n}: {var} set or not"
            );
        }
        assert_eq!(
            p.env(TELEMETRY_VARS[4]).as_deref(),
            probes_require_token.then_some("true"),
            "{origin}: {n}: {}",
            TELEMETRY_VARS[4]
        );
        for (probe, what) in [
            (&p.container.liveness_probe, "liveness"),
            (&p.container.readiness_probe, "readiness"),
        ] {
            let probe = probe.as_ref().expect("checked by check_telemetry");
            let got = match (&probe.http_get, &probe.tcp_socket) {
                (Some(get), None) => format!("httpGet {}", get.scheme.as_deref().unwrap_or("HTTP")),
                (None, Some(_)) => "tcpSocket".to_string(),
                _ => "something else".to_string(),
            };
            assert_eq!(got, probes, "{origin}: {n}: {what} probe");
        }
        assert_eq!(
            p.annotations
                .get("prometheus.io/scheme")
                .map(String::as_str),
            https.then_some("https"),
            "{origin}: {n}: prometheus.io/scheme"
        );
    }
}

/// The chart with telemetry TLS and a token, then mutual TLS, then the token on the probes.
fn render_chart_telemetry_access(chart_dir: &str) {
    let tls = [
        (
            TELEMETRY_VARS[0],
            "/etc/korvid/telemetry-tls/tls.crt",
            "korvid-telemetry-tls",
        ),
        (
            TELEMETRY_VARS[1],
            "/etc/korvid/telemetry-tls/tls.key",
            "korvid-telemetry-tls",
        ),
    ];
    let token = (
        TELEMETRY_VARS[3],
        "/etc/korvid/telemetry-token/token",
        "korvid-metrics-token",
    );
    let client_ca = (
        TELEMETRY_VARS[2],
        "/etc/korvid/telemetry-client-ca/ca.crt",
        "korvid-prometheus-ca",
    );
    let cases: [(&str, Vec<&str>, Vec<SecretFile<'_>>, &str); 3] = [
        (
            "TLS and a token on /metrics",
            vec![
                "telemetry.tls.secretName=korvid-telemetry-tls",
                "telemetry.bearerTokenSecret=korvid-metrics-token",
            ],
            vec![tls[0], tls[1], token],
            "httpGet HTTPS",
        ),
        (
            "mutual TLS and a token",
            vec![
                "telemetry.tls.secretName=korvid-telemetry-tls",
                "telemetry.tls.clientCaSecret=korvid-prometheus-ca",
                "telemetry.bearerTokenSecret=korvid-metrics-token",
            ],
            vec![tls[0], tls[1], client_ca, token],
            "tcpSocket",
        ),
        (
            "a token on the probes too",
            vec![
                "telemetry.bearerTokenSecret=korvid-metrics-token",
                "telemetry.probesRequireToken=true",
            ],
            vec![token],
            "tcpSocket",
        ),
    ];
    for (what, sets, secrets, probes) in cases {
        let rendered = helm_template(chart_dir, &sets).expect("helm ran before");
        let origin = format!("helm template deploy/helm/korvid ({what})");
        let mut m = Manifests::new(&origin, "korvid");
        m.add(&rendered, &origin);
        let pods = check_rendering(&m);
        let probes_require_token = sets.contains(&"telemetry.probesRequireToken=true");
        check_rendered_telemetry(&pods, &origin, &secrets, probes_require_token, probes);
        if probes == "tcpSocket" {
            continue;
        }
        for p in &pods {
            let t = &p.settings.telemetry;
            assert!(
                t.tls.is_some() && t.bearer_token_file.is_some() && !t.probes_require_token,
                "{origin}: {}: {t:?}",
                p.name
            );
        }
    }

    // Settings korvid would refuse are refused at render time, with the key to fix.
    for (sets, key) in [
        (
            ["telemetry.tls.clientCaSecret=korvid-prometheus-ca"],
            "telemetry.tls.secretName",
        ),
        (
            ["telemetry.probesRequireToken=true"],
            "telemetry.bearerTokenSecret",
        ),
    ] {
        let mut args = vec!["template", "korvid", chart_dir];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let out = Command::new("helm")
            .args(&args)
            .current_dir(repo())
            .output()
            .expect("helm ran before");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(key),
            "helm template --set {}: renders, or does not name {key}: {stderr}",
            sets.join(" --set ")
        );
    }
}

#[test]
fn the_probe_and_scrape_paths_are_served() {
    use std::io::{Read, Write};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let telemetry = korvid_common::Telemetry::new();
    let shutdown = korvid_common::Shutdown::new();
    let addr = runtime
        .block_on(telemetry.serve(
            socket("127.0.0.1:0", "listen"),
            &Default::default(),
            shutdown.clone(),
        ))
        .expect("serve");
    let status = |path: &str| -> u16 {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: korvid\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{path}: {answer}"))
    };
    assert_eq!(status(LIVENESS), 200);
    assert_eq!(status(METRICS), 200);
    // Nothing in this process is ready: the route answers, not yet.
    assert_eq!(status(READINESS), 503);
    assert_eq!(status("/no-such-route"), 404);
    shutdown.trigger();
}

#[test]
fn the_dashboard_queries_only_metrics_korvid_registers() {
    let registered = registered_metrics();
    assert!(registered.len() > 30, "found only {registered:?}");
    let path = repo().join("deploy/grafana/korvid-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS datasource input"
    );
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(queries.len() > 20, "{queries:?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(at) = rest.find("korvid_") {
            let metric: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + metric.len()..];
            // prometheus-client's exposition: counters gain _total, histograms _bucket/_sum/_count.
            let known = ["", "_total", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| {
                    metric
                        .strip_suffix(suffix)
                        .is_some_and(|base| registered.contains(base))
                });
            assert!(
                known,
                "the dashboard queries {metric}, which korvid does not register: {q}"
            );
            used.insert(metric);
        }
    }
    assert!(used.len() > 20, "{used:?}");
}

fn collect_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_queries(x, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|x| collect_queries(x, out)),
        _ => {}
    }
}

/// `korvid_<name>` for every `register("<name>", ...)` in the sources (the registry prefixes
/// `korvid`: common/src/telemetry.rs).
fn registered_metrics() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs: Vec<PathBuf> = ["common", "ingest", "enrich", "detect", "notify", "lake"]
        .iter()
        .map(|c| repo().join(c).join("src"))
        .collect();
    dirs.push(repo().join("src"));
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = read(&path);
                for (at, _) in text.match_indices("register(") {
                    let args = text[at + "register(".len()..].trim_start();
                    if let Some(literal) = args.strip_prefix('"') {
                        let metric: String = literal.chars().take_while(|c| *c != '"').collect();
                        out.insert(format!("korvid_{metric}"));
                    }
                }
            }
        }
    }
    out
}
