//! TLS for korvid's HTTP servers: a certificate and key from PEM files, and optionally client
//! certificates required and verified against a CA bundle (mutual TLS, as kube-apiserver's
//! webhook client can present one).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;

use crate::settings::SettingsError;

/// TLS settings of one server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsSettings {
    /// Checks the files exist; `key` is the settings path, e.g. `ingest.audit_webhook.tls`.
    pub fn validate(&self, key: &str) -> Result<(), SettingsError> {
        let files = [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ];
        for (name, path) in files {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(SettingsError::invalid(
                    format!("{key}.{name}"),
                    format!("{} is not a readable file", p.display()),
                ));
            }
        }
        Ok(())
    }

    /// Builds the rustls configuration (HTTP/1.1 via ALPN).
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        crate::install_tls_provider();
        let certs = CertificateDer::pem_file_iter(&self.cert_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::file(&self.cert_file, e))?;
        if certs.is_empty() {
            return Err(TlsError::file(
                &self.cert_file,
                "no certificate in the file",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|e| TlsError::file(&self.key_file, e))?;
        let builder = ServerConfig::builder();
        let builder = match &self.client_ca_file {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).map_err(|e| TlsError::file(ca, e))? {
                    roots
                        .add(cert.map_err(|e| TlsError::file(ca, e))?)
                        .map_err(|e| TlsError::file(ca, e))?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| TlsError::file(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::file(&self.cert_file, e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {path}: {reason}")]
pub struct TlsError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl TlsError {
    fn file(path: &Path, reason: impl std::fmt::Display) -> Self {
        TlsError {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}
