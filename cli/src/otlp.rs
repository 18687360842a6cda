//! `valkyrie node --otlp URL`: the node's request spans (`valkyrie::request`, one per request
//! that carries a trace context) exported over OTLP/HTTP as JSON to `URL/v1/traces`, each with
//! the caller's span as its remote parent. The exporter's HTTP client is a blocking one on the
//! batch processor's own thread: a shard only records its span and moves on.

use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use valkyrie_runtime::request_span::TraceHook;

/// Flushes and stops the exporter when dropped (spans still queued are sent).
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("otlp: {e}");
        }
    }
}

/// Install the process's subscriber: the usual log lines on stderr, and request spans
/// exported to the OTLP/HTTP collector at `url` (its base: `/v1/traces` is added). Returns the
/// exporter's guard and the hook the node calls for each request span.
pub(crate) fn install(
    url: &str,
    node_id: &str,
) -> Result<(Exporter, TraceHook), Box<dyn std::error::Error>> {
    let endpoint = format!("{}/v1/traces", url.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .with_max_queue_size(8192)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(
            Resource::builder()
                .with_service_name("valkyrie")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    node_id.to_owned(),
                ))
                .build(),
        )
        .build();
    let tracer = provider.tracer("valkyrie");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("valkyrie::request", tracing::Level::INFO),
        );
    tracing_subscriber::registry()
        .with(crate::log_layer())
        .with(spans)
        .try_init()?;
    let hook: TraceHook = std::sync::Arc::new(|span, ctx, flags| {
        let parent = SpanContext::new(
            TraceId::from_bytes(ctx.trace_id),
            SpanId::from_bytes(ctx.span_id),
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    });
    Ok((Exporter { provider }, hook))
}
