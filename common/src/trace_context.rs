//! W3C trace context from the audit webhook to the alert.
//!
//! Each hop carries the `traceparent` of the span that produced it: ingest takes it from the API
//! server's request (or starts a trace), every Kafka record a korvid producer sends within a
//! traced span gets it as a header (see [`crate::kafka::RecordProducer`]), each service continues
//! the trace of what it consumed ([`span_after`]), and notify's HTTP sinks send it on to the
//! receiver. A graph window folds many events into one span: it continues the first event's
//! trace and links the others' ([`link`]), so a trace backend can walk from any event to its
//! alert.
//!
//! Without an OTLP endpoint (`telemetry.otlp_endpoint`) spans have no OpenTelemetry context and
//! nothing is added: tracing costs nothing when it is off.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (Kafka and HTTP) that carries the context.
pub const HEADER: &str = "traceparent";

/// The most events a window's span links to besides its parent.
pub const MAX_LINKS: usize = 32;

/// The current span's context as a `traceparent` value; `None` when it is not traced.
pub fn current() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(HEADER)
}

/// The context a `traceparent` value names, if it is valid.
pub fn parse(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([(HEADER.to_string(), traceparent.trim().to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The trace id (32 hex digits) of a `traceparent` value.
pub fn trace_id(traceparent: &str) -> Option<String> {
    parse(traceparent).map(|cx| cx.span().span_context().trace_id().to_string())
}

/// `span`, continuing the trace of `parent` (a `traceparent` value) when there is one.
pub fn span_after(span: tracing::Span, parent: Option<&str>) -> tracing::Span {
    if let Some(cx) = parent.and_then(parse) {
        // Fails only when the span is disabled or already started, which is harmless here.
        let _ = span.set_parent(cx);
    }
    span
}

/// Links `span` to the trace of `traceparent` (another input it folds in).
pub fn link(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = parse(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_give_their_trace_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse("garbage").is_none());
        assert!(current().is_none(), "no OpenTelemetry layer, no context");
    }
}
