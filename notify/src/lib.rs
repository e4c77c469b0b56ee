//! `korvid notify`: turns findings into alerts people can trust.
//!
//! Findings fold into alerts by fingerprint; alerts gather into groups that are notified with
//! Alertmanager's timing ([`engine`]), muted by silences and inhibition, excepted and routed by
//! the user's policy file ([`policy`]), and delivered by sinks that each have their own queue,
//! retries, rate limit, circuit breaker and dead letter ([`sinks`]). Alert state lives on the
//! compacted state topic, so a restart, a rebalance or a second instance never re-notifies.
//!
//! Entry point: [`run`].

pub mod engine;
mod order;
pub mod policy;
mod service;
mod settings;
pub mod sinks;

pub use service::{NotifyError, run};
pub use settings::{
    Clock, KafkaSinkSettings, NotifySettings, SinkSettings, UrlSinkSettings, WebhookSinkSettings,
};
