//! `korvid detect`: evaluates the SQL rule catalog over every graph window and turns each hit
//! into an explained Finding (tactic, MITRE techniques, severity, evidence, implication,
//! remediation, prevention) with a deterministic id and fingerprint.
//!
//! Entry point: [`run`].

pub mod engine;
pub mod exceptions;
pub mod model;
pub mod prefilter;
mod repeats;
pub mod rules;
mod service;
mod settings;

pub use engine::RuleEngine;
pub use exceptions::{Exception, ExceptionEntry, Exceptions, ExceptionsError, PatternEntry};
pub use rules::{AuditExample, Example, Examples, Rule, RuleCatalog, RuleLoadError};
pub use service::run;
pub use settings::{DetectSettings, ModelMode, ModelSettings};
