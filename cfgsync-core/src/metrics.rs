//! Prometheus metrics of the cfgsync routes, served on `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub route: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~105 s: covers a cached /node answer and a full long-poll.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// The server's metric handles; cloning shares them.
#[derive(Debug, Clone)]
pub(crate) struct ServerMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub registrations: Counter,
    pub long_polls_waiting: Gauge,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    pub insecure_listener: Gauge,
}

impl ServerMetrics {
    /// Creates the handles and registers them in `registry` under `cfgsync_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            registrations: Counter::default(),
            long_polls_waiting: Gauge::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            insecure_listener: Gauge::default(),
        };
        let registry = registry.sub_registry_with_prefix("cfgsync");
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route (long-polls included)",
            metrics.latency.clone(),
        );
        registry.register(
            "registrations",
            "Registrations accepted on POST /register",
            metrics.registrations.clone(),
        );
        registry.register(
            "long_polls_waiting",
            "POST /node requests currently held by long-poll",
            metrics.long_polls_waiting.clone(),
        );
        registry.register(
            "connections_open",
            "TCP connections being served",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections answered 503 and closed because the connection cap was reached",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "insecure_listener",
            "1 when the server listens beyond loopback with auth off",
            metrics.insecure_listener.clone(),
        );
        metrics
    }
}
