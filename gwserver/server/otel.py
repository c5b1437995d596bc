"""Span export over OTLP/HTTP with the OpenTelemetry SDK (``pip install gwserver[otel]``).

Only imported when ``[tracing] otlp_endpoint`` is set: with it empty, no OpenTelemetry code is
loaded and a request costs nothing extra. Each proxied request becomes one SERVER span whose
ids are the ones the gateway already put on the wire (core/tracing.py): its span id is the
parent the upstream saw, its parent is the caller's span. The SDK's batch processor sends
spans from a background greenlet; a dead collector costs dropped spans, never a request.
"""
import logging

from ..redact import mask_url

log = logging.getLogger("gwserver.otel")


class SpanExporter:
    def __init__(self, endpoint, service_name):
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator

        class WireIds(IdGenerator):
            """Hands the SDK the ids the gateway already sent upstream."""
            span_id = trace_id = 0

            def generate_span_id(self):
                return self.span_id

            def generate_trace_id(self):
                return self.trace_id

        self.trace = trace
        self.ids = WireIds()
        endpoint = endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                       id_generator=self.ids)
        self.provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, timeout=2), schedule_delay_millis=1000))
        self.tracer = self.provider.get_tracer("gwserver")
        # (the exporter sends a user:password@ of the URL as Basic auth: not for the log)
        log.info("exporting spans to %s", mask_url(endpoint))

    def export(self, req, status, upstream, started_ns, ended_ns):
        """One SERVER span for a finished request (called from the access-log step)."""
        trace = self.trace
        ctx = req.trace
        self.ids.trace_id = int(ctx.trace_id, 16)
        self.ids.span_id = int(ctx.span_id, 16)
        parent = None
        if ctx.parent_id:
            flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if ctx.sampled else 0)
            parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
                int(ctx.trace_id, 16), int(ctx.parent_id, 16), is_remote=True,
                trace_flags=flags)))
        route = req.route.id if req.route is not None else None
        span = self.tracer.start_span(
            f"{req.method} {route or 'unmatched'}", context=parent,
            kind=trace.SpanKind.SERVER, start_time=started_ns, attributes={
                "http.request.method": req.method, "url.path": req.path,
                "http.response.status_code": status, "gwserver.route": route or "",
                "gwserver.upstream": upstream or "", "gwserver.request_id": req.request_id,
                "gwserver.fault": req.var("fault") or ""})
        if status >= 500 or status == 0:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end(end_time=ended_ns)

    def shutdown(self):
        self.provider.shutdown()
