//! The embedded default broker: `korvid up` without `kafka.bootstrap_servers` starts tansu, a
//! Kafka-protocol broker, on loopback with on-disk SQLite storage under the data directory, so
//! topics and committed offsets survive restarts.
//!
//! tansu is installed by the project's setup (`make setup`), never downloaded at run time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::settings::{SettingsError, Validate, require_socket_addr};

/// The version korvid is tested with.
pub const TANSU_VERSION: &str = "0.6.0";

/// The exact command that installs the broker where korvid looks for it.
pub fn install_hint() -> String {
    format!(
        "install it with `make setup` in the korvid checkout, or directly: \
         `cargo install tansu --version {TANSU_VERSION} --locked --features dynostore,libsql \
         --root ~/.cache/korvid/tools` (about 11 minutes on 2 cores); or set \
         `kafka.bootstrap_servers` (env KORVID__KAFKA__BOOTSTRAP_SERVERS) to use an existing Kafka"
    )
}

/// `[broker]` settings for the embedded broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// Loopback address the local broker listens on.
    pub listen: String,
    /// Path of the tansu binary; unset: search the usual places.
    pub binary: Option<PathBuf>,
    /// `sqlite` (on disk, survives restarts) or `memory`.
    pub storage: String,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            listen: "127.0.0.1:19092".into(),
            binary: None,
            storage: "sqlite".into(),
        }
    }
}

impl Validate for BrokerSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let addr = require_socket_addr("broker.listen", &self.listen)?;
        if !addr.ip().is_loopback() {
            return Err(SettingsError::invalid(
                "broker.listen",
                "the embedded broker listens on loopback only; use an external Kafka otherwise",
            ));
        }
        if !matches!(self.storage.as_str(), "sqlite" | "memory") {
            return Err(SettingsError::invalid(
                "broker.storage",
                format!("`{}` is neither `sqlite` nor `memory`", self.storage),
            ));
        }
        Ok(())
    }
}

/// Why the local broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No tansu binary was found.
    #[error("the local Kafka broker (tansu) is not installed (looked in: {looked}); {hint}")]
    NotInstalled {
        /// Places searched.
        looked: String,
        /// How to install it.
        hint: String,
    },
    /// Starting the process failed.
    #[error("could not start the local broker {binary}: {source}")]
    Spawn {
        /// Binary path.
        binary: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Something already listens on the broker's address.
    #[error(
        "broker.listen {addr} is already in use (another korvid or broker?); stop it or choose another address"
    )]
    AddressInUse {
        /// The address.
        addr: String,
    },
    /// The process started but exited early.
    #[error("the local broker exited during start-up ({status}); its log: {log}")]
    Exited {
        /// Exit status.
        status: String,
        /// Where its output went.
        log: String,
    },
    /// Preparing the data directory failed.
    #[error("could not prepare the broker data directory {dir}: {source}")]
    DataDir {
        /// Directory.
        dir: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Places searched for the tansu binary, in order.
pub fn candidate_binaries() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("KORVID_TANSU") {
        out.push(PathBuf::from(p));
    }
    if let Some(tools) = std::env::var_os("KORVID_TOOLS") {
        out.push(PathBuf::from(tools).join("bin/tansu"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        out.push(PathBuf::from(home).join(".cache/korvid/tools/bin/tansu"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    out
}

/// Finds the tansu binary.
pub fn find_binary(settings: &BrokerSettings) -> Result<PathBuf, BrokerError> {
    let candidates = match &settings.binary {
        Some(p) => vec![p.clone()],
        None => candidate_binaries(),
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| BrokerError::NotInstalled {
            looked: candidates
                .iter()
                .take(4)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            hint: install_hint(),
        })
}

/// A running local broker; stopped by [`LocalBroker::stop`] or when dropped.
pub struct LocalBroker {
    child: Child,
    /// `host:port` clients connect to.
    pub bootstrap: String,
    /// Where the broker's output goes.
    pub log_path: PathBuf,
}

/// librdkafka properties for korvid's clients of the embedded broker on SQLite storage, where
/// `[kafka.client]` does not set them. tansu decompresses every batch it receives there and
/// stores each record on its own, so compressing for it only spends CPU on both sides of a
/// loopback connection. (Memory storage keeps batches as they came: compressed is smaller.)
pub const SQLITE_CLIENT_DEFAULTS: &[(&str, &str)] = &[("compression.type", "none")];

impl LocalBroker {
    /// Adds the client defaults that suit the embedded broker's storage to the `[kafka.client]`
    /// properties `client` (what is set wins).
    pub fn tune_clients(settings: &BrokerSettings, client: &mut BTreeMap<String, String>) {
        let defaults = match settings.storage.as_str() {
            "sqlite" => SQLITE_CLIENT_DEFAULTS,
            _ => &[],
        };
        for (key, value) in defaults {
            client
                .entry((*key).to_string())
                .or_insert_with(|| (*value).to_string());
        }
    }

    /// Starts tansu under `data_dir/broker`.
    pub async fn start(settings: &BrokerSettings, data_dir: &Path) -> Result<Self, BrokerError> {
        let binary = find_binary(settings)?;
        // Otherwise the readiness probe below could mistake someone else's broker for ours.
        if tokio::net::TcpStream::connect(&settings.listen)
            .await
            .is_ok()
        {
            return Err(BrokerError::AddressInUse {
                addr: settings.listen.clone(),
            });
        }
        let dir = data_dir.join("broker");
        std::fs::create_dir_all(&dir).map_err(|source| BrokerError::DataDir {
            dir: dir.display().to_string(),
            source,
        })?;
        let log_path = dir.join("tansu.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| BrokerError::DataDir {
                dir: dir.display().to_string(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| BrokerError::DataDir {
            dir: dir.display().to_string(),
            source,
        })?;
        let storage = match settings.storage.as_str() {
            "memory" => "memory://tansu/".to_string(),
            _ => "sqlite://tansu.db".to_string(),
        };
        let url = format!("tcp://{}", settings.listen);
        let mut cmd = Command::new(&binary);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg(&storage)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            // Own process group: a Ctrl-C in the terminal reaches korvid, which drains through
            // the broker and only then stops it.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| BrokerError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
        // Wait for the port to accept connections (tansu is ready in milliseconds).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(BrokerError::Exited {
                    status: status.to_string(),
                    log: log_path.display().to_string(),
                });
            }
            if tokio::net::TcpStream::connect(&settings.listen)
                .await
                .is_ok()
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(BrokerError::Exited {
                    status: "did not listen within 20 s".into(),
                    log: log_path.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(bootstrap = %settings.listen, binary = %binary.display(), storage, "local broker started");
        Ok(LocalBroker {
            child,
            bootstrap: settings.listen.clone(),
            log_path,
        })
    }

    /// Stops the broker: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            // Ask politely first so SQLite storage closes cleanly.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                tracing::info!("local broker stopped");
                return;
            }
        }
        let _ = self.child.kill().await;
        tracing::warn!("local broker killed after {grace:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_storage_turns_compression_off_unless_set() {
        let sqlite = BrokerSettings::default();
        let mut client = BTreeMap::new();
        LocalBroker::tune_clients(&sqlite, &mut client);
        assert_eq!(
            client.get("compression.type").map(String::as_str),
            Some("none")
        );

        let mut client = BTreeMap::from([("compression.type".to_string(), "zstd".to_string())]);
        LocalBroker::tune_clients(&sqlite, &mut client);
        assert_eq!(
            client.get("compression.type").map(String::as_str),
            Some("zstd")
        );

        let memory = BrokerSettings {
            storage: "memory".into(),
            ..BrokerSettings::default()
        };
        let mut client = BTreeMap::new();
        LocalBroker::tune_clients(&memory, &mut client);
        assert!(client.is_empty());
    }
}
