//! Layered settings: defaults < a TOML (or YAML) file < environment variables
//! `KORVID__SECTION__KEY` (double underscores between levels).
//!
//! Each service owns its settings struct; the binary composes them and calls [`load`]. Every
//! struct validates itself after loading, and every error names the offending key.

use std::path::Path;

use config::{Config, Environment, File, FileFormat};
use serde::de::DeserializeOwned;

/// A settings problem, always naming the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or environment could not be read or parsed into the settings structure.
    #[error("invalid configuration: {0}")]
    Load(String),
    /// A value parsed but is not acceptable.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `enrich.window_ms`.
        key: String,
        /// Why it was refused.
        reason: String,
    },
}

impl SettingsError {
    /// Shorthand for an invalid value.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        SettingsError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Checks values after loading.
pub trait Validate {
    /// Returns the first invalid value, naming its key.
    fn validate(&self) -> Result<(), SettingsError>;
}

/// Loads settings from an optional file and the environment, then validates them.
///
/// `env` is the list of environment variables to consult (normally `std::env::vars()`), passed in
/// so tests do not need to mutate the process environment.
pub fn load<T: DeserializeOwned + Validate>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError> {
    let mut builder = Config::builder();
    if let Some(path) = file {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => FileFormat::Yaml,
            _ => FileFormat::Toml,
        };
        if !path.exists() {
            return Err(SettingsError::Load(format!(
                "configuration file {} does not exist",
                path.display()
            )));
        }
        builder = builder.add_source(File::from(path).format(format).required(true));
    }
    let vars: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("KORVID__"))
        .collect();
    builder = builder.add_source(
        Environment::with_prefix("KORVID")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(vars)),
    );
    let cfg = builder
        .build()
        .map_err(|e| SettingsError::Load(e.to_string()))?;
    let settings: T = cfg
        .try_deserialize()
        .map_err(|e| SettingsError::Load(e.to_string()))?;
    settings.validate()?;
    Ok(settings)
}

/// Refuses an empty string.
pub fn require_non_empty(key: &str, value: &str) -> Result<(), SettingsError> {
    if value.trim().is_empty() {
        Err(SettingsError::invalid(key, "must not be empty"))
    } else {
        Ok(())
    }
}

/// Refuses a number outside `[min, max]`.
pub fn require_range<N: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: N,
    min: N,
    max: N,
) -> Result<(), SettingsError> {
    if value < min || value > max {
        Err(SettingsError::invalid(
            key,
            format!("{value} is outside the allowed range {min}..={max}"),
        ))
    } else {
        Ok(())
    }
}

/// Refuses a socket address that does not parse.
pub fn require_socket_addr(key: &str, value: &str) -> Result<std::net::SocketAddr, SettingsError> {
    value
        .parse()
        .map_err(|e| SettingsError::invalid(key, format!("`{value}` is not host:port ({e})")))
}
