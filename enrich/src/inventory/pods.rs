//! What a pod spec says about security: per container the privileges, added capabilities,
//! root, privilege escalation, ports and mounts (hostPath with its path and read-only flag);
//! per pod the host namespaces, process-namespace sharing and token automount.

use serde_json::Value;

/// One container (init and ephemeral containers included).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    /// Name.
    pub name: String,
    /// Image reference as written.
    pub image: String,
    /// `securityContext.privileged`.
    pub privileged: bool,
    /// Added Linux capabilities, upper case without `CAP_`.
    pub capabilities_added: Vec<String>,
    /// Whether it may run as root (runAsUser 0, or neither runAsNonRoot nor a non-zero user).
    pub may_run_as_root: bool,
    /// `allowPrivilegeEscalation` is not false (the default allows it).
    pub allow_privilege_escalation: bool,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// (name, containerPort, hostPort) of each declared port.
    pub ports: Vec<(String, i64, Option<i64>)>,
    /// (volume name, mount path, read-only) of each mount.
    pub mounts: Vec<(String, String, bool)>,
    /// Names of Secrets and ConfigMaps it reads into its environment (`envFrom`, `valueFrom`).
    pub env_from_secrets: Vec<String>,
    /// Names of ConfigMaps it reads into its environment.
    pub env_from_configmaps: Vec<String>,
    /// `init`, `ephemeral` or `app`.
    pub role: &'static str,
    /// Effective seccomp profile: `Unconfined`, `RuntimeDefault`, `Localhost/<file>`, or empty
    /// when none is set (the runtime's default then applies: unconfined on most nodes).
    pub seccomp: String,
    /// Effective AppArmor profile, same spelling; empty when none is set.
    pub apparmor: String,
    /// SELinux options beyond the container types Pod Security allows (a custom user or role,
    /// or a type other than `container_t`, `container_init_t`, `container_kvm_t`).
    pub selinux_custom: bool,
    /// `procMount: Unmasked`.
    pub proc_mount_unmasked: bool,
    /// `windowsOptions.hostProcess`.
    pub host_process: bool,
    /// A probe or lifecycle handler aimed at another host (`host` set).
    pub probe_host: bool,
}

/// One volume of a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeSource {
    /// `hostPath` with its path.
    HostPath(String),
    /// A Secret by name.
    Secret(String),
    /// A ConfigMap by name.
    ConfigMap(String),
    /// A PersistentVolumeClaim by name.
    Claim(String),
    /// The projected service-account token.
    ServiceAccountToken,
    /// Anything else (emptyDir, ...), by source kind.
    Other(String),
}

/// A pod spec as security sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSpec {
    /// `hostPID`.
    pub host_pid: bool,
    /// `hostIPC`.
    pub host_ipc: bool,
    /// `hostNetwork`.
    pub host_network: bool,
    /// `shareProcessNamespace`.
    pub share_process_namespace: bool,
    /// Service account (default `default`).
    pub service_account: String,
    /// `automountServiceAccountToken` on the pod, if set.
    pub automount_token: Option<bool>,
    /// `nodeName`, once scheduled.
    pub node_name: Option<String>,
    /// Every container.
    pub containers: Vec<ContainerSpec>,
    /// (name, source) of each volume.
    pub volumes: Vec<(String, VolumeSource)>,
    /// Image digests from `status.containerStatuses[].imageID`, by container name.
    pub image_ids: Vec<(String, String)>,
    /// Sysctls set in the pod's security context that are not in Kubernetes' safe set.
    pub unsafe_sysctls: Vec<String>,
    /// FlexVolume drivers used by its volumes.
    pub flex_drivers: Vec<String>,
}

/// Sysctls Kubernetes considers safe (namespaced, isolated from the node and other pods).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Reads the pod spec at `spec` (a Pod's `spec`, or a workload's `spec.template.spec`), with the
/// pod's annotations (older seccomp and AppArmor settings live there).
pub fn pod_spec(spec: &Value, annotations: Option<&Value>, status: Option<&Value>) -> PodSpec {
    let b = |p: &str| spec.pointer(p).and_then(Value::as_bool).unwrap_or(false);
    let pod_sc = spec.get("securityContext");
    let mut out = PodSpec {
        host_pid: b("/hostPID"),
        host_ipc: b("/hostIPC"),
        host_network: b("/hostNetwork"),
        share_process_namespace: b("/shareProcessNamespace"),
        service_account: spec
            .get("serviceAccountName")
            .or_else(|| spec.get("serviceAccount"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string(),
        automount_token: spec
            .get("automountServiceAccountToken")
            .and_then(Value::as_bool),
        node_name: spec
            .get("nodeName")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..PodSpec::default()
    };
    for (field, role) in [
        ("initContainers", "init"),
        ("containers", "app"),
        ("ephemeralContainers", "ephemeral"),
    ] {
        for c in spec
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.containers.push(container(c, pod_sc, annotations, role));
        }
    }
    out.unsafe_sysctls = pod_sc
        .and_then(|sc| sc.get("sysctls"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|s| s.get("name").and_then(Value::as_str))
                .filter(|n| !SAFE_SYSCTLS.contains(n))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for v in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(d) = v.pointer("/flexVolume/driver").and_then(Value::as_str) {
            out.flex_drivers.push(d.to_string());
        }
        out.volumes.push((name, volume_source(v)));
    }
    if let Some(statuses) = status
        .and_then(|s| s.get("containerStatuses"))
        .and_then(Value::as_array)
    {
        for s in statuses {
            if let (Some(name), Some(id)) = (
                s.get("name").and_then(Value::as_str),
                s.get("imageID").and_then(Value::as_str),
            ) && let Some(digest) = id
                .rsplit_once('@')
                .map(|(_, d)| d)
                .or(Some(id))
                .filter(|d| d.starts_with("sha256:"))
            {
                out.image_ids.push((name.to_string(), digest.to_string()));
            }
        }
    }
    out
}

/// `Unconfined`, `RuntimeDefault` or `Localhost/<file>` from a securityContext profile object.
fn profile_of(p: Option<&Value>) -> Option<String> {
    let p = p?;
    let kind = p.get("type").and_then(Value::as_str)?;
    Some(match p.get("localhostProfile").and_then(Value::as_str) {
        Some(file) if kind == "Localhost" => format!("Localhost/{file}"),
        _ => kind.to_string(),
    })
}

/// The same spelling from an annotation value (`unconfined`, `runtime/default`,
/// `docker/default`, `localhost/<file>`).
fn profile_of_annotation(v: &str) -> String {
    match v {
        "unconfined" => "Unconfined".into(),
        "runtime/default" | "docker/default" => "RuntimeDefault".into(),
        other => match other.strip_prefix("localhost/") {
            Some(file) => format!("Localhost/{file}"),
            None => other.to_string(),
        },
    }
}

/// Whether any probe or lifecycle handler of `c` targets a `host`.
fn probes_other_host(c: &Value) -> bool {
    let handler_host = |h: &Value| {
        ["httpGet", "tcpSocket"].iter().any(|k| {
            h.pointer(&format!("/{k}/host"))
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        })
    };
    ["livenessProbe", "readinessProbe", "startupProbe"]
        .iter()
        .filter_map(|p| c.get(*p))
        .any(handler_host)
        || ["postStart", "preStop"]
            .iter()
            .filter_map(|p| c.pointer(&format!("/lifecycle/{p}")))
            .any(handler_host)
}

fn container(
    c: &Value,
    pod_sc: Option<&Value>,
    annotations: Option<&Value>,
    role: &'static str,
) -> ContainerSpec {
    let s = |p: &str| {
        c.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let sc = c.get("securityContext");
    let flag = |key: &str| {
        sc.and_then(|x| x.get(key))
            .or_else(|| pod_sc.and_then(|x| x.get(key)))
            .and_then(Value::as_bool)
    };
    let user = sc
        .and_then(|x| x.get("runAsUser"))
        .or_else(|| pod_sc.and_then(|x| x.get("runAsUser")))
        .and_then(Value::as_i64);
    let may_run_as_root = match user {
        Some(0) => true,
        Some(_) => false,
        None => flag("runAsNonRoot") != Some(true),
    };
    let caps = sc
        .and_then(|x| x.pointer("/capabilities/add"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|c| c.trim_start_matches("CAP_").to_ascii_uppercase())
                .collect()
        })
        .unwrap_or_default();
    let ports = c
        .get("ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        p.get("containerPort").and_then(Value::as_i64).unwrap_or(0),
                        p.get("hostPort").and_then(Value::as_i64).filter(|h| *h > 0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mounts = c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        m.get("mountPath")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        m.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut env_from_secrets = Vec::new();
    let mut env_from_configmaps = Vec::new();
    for e in c
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = e.pointer("/secretRef/name").and_then(Value::as_str) {
            env_from_secrets.push(n.to_string());
        }
        if let Some(n) = e.pointer("/configMapRef/name").and_then(Value::as_str) {
            env_from_configmaps.push(n.to_string());
        }
    }
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        if let Some(n) = e
            .pointer("/valueFrom/secretKeyRef/name")
            .and_then(Value::as_str)
        {
            env_from_secrets.push(n.to_string());
        }
        if let Some(n) = e
            .pointer("/valueFrom/configMapKeyRef/name")
            .and_then(Value::as_str)
        {
            env_from_configmaps.push(n.to_string());
        }
    }
    env_from_secrets.sort();
    env_from_secrets.dedup();
    env_from_configmaps.sort();
    env_from_configmaps.dedup();
    let name = s("/name");
    let annotation = |key: String| {
        annotations
            .and_then(|a| a.get(&key))
            .and_then(Value::as_str)
            .map(profile_of_annotation)
    };
    let seccomp = profile_of(sc.and_then(|x| x.get("seccompProfile")))
        .or_else(|| profile_of(pod_sc.and_then(|x| x.get("seccompProfile"))))
        .or_else(|| {
            annotation(format!(
                "container.seccomp.security.alpha.kubernetes.io/{name}"
            ))
        })
        .or_else(|| annotation("seccomp.security.alpha.kubernetes.io/pod".into()))
        .unwrap_or_default();
    let apparmor = profile_of(sc.and_then(|x| x.get("appArmorProfile")))
        .or_else(|| profile_of(pod_sc.and_then(|x| x.get("appArmorProfile"))))
        .or_else(|| {
            annotation(format!(
                "container.apparmor.security.beta.kubernetes.io/{name}"
            ))
        })
        .unwrap_or_default();
    let selinux = sc
        .and_then(|x| x.get("seLinuxOptions"))
        .or_else(|| pod_sc.and_then(|x| x.get("seLinuxOptions")));
    let selinux_custom = selinux.is_some_and(|o| {
        let set = |k: &str| {
            o.get(k)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        };
        set("user")
            || set("role")
            || o.get("type").and_then(Value::as_str).is_some_and(|t| {
                !t.is_empty()
                    && !matches!(t, "container_t" | "container_init_t" | "container_kvm_t")
            })
    });
    let host_process = sc
        .and_then(|x| x.pointer("/windowsOptions/hostProcess"))
        .or_else(|| pod_sc.and_then(|x| x.pointer("/windowsOptions/hostProcess")))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    ContainerSpec {
        seccomp,
        apparmor,
        selinux_custom,
        proc_mount_unmasked: sc.and_then(|x| x.get("procMount")).and_then(Value::as_str)
            == Some("Unmasked"),
        host_process,
        probe_host: probes_other_host(c),
        name,
        image: s("/image"),
        privileged: flag("privileged") == Some(true),
        capabilities_added: caps,
        may_run_as_root,
        allow_privilege_escalation: flag("allowPrivilegeEscalation") != Some(false),
        read_only_root: flag("readOnlyRootFilesystem") == Some(true),
        ports,
        mounts,
        env_from_secrets,
        env_from_configmaps,
        role,
    }
}

fn volume_source(v: &Value) -> VolumeSource {
    let name = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if v.get("hostPath").is_some() {
        VolumeSource::HostPath(name("/hostPath/path"))
    } else if v.get("secret").is_some() {
        VolumeSource::Secret(name("/secret/secretName"))
    } else if v.get("configMap").is_some() {
        VolumeSource::ConfigMap(name("/configMap/name"))
    } else if v.get("persistentVolumeClaim").is_some() {
        VolumeSource::Claim(name("/persistentVolumeClaim/claimName"))
    } else if v
        .pointer("/projected/sources")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|x| x.get("serviceAccountToken").is_some()))
    {
        VolumeSource::ServiceAccountToken
    } else {
        let kind = v
            .as_object()
            .and_then(|m| m.keys().find(|k| *k != "name").cloned())
            .unwrap_or_default();
        VolumeSource::Other(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_privileges_mounts_and_ports() {
        let spec = json!({"hostPID": true, "serviceAccountName": "web",
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c", "image": "ubuntu",
                "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN", "CAP_SYS_PTRACE"]}},
                "ports": [{"name": "jmx", "containerPort": 9999}, {"containerPort": 1111, "hostPort": 1112}],
                "volumeMounts": [{"name": "root", "mountPath": "/host"}, {"name": "ssh", "mountPath": "/s", "readOnly": true}],
                "envFrom": [{"secretRef": {"name": "db"}}]}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "ssh", "hostPath": {"path": "/root/.ssh"}}]});
        let p = pod_spec(&spec, None, None);
        assert!(p.host_pid && !p.host_network);
        let c = &p.containers[0];
        assert!(c.privileged && !c.may_run_as_root && c.allow_privilege_escalation);
        assert_eq!(c.capabilities_added, ["SYS_ADMIN", "SYS_PTRACE"]);
        assert_eq!(c.ports[1], (String::new(), 1111, Some(1112)));
        assert_eq!(
            p.volumes[0],
            ("root".into(), VolumeSource::HostPath("/".into()))
        );
        assert_eq!(c.env_from_secrets, ["db"]);
        assert_eq!(p.service_account, "web");
    }
}
