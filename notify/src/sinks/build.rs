//! From settings to running sinks: each configured sink with the delivery settings it runs
//! under, receivers' documented limits filled in where the user left them open.

use std::sync::Arc;

use base64::Engine as _;
use std::time::Duration;

use korvid_common::kafka::RecordProducer;

use super::worker::DeliverySettings;
use super::{
    ChatSink, ElasticsearchSink, EmailSink, HttpPoster, KafkaSink, LokiSink, OcsfSink,
    PagerDutySink, SinkError, SplunkHecSink, StdoutSink, SyslogSink, WebhookSink,
};
use crate::settings::{NotifySettings, SinkSettings, WebhookSinkSettings};

/// A sink and how it is driven.
pub type Built = (Arc<dyn super::Sink>, DeliverySettings);

fn http(
    name: &str,
    d: &DeliverySettings,
    ca: Option<&std::path::Path>,
) -> Result<HttpPoster, SinkError> {
    HttpPoster::new(name, Duration::from_millis(d.timeout_ms), ca)
}

/// A rate the receiver documents, unless the user chose one.
fn with_rate(mut d: DeliverySettings, per_second: f64, burst: u32) -> DeliverySettings {
    if d.rate_per_second == 0.0 {
        d.rate_per_second = per_second;
        d.burst = burst;
    }
    d
}

fn webhook(w: &WebhookSinkSettings) -> Result<Built, SinkError> {
    let mut d = w.delivery.clone();
    if w.max_attempts > 0 {
        d.max_attempts = w.max_attempts;
    }
    d.timeout_ms = w.timeout_ms;
    let poster = http(&w.name, &d, None)?;
    Ok((
        Arc::new(WebhookSink::new(
            &w.name,
            &w.url,
            w.hmac_secret.clone(),
            poster,
        )),
        d,
    ))
}

/// Every configured sink.
pub fn all(
    settings: &NotifySettings,
    producer: &RecordProducer,
    alerts_topic: &str,
) -> Result<Vec<Built>, SinkError> {
    let mut out: Vec<Built> = Vec::new();
    if settings.stdout {
        out.push((Arc::new(StdoutSink), DeliverySettings::default()));
    }
    if settings.alerts_topic {
        out.push((
            Arc::new(KafkaSink::new(
                "alerts",
                producer.clone(),
                alerts_topic.to_string(),
            )),
            DeliverySettings::default(),
        ));
    }
    for w in &settings.webhooks {
        out.push(webhook(w)?);
    }
    for s in &settings.sinks {
        let built: Built = match s {
            SinkSettings::Webhook(w) => webhook(w)?,
            SinkSettings::Slack(u) => {
                // Slack: about one message per second per channel.
                let d = with_rate(u.delivery.clone(), 1.0, 1);
                let p = http(&u.name, &d, u.ca_file.as_deref())?;
                (Arc::new(ChatSink::slack(&u.name, &u.url, p)), d)
            }
            SinkSettings::Teams(u) => {
                // Teams connectors throttle at a few messages per second.
                let d = with_rate(u.delivery.clone(), 1.0, 4);
                let p = http(&u.name, &d, u.ca_file.as_deref())?;
                (Arc::new(ChatSink::teams(&u.name, &u.url, p)), d)
            }
            SinkSettings::Pagerduty(pd) => {
                // Events API v2: 120 events per minute per integration key.
                let d = with_rate(pd.delivery.clone(), 2.0, 10);
                let p = http(&pd.name, &d, pd.ca_file.as_deref())?;
                (
                    Arc::new(PagerDutySink::new(&pd.name, &pd.url, &pd.routing_key, p)),
                    d,
                )
            }
            SinkSettings::SplunkHec(h) => {
                let p = http(&h.name, &h.delivery, h.ca_file.as_deref())?;
                (
                    Arc::new(SplunkHecSink::new(
                        &h.name,
                        &h.url,
                        &h.token,
                        h.index.clone(),
                        h.sourcetype.clone(),
                        p,
                    )),
                    h.delivery.clone(),
                )
            }
            SinkSettings::Elasticsearch(e) => {
                let p = http(&e.name, &e.delivery, e.ca_file.as_deref())?;
                let auth = match (&e.api_key, &e.username, &e.password) {
                    (Some(k), _, _) => Some(format!("ApiKey {k}")),
                    (None, Some(u), Some(pw)) => Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"))
                    )),
                    _ => None,
                };
                (
                    Arc::new(ElasticsearchSink::new(&e.name, &e.url, &e.index, auth, p)),
                    e.delivery.clone(),
                )
            }
            SinkSettings::Ocsf(o) => {
                let p = http(&o.name, &o.delivery, o.ca_file.as_deref())?;
                let headers = o
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (
                    Arc::new(OcsfSink::new(&o.name, &o.url, headers, p)),
                    o.delivery.clone(),
                )
            }
            SinkSettings::Loki(l) => {
                let p = http(&l.name, &l.delivery, l.ca_file.as_deref())?;
                (
                    Arc::new(LokiSink::new(&l.name, &l.url, l.tenant.clone(), p)),
                    l.delivery.clone(),
                )
            }
            SinkSettings::Kafka(k) => (
                Arc::new(KafkaSink::new(&k.name, producer.clone(), k.topic.clone())),
                k.delivery.clone(),
            ),
            SinkSettings::Syslog(s) => (Arc::new(SyslogSink::new(s.clone())?), s.delivery.clone()),
            SinkSettings::Email(e) => (Arc::new(EmailSink::new(e)?), e.delivery.clone()),
        };
        out.push(built);
    }
    Ok(out)
}
