//! `[detect]` settings.

use std::path::PathBuf;

use korvid_common::settings::{SettingsError, Validate};
use serde::Deserialize;

/// `[detect]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectSettings {
    /// Load the rules shipped inside korvid.
    pub builtin_rules: bool,
    /// Extra directories of rule files (`*.yaml`), loaded after the built-in ones. A rule with
    /// the id of a built-in rule replaces it.
    pub rules_dirs: Vec<PathBuf>,
    /// Rule ids to switch off.
    pub disabled_rules: Vec<String>,
    /// A file of accepted risks (owner, reason, expiry; see `docs/rules.md`): findings they
    /// cover are not published; expired ones stop applying and are logged.
    pub exceptions: Option<PathBuf>,
}

impl Default for DetectSettings {
    fn default() -> Self {
        DetectSettings {
            builtin_rules: true,
            rules_dirs: Vec::new(),
            disabled_rules: Vec::new(),
            exceptions: None,
        }
    }
}

impl Validate for DetectSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        for (i, dir) in self.rules_dirs.iter().enumerate() {
            if !dir.is_dir() {
                return Err(SettingsError::invalid(
                    format!("detect.rules_dirs[{i}]"),
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        if let Some(path) = &self.exceptions {
            crate::Exceptions::load(path)
                .map_err(|e| SettingsError::invalid("detect.exceptions", e.to_string()))?;
        }
        Ok(())
    }
}
