//! Sinks people read: standard output, Slack and Microsoft Teams. Each gets one message per
//! notification group: what happened, on what, why it matters, how to fix and prevent it, and
//! the proof.

use korvid_schemas::{Alert, AlertStatus};
use serde_json::{Value, json};

use super::{Delivery, HttpPoster, SendError, Shape, Sink, status_str};

/// Renders one alert for a terminal or an email body.
pub fn render_text(a: &Alert) -> String {
    let mut out = format!(
        "[{sev}{resolved}] {title}\n  tactic:      {tactic} ({techniques})\n  subject:     {subject}\n  cluster:     {cluster}\n  rule:        {rule}\n  alert id:    {id}\n  occurrences: {n}\n",
        sev = a.severity.as_str().to_uppercase(),
        resolved = if a.status == AlertStatus::Resolved {
            ", RESOLVED"
        } else {
            ""
        },
        title = a.title,
        tactic = a.tactic.display_name(),
        techniques = a.techniques.join(", "),
        subject = a.subject,
        cluster = a.cluster,
        rule = rule_name(a),
        id = a.id,
        n = a.occurrences,
    );
    out.push_str(&format!("  why:         {}\n", a.implication));
    out.push_str(&format!("  fix:         {}\n", a.remediation));
    out.push_str(&format!("  prevent:     {}\n", a.prevention));
    if !a.evidence.is_empty() {
        out.push_str("  evidence:\n");
        for e in &a.evidence {
            out.push_str(&format!("    {}: {}\n", e.name, e.value));
        }
    }
    out
}

fn rule_name(a: &Alert) -> &str {
    a.rule_id
        .as_deref()
        .or(a.model_version.as_deref())
        .unwrap_or("-")
}

/// One line per group: how many alerts, firing and resolved.
fn group_title(d: &Delivery) -> String {
    let firing = d
        .alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Firing)
        .count();
    let resolved = d.alerts.len() - firing;
    let top = d.alerts.iter().map(|a| a.severity).max();
    let mut t = format!(
        "korvid: {} firing, {} resolved [{}]",
        firing,
        resolved,
        top.map_or("-", |s| s.as_str())
    );
    if !d.group.is_empty() {
        t.push_str(&format!(" in {}", d.group));
    }
    t
}

/// Prints each group to standard output.
pub struct StdoutSink;

#[async_trait::async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    fn shape(&self) -> Shape {
        Shape::Grouped
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        use std::io::Write;
        let mut text = format!("== {} ==\n", group_title(d));
        for a in &d.alerts {
            text.push_str(&render_text(a));
            text.push('\n');
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(SendError::refused)
    }
}

/// Slack has a 3,000-character limit per text block and 50 blocks per message; each alert
/// takes up to three blocks (divider, section, context), plus a header and a closing line.
const SLACK_TEXT: usize = 2_900;
const SLACK_ALERTS: usize = 15;
/// Alerts listed in one Teams card (cards are limited to about 28 KB).
const TEAMS_ALERTS: usize = 20;

/// At most `n` characters, marked with `…` when cut.
fn cut(s: &str, n: usize) -> String {
    let kept = super::first_chars(s, n);
    if kept.len() < s.len() {
        format!("{kept}…")
    } else {
        s.to_string()
    }
}

/// Slack's `mrkdwn` needs `&`, `<` and `>` escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Slack message (Block Kit) for a group: a header, then per alert a section with the
/// title, subject and severity, the why/fix/prevent text and the evidence as a context block.
pub fn slack_message(d: &Delivery) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": cut(&group_title(d), 140)}
    })];
    for a in d.alerts.iter().take(SLACK_ALERTS) {
        let icon = match (a.status, a.severity) {
            (AlertStatus::Resolved, _) => ":white_check_mark:",
            (_, korvid_schemas::Severity::Critical) => ":rotating_light:",
            (_, korvid_schemas::Severity::High) => ":red_circle:",
            _ => ":large_orange_circle:",
        };
        blocks.push(json!({"type": "divider"}));
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(&format!(
                "{icon} *{title}* ({status})\n*{sev}* · {tactic} · `{subject}` · cluster `{cluster}` · {rule}",
                title = slack_escape(&a.title),
                status = status_str(a),
                sev = a.severity.as_str(),
                tactic = a.tactic.display_name(),
                subject = slack_escape(&a.subject.to_string()),
                cluster = slack_escape(&a.cluster),
                rule = slack_escape(rule_name(a)),
            ), SLACK_TEXT)},
            "fields": [
                {"type": "mrkdwn", "text": cut(&format!("*Why*\n{}", slack_escape(&a.implication)), 1_900)},
                {"type": "mrkdwn", "text": cut(&format!("*Fix*\n{}", slack_escape(&a.remediation)), 1_900)},
                {"type": "mrkdwn", "text": cut(&format!("*Prevent*\n{}", slack_escape(&a.prevention)), 1_900)},
                {"type": "mrkdwn", "text": format!("*Alert*\n`{}` ×{}", a.id, a.occurrences)},
            ]
        }));
        if !a.evidence.is_empty() {
            let ev = a
                .evidence
                .iter()
                .map(|e| format!("*{}*: {}", slack_escape(&e.name), slack_escape(&e.value)))
                .collect::<Vec<_>>()
                .join(" · ");
            blocks.push(json!({
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": cut(&ev, SLACK_TEXT)}]
            }));
        }
    }
    if d.alerts.len() > SLACK_ALERTS {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("…and {} more alerts in this group", d.alerts.len() - SLACK_ALERTS)}]
        }));
    }
    // `text` is the notification fallback (and what screen readers announce).
    json!({"text": group_title(d), "blocks": blocks})
}

/// The Teams message for a group: an Adaptive Card (what Teams workflows and incoming
/// webhooks accept), one container per alert with a fact set.
pub fn teams_message(d: &Delivery) -> Value {
    let mut body = vec![json!({
        "type": "TextBlock", "size": "Large", "weight": "Bolder", "wrap": true,
        "text": group_title(d)
    })];
    for a in d.alerts.iter().take(TEAMS_ALERTS) {
        let mut facts = vec![
            json!({"title": "Severity", "value": a.severity.as_str()}),
            json!({"title": "Status", "value": status_str(a)}),
            json!({"title": "Tactic", "value": a.tactic.display_name()}),
            json!({"title": "Subject", "value": a.subject.to_string()}),
            json!({"title": "Cluster", "value": a.cluster}),
            json!({"title": "Rule", "value": rule_name(a)}),
            json!({"title": "Alert id", "value": a.id}),
            json!({"title": "Why", "value": a.implication}),
            json!({"title": "Fix", "value": a.remediation}),
            json!({"title": "Prevent", "value": a.prevention}),
        ];
        for e in &a.evidence {
            facts.push(json!({"title": e.name, "value": e.value}));
        }
        body.push(json!({
            "type": "Container", "separator": true,
            "items": [
                {"type": "TextBlock", "weight": "Bolder", "wrap": true,
                 "color": if a.status == AlertStatus::Resolved { "Good" } else { "Attention" },
                 "text": a.title},
                {"type": "FactSet", "facts": facts}
            ]
        }));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body
            }
        }]
    })
}

/// Posts each group to a chat webhook: Slack (incoming webhook, Block Kit; Slack allows about
/// one message per second per channel, so its default delivery rate is 1/s) or Microsoft Teams
/// (workflow / incoming webhook, Adaptive Card).
pub struct ChatSink {
    name: String,
    url: String,
    http: HttpPoster,
    render: fn(&Delivery) -> Value,
}

impl ChatSink {
    /// Slack, posting to `url` (`https://hooks.slack.com/services/...`).
    pub fn slack(name: &str, url: &str, http: HttpPoster) -> Self {
        ChatSink {
            name: name.into(),
            url: url.into(),
            http,
            render: slack_message,
        }
    }

    /// Microsoft Teams, posting to `url`.
    pub fn teams(name: &str, url: &str, http: HttpPoster) -> Self {
        ChatSink {
            name: name.into(),
            url: url.into(),
            http,
            render: teams_message,
        }
    }
}

#[async_trait::async_trait]
impl Sink for ChatSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> Shape {
        Shape::Grouped
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        self.http
            .send(self.http.post(&self.url).json(&(self.render)(d)))
            .await
            .map(drop)
    }
}
