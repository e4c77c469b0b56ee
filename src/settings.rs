//! The whole configuration: one section per service plus the shared ones. Loaded from defaults,
//! then `korvid.toml` (or the file given with `--config`), then `KORVID__SECTION__KEY`.

use std::path::PathBuf;

use korvid_common::broker::BrokerSettings;
use korvid_common::kafka::KafkaSettings;
use korvid_common::settings::{SettingsError, Validate};
use korvid_common::telemetry::TelemetrySettings;
use serde::Deserialize;

/// Every korvid setting.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KorvidSettings {
    /// Where korvid keeps local state (the embedded broker's data among it).
    pub data_dir: PathBuf,
    /// Kafka connection and topics.
    pub kafka: KafkaSettings,
    /// The embedded broker `korvid up` starts when `kafka.bootstrap_servers` is unset.
    pub broker: BrokerSettings,
    /// Logs, metrics, traces.
    pub telemetry: TelemetrySettings,
    /// `korvid ingest`.
    pub ingest: korvid_ingest::IngestSettings,
    /// `korvid enrich`.
    pub enrich: korvid_enrich::EnrichSettings,
    /// `korvid detect`.
    pub detect: korvid_detect::DetectSettings,
    /// `korvid notify`.
    pub notify: korvid_notify::NotifySettings,
    /// `korvid lake`: findings and alerts as Parquet.
    pub lake: korvid_lake::LakeSettings,
    /// `korvid sql`: queries over the lake and its PostgreSQL-protocol server.
    pub sql: korvid_lake::SqlSettings,
}

impl Default for KorvidSettings {
    fn default() -> Self {
        KorvidSettings {
            data_dir: PathBuf::from(".korvid"),
            kafka: KafkaSettings::default(),
            broker: BrokerSettings::default(),
            telemetry: TelemetrySettings::default(),
            ingest: Default::default(),
            enrich: Default::default(),
            detect: Default::default(),
            notify: Default::default(),
            lake: Default::default(),
            sql: Default::default(),
        }
    }
}

impl Validate for KorvidSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(SettingsError::invalid("data_dir", "must not be empty"));
        }
        self.kafka.validate()?;
        self.broker.validate()?;
        self.telemetry.validate()?;
        self.ingest.validate()?;
        self.enrich.validate()?;
        self.detect.validate()?;
        self.notify.validate()?;
        self.lake.validate()?;
        self.sql.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: Option<&str>, env: &[(&str, &str)]) -> Result<KorvidSettings, SettingsError> {
        let dir = tempfile::tempdir().expect("tmp");
        let file = toml.map(|t| {
            let p = dir.path().join("korvid.toml");
            std::fs::write(&p, t).expect("write");
            p
        });
        korvid_common::settings::load(
            file.as_deref(),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn layers_apply_in_order() {
        let s = load(
            Some("[enrich]\nwindow_ms = 5000\n[ingest]\ncluster = \"from-file\"\n"),
            &[("KORVID__INGEST__CLUSTER", "from-env")],
        )
        .expect("valid");
        assert_eq!(s.enrich.window_ms, 5000);
        assert_eq!(s.ingest.cluster, "from-env");
        assert_eq!(s.notify.repeat_interval_ms, 4 * 3600 * 1000);
    }

    #[test]
    fn the_example_config_is_valid_and_documents_the_defaults() {
        // Read at run time: a binary built from another checkout sharing the target directory
        // must not look there.
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        let path = std::path::Path::new(&dir).join("deploy/korvid.example.toml");
        let example: KorvidSettings = korvid_common::settings::load(Some(&path), Vec::new())
            .expect("deploy/korvid.example.toml loads");
        let defaults = KorvidSettings::default();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(None, &[("KORVID__ENRICH__WINDOW_MS", "5")]).expect_err("too small");
        assert!(e.to_string().contains("enrich.window_ms"), "{e}");
        let e = load(None, &[("KORVID__ENRICH__WINDOW_MS", "soon")]).expect_err("not a number");
        assert!(e.to_string().contains("window_ms"), "{e}");
        let e = load(Some("[kafka]\nbootstrap_servers = \"nohost\"\n"), &[]).expect_err("bad");
        assert!(e.to_string().contains("kafka.bootstrap_servers"), "{e}");
        let e = load(Some("[notify]\nrepeat_intervall_ms = 1\n"), &[]).expect_err("typo");
        assert!(e.to_string().contains("repeat_intervall_ms"), "{e}");
    }
}
