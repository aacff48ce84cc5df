'use strict';
// Traces: a /process request continues the caller's W3C `traceparent` with a server span and
// child spans for decode, op and encode, exported over OTLP/HTTP (JSON).
//
// Only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set: otherwise
// createTracing returns NO_TRACING, the OpenTelemetry packages are never loaded and no exporter
// timer runs. The SDK reads the other standard OTEL_* variables itself (headers, batch delay).

const { SERVICE } = require('./log');

const ENDPOINT_VARIABLES = ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'];

/** Tracing off: no span exists, `child` just runs its function. */
const NO_TRACING = {
  enabled: false,
  startRequest: () => null,
  child: (parent, name, fn) => fn(),
  endRequest: () => {},
  shutdown: async () => {},
};

/** Tracing on: an SDK provider of our own (not the global one) with a batch OTLP exporter. */
function otelTracing() {
  const { trace, ROOT_CONTEXT, SpanKind, SpanStatusCode, defaultTextMapGetter } = require('@opentelemetry/api');
  const { W3CTraceContextPropagator } = require('@opentelemetry/core');
  const { BasicTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');
  const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');
  const { resourceFromAttributes } = require('@opentelemetry/resources');

  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': SERVICE }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  const tracer = provider.getTracer('worker-nodejs');
  const propagator = new W3CTraceContextPropagator();
  return {
    enabled: true,
    startRequest(headers, name, attributes) {
      const parent = propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
      return tracer.startSpan(name, { kind: SpanKind.SERVER, attributes }, parent);
    },
    async child(parent, name, fn) {
      if (!parent) return fn();
      const span = tracer.startSpan(name, {}, trace.setSpan(ROOT_CONTEXT, parent));
      try {
        return await fn();
      } finally {
        span.end();
      }
    },
    endRequest(span, status) {
      if (!span) return;
      span.setAttribute('http.response.status_code', status);
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    },
    shutdown: () => provider.shutdown(),
  };
}

function createTracing(env = process.env) {
  return ENDPOINT_VARIABLES.some((name) => env[name]) ? otelTracing() : NO_TRACING;
}

module.exports = { createTracing, NO_TRACING };
