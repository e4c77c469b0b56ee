//! `korvid enrich`: turns raw activity into what detection reasons about. Audit events are cut
//! into event-time tumbling windows per cluster/namespace, aggregated with DataFusion SQL into
//! activity rows, and published as graph windows (Arrow IPC `nodes`, `edges`, `activity`).
//!
//! Entry point: [`run`].

pub mod inventory;
pub mod offline;
mod service;
mod settings;
pub mod state;
pub mod tables;
pub mod windows;

pub use service::run;
pub use settings::EnrichSettings;
