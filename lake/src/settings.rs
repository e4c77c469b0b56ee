//! `[lake]` (the Parquet writer) and `[sql]` (the query server) settings.

use std::path::{Path, PathBuf};

use korvid_common::settings::{SettingsError, Validate, require_range, require_socket_addr};
use korvid_common::tls::ServerTlsSettings;
use serde::Deserialize;

/// `[lake]`: where and how findings and alerts are written as Parquet.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LakeSettings {
    /// Run the lake writer in `korvid up`.
    pub enabled: bool,
    /// Root of the lake. Unset: `<data_dir>/lake`.
    pub dir: Option<PathBuf>,
    /// Close a file once this many rows are buffered (findings and alerts together).
    pub roll_records: usize,
    /// Close a file at the latest this long after its first row arrived.
    pub roll_interval_ms: u64,
    /// Delete date partitions older than this many days (UTC); 0 keeps everything.
    pub retention_days: u32,
}

impl Default for LakeSettings {
    fn default() -> Self {
        LakeSettings {
            enabled: true,
            dir: None,
            roll_records: 50_000,
            roll_interval_ms: 60_000,
            retention_days: 90,
        }
    }
}

impl LakeSettings {
    /// The lake's root directory, given the process's `data_dir`.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("lake"))
    }
}

impl Validate for LakeSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if let Some(d) = &self.dir
            && d.as_os_str().is_empty()
        {
            return Err(SettingsError::invalid(
                "lake.dir",
                "must not be empty (leave it unset for <data_dir>/lake)",
            ));
        }
        require_range("lake.roll_records", self.roll_records, 1, 10_000_000)?;
        require_range(
            "lake.roll_interval_ms",
            self.roll_interval_ms,
            100,
            86_400_000,
        )?;
        require_range("lake.retention_days", self.retention_days, 0, 36_500)?;
        Ok(())
    }
}

/// `[sql]`: `korvid sql` and its PostgreSQL-protocol server (`korvid sql --serve`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlSettings {
    /// Address `korvid sql --serve` listens on (overridden by `--listen`).
    pub listen: String,
    /// Password clients must know (any user name), checked with SCRAM-SHA-256: it never
    /// crosses the connection. Unset (and no `password_file`): no authentication.
    pub password: Option<String>,
    /// File holding the password (a mounted Secret; trailing newline ignored), instead of
    /// `password`.
    pub password_file: Option<PathBuf>,
    /// Serve TLS (`cert_file`, `key_file`, optional `client_ca_file` for client certificates).
    /// Once set, clients that do not ask for TLS are refused.
    pub tls: Option<ServerTlsSettings>,
    /// Longest a query may run before it is cancelled.
    pub query_timeout_ms: u64,
    /// How long `inventory` waits for Kafka before the query fails.
    pub kafka_timeout_ms: u64,
}

impl Default for SqlSettings {
    fn default() -> Self {
        SqlSettings {
            listen: "127.0.0.1:5433".into(),
            password: None,
            password_file: None,
            tls: None,
            query_timeout_ms: 60_000,
            kafka_timeout_ms: 5_000,
        }
    }
}

impl SqlSettings {
    /// The password from `password` or `password_file`; `None` when neither is set.
    pub fn password(&self) -> Result<Option<String>, SettingsError> {
        let (key, password) = match (&self.password, &self.password_file) {
            (Some(p), _) => ("sql.password", p.clone()),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    SettingsError::invalid(
                        "sql.password_file",
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?;
                (
                    "sql.password_file",
                    text.trim_end_matches(['\r', '\n']).to_string(),
                )
            }
            (None, None) => return Ok(None),
        };
        if password.is_empty() {
            return Err(SettingsError::invalid(
                key,
                "must not be empty (leave it unset for no authentication)",
            ));
        }
        Ok(Some(password))
    }
}

impl Validate for SqlSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        require_socket_addr("sql.listen", &self.listen)?;
        if self.password.is_some() && self.password_file.is_some() {
            return Err(SettingsError::invalid(
                "sql.password_file",
                "set either sql.password or sql.password_file, not both",
            ));
        }
        self.password()?;
        if let Some(tls) = &self.tls {
            tls.validate("sql.tls")?;
        }
        require_range(
            "sql.query_timeout_ms",
            self.query_timeout_ms,
            100,
            3_600_000,
        )?;
        require_range("sql.kafka_timeout_ms", self.kafka_timeout_ms, 100, 600_000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        LakeSettings::default().validate().expect("lake defaults");
        SqlSettings::default().validate().expect("sql defaults");
        let bad = LakeSettings {
            roll_records: 0,
            ..Default::default()
        };
        let e = bad.validate().expect_err("zero rows");
        assert!(e.to_string().contains("lake.roll_records"), "{e}");
        let bad = SqlSettings {
            listen: "nowhere".into(),
            ..Default::default()
        };
        let e = bad.validate().expect_err("bad address");
        assert!(e.to_string().contains("sql.listen"), "{e}");
    }

    #[test]
    fn the_lake_lives_under_data_dir_unless_set() {
        let s = LakeSettings::default();
        assert_eq!(
            s.dir(Path::new("/var/korvid")),
            Path::new("/var/korvid/lake")
        );
        let s = LakeSettings {
            dir: Some("/lake".into()),
            ..Default::default()
        };
        assert_eq!(s.dir(Path::new("/var/korvid")), Path::new("/lake"));
    }
}
