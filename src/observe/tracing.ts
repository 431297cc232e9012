// Distributed tracing with OpenTelemetry (https://opentelemetry.io/docs/specs/otel/trace/) — the
// spec's "QuantumTracer" of "entangled spans" is this: spans of one request share a trace id
// across processes because the caller's W3C trace context (https://www.w3.org/TR/trace-context/)
// travels in the wire protocol's `traceparent` field, and related spans that are not parent and
// child are tied by span links:
//   - fan-out: the step that combines the outputs of k parallel experts links to each expert span;
//   - hedging: a hedged duplicate call links to the primary call it duplicates.
//
// Spans of other processes: an expert node's spans of a sampled call come back in its reply frame
// (src/swarm/frame-spans.ts); `recordRemoteSpans` turns each record into a finished span of the
// node's service (its own resource: service.name = node id) and hands it to this process's span
// processors, so it reaches the ring buffer and the OTLP export like a local span.
//
// Exporters: OTLP/HTTP (JSON) when an endpoint is given or set in the standard environment
// variables OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT; otherwise the spans
// go to an in-process ring buffer (trace-buffer.ts) that the dashboard reads. Both can be on.
//
// Each SwarmTracing owns its own TracerProvider (so several swarm roles can run in one process
// in tests); the async-context manager that carries the active span is process-global and is
// installed once.

import {
  type Attributes,
  type Context,
  context,
  type HrTime,
  isSpanContextValid,
  type Link,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { type Resource, resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOnSampler,
  BasicTracerProvider,
  BatchSpanProcessor,
  ParentBasedSampler,
  type ReadableSpan,
  type SpanProcessor,
  TraceIdRatioBasedSampler,
} from "@opentelemetry/sdk-trace-base";
import { expertKey } from "../model/expert.ts";
import { type WireSpan, wireSpanNames } from "../swarm/frame-spans.ts";
import { remoteResourcesMax } from "./constants.ts";
import { RingBufferSpanProcessor, type TraceRingBuffer } from "./trace-buffer.ts";

const propagator = new W3CTraceContextPropagator();

/** W3C traceparent: version 00, 32-hex trace id, 16-hex span id, 2-hex flags (not all zero ids). */
const traceparentPattern = /^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/;

let contextManagerInstalled = false;

/** Installs the AsyncLocalStorage context manager once per process (idempotent). */
export function installContextManager(): void {
  if (contextManagerInstalled) return;
  const manager = new AsyncLocalStorageContextManager();
  manager.enable();
  contextManagerInstalled = context.setGlobalContextManager(manager);
}

/** The `traceparent` of the span active in `ctx`, or undefined when there is none. */
export function injectTraceparent(ctx: Context = context.active()): string | undefined {
  const carrier: Record<string, string> = {};
  propagator.inject(ctx, carrier, {
    set: (c, key, value) => {
      c[key] = value;
    },
  });
  return carrier.traceparent;
}

/**
 * The `traceparent` of a given span, formatted directly (version 00) — on the hot path of every
 * expert call, so it skips the propagator's carrier round trip (≈ 1.2 µs → ≈ 0.1 µs).
 */
export function traceparentOf(span: Span): string {
  const c = span.spanContext();
  if (!isSpanContextValid(c)) throw new RangeError("span has an invalid span context");
  return `00-${c.traceId}-${c.spanId}-${(c.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

/**
 * A context whose remote parent is the span named by `traceparent` (from the wire). A missing or
 * malformed value (untrusted input) yields `base` unchanged: the callee starts a new trace.
 */
export function extractTraceContext(
  traceparent: string | undefined,
  base: Context = ROOT_CONTEXT,
): Context {
  if (traceparent === undefined || !traceparentPattern.test(traceparent)) return base;
  return propagator.extract(
    base,
    { traceparent },
    {
      get: (c, key) => c[key as keyof typeof c],
      keys: (c) => Object.keys(c),
    },
  );
}

/**
 * The sampled flag of a well-formed traceparent (bit 0 of its trace-flags); undefined when the
 * value is absent or malformed. A callee uses it to skip span work for an unsampled call at once.
 */
export function traceparentSampled(traceparent: string | undefined): boolean | undefined {
  if (traceparent === undefined || !traceparentPattern.test(traceparent)) return undefined;
  return (Number.parseInt(traceparent.slice(53, 55), 16) & 1) === 1;
}

/** True when `value` is a well-formed W3C traceparent of version 00. */
export function isTraceparent(value: string): boolean {
  return traceparentPattern.test(value);
}

export interface SwarmTracingInit {
  /** `service.name` of this process, e.g. "gateway", "node-AMS-0". */
  readonly serviceName: string;
  /** Where finished spans are kept for the dashboard; none when omitted. */
  readonly ringBuffer?: TraceRingBuffer;
  /**
   * OTLP/HTTP traces endpoint (e.g. http://127.0.0.1:4318/v1/traces). Undefined: read the OTel
   * environment variables; null: no OTLP export even if they are set.
   */
  readonly otlpEndpoint?: string | null;
  /** Extra resource attributes (e.g. region). */
  readonly resource?: Attributes;
  /** Batch delay of the OTLP exporter (default the SDK's 5 s). */
  readonly otlpScheduledDelayMs?: number;
  /**
   * Fraction of new traces recorded (default 1). Parent-based: a call that arrives with a
   * traceparent follows the caller's decision (its sampled flag), so a trace is whole or absent.
   */
  readonly sampleRatio?: number;
  /**
   * Install the AsyncLocalStorage context manager that carries the active span across awaits
   * (default true). A process whose spans all have explicit parents (an expert node: the parent
   * comes from the frame's traceparent) passes false: once the manager runs anything, Node's
   * async hooks stay on and tax every promise in the process (visible in the nodes' CPU profiles).
   */
  readonly activeContext?: boolean;
}

/** The OTLP traces endpoint from the standard OpenTelemetry environment variables. */
export function otlpEndpointFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const traces = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  if (traces) return traces;
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (base) return `${base.replace(/\/+$/, "")}/v1/traces`;
  return undefined;
}

export class SwarmTracing {
  readonly tracer: Tracer;
  readonly serviceName: string;
  readonly otlpEndpoint: string | undefined;
  readonly #provider: BasicTracerProvider;
  readonly #processors: readonly SpanProcessor[];
  /** Resource per remote service (node id), built once: the OTLP exporter groups spans by it. */
  readonly #remoteResources = new Map<string, Resource>();

  constructor(init: SwarmTracingInit) {
    if (init.activeContext ?? true) installContextManager();
    this.serviceName = init.serviceName;
    const processors: SpanProcessor[] = [];
    if (init.ringBuffer) processors.push(new RingBufferSpanProcessor(init.ringBuffer));
    this.otlpEndpoint =
      init.otlpEndpoint === null ? undefined : (init.otlpEndpoint ?? otlpEndpointFromEnv());
    if (this.otlpEndpoint) {
      processors.push(
        new BatchSpanProcessor(new OTLPTraceExporter({ url: this.otlpEndpoint }), {
          ...(init.otlpScheduledDelayMs !== undefined
            ? { scheduledDelayMillis: init.otlpScheduledDelayMs }
            : {}),
        }),
      );
    }
    const ratio = init.sampleRatio ?? 1;
    if (!(ratio >= 0 && ratio <= 1)) {
      throw new RangeError(`tracing sampleRatio must be in [0, 1]; got ${init.sampleRatio}`);
    }
    this.#processors = processors;
    this.#provider = new BasicTracerProvider({
      resource: resourceFromAttributes({ "service.name": init.serviceName, ...init.resource }),
      spanProcessors: processors,
      sampler: new ParentBasedSampler({
        root: ratio === 1 ? new AlwaysOnSampler() : new TraceIdRatioBasedSampler(ratio),
      }),
    });
    this.tracer = this.#provider.getTracer("moe-swarm");
  }

  /** Starts a span; its parent is the active span of `parent` (default: the current context). */
  startSpan(
    name: string,
    options: {
      parent?: Context;
      kind?: SpanKind;
      attributes?: Attributes;
      links?: Link[];
    } = {},
  ): Span {
    return this.tracer.startSpan(
      name,
      {
        kind: options.kind ?? SpanKind.INTERNAL,
        ...(options.attributes ? { attributes: options.attributes } : {}),
        ...(options.links ? { links: options.links } : {}),
      },
      options.parent ?? context.active(),
    );
  }

  /**
   * Runs `fn` inside a new active span, ends it when `fn` settles, and records an exception as the
   * span's error status (the exception is rethrown).
   */
  async withSpan<T>(
    name: string,
    fn: (span: Span) => Promise<T> | T,
    options: { parent?: Context; kind?: SpanKind; attributes?: Attributes; links?: Link[] } = {},
  ): Promise<T> {
    const span = this.startSpan(name, options);
    const ctx = trace.setSpan(options.parent ?? context.active(), span);
    try {
      return await context.with(ctx, () => fn(span));
    } catch (err) {
      span.recordException(err instanceof Error ? err : String(err));
      span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
      throw err;
    } finally {
      span.end();
    }
  }

  /** Starts the server span of a call that arrived with `traceparent` (from the wire). */
  startServerSpan(name: string, traceparent: string | undefined, attributes?: Attributes): Span {
    return this.startSpan(name, {
      parent: extractTraceContext(traceparent),
      kind: SpanKind.SERVER,
      ...(attributes ? { attributes } : {}),
    });
  }

  /**
   * Starts one client span per parallel expert call under `parent`, each tagged with its
   * expert. Returns the spans; pass them to `startJoin` to link the combining step to all of them.
   */
  startFanOut(parent: Span, calls: readonly { name: string; attributes?: Attributes }[]): Span[] {
    const ctx = trace.setSpan(context.active(), parent);
    return calls.map((c, i) =>
      this.startSpan(c.name, {
        parent: ctx,
        kind: SpanKind.CLIENT,
        attributes: { "moe.fanout.index": i, "moe.fanout.width": calls.length, ...c.attributes },
      }),
    );
  }

  /** Starts the step that combines fanned-out calls: a child of `parent` linked to each of them. */
  startJoin(parent: Span, name: string, fanned: readonly Span[]): Span {
    return this.startSpan(name, {
      parent: trace.setSpan(context.active(), parent),
      links: fanned.map((s) => ({
        context: s.spanContext(),
        attributes: { "moe.link": "fan_in" },
      })),
    });
  }

  /**
   * Starts a hedged duplicate of `primary` (same parent), linked to the primary call it
   * duplicates, so a trace viewer shows both attempts and which one answered.
   */
  startHedge(parentContext: Context, primary: Span, name: string, attributes?: Attributes): Span {
    return this.startSpan(name, {
      parent: parentContext,
      kind: SpanKind.CLIENT,
      attributes: { "moe.hedge": true, ...attributes },
      links: [{ context: primary.spanContext(), attributes: { "moe.link": "hedge_of" } }],
    });
  }

  /**
   * Records finished spans of another process (an expert node's, from its reply frame) as spans
   * of `service` (its `service.name`) with its `resource` attributes. `attributes` are added to
   * each (e.g. the caller's region). Only sampled calls carry spans, so each is recorded.
   */
  recordRemoteSpans(
    service: string,
    spans: readonly WireSpan[],
    options: { resource?: Attributes; attributes?: Attributes } = {},
  ): void {
    let resource = this.#remoteResources.get(service);
    if (!resource) {
      // Bounded: a swarm has a bounded number of nodes; past the limit the cache starts over.
      if (this.#remoteResources.size >= remoteResourcesMax) this.#remoteResources.clear();
      resource = resourceFromAttributes({ ...options.resource, "service.name": service });
      this.#remoteResources.set(service, resource);
    }
    for (const s of spans) {
      const readable = readableOf(s, service, resource, options.attributes);
      for (const p of this.#processors) p.onEnd(readable);
    }
  }

  /** Exports every finished span now (OTLP batches included). */
  async flush(): Promise<void> {
    await this.#provider.forceFlush();
  }

  async shutdown(): Promise<void> {
    await this.#provider.shutdown();
  }
}

const remoteScope = { name: "moe-swarm" };

function hrAdd(t: HrTime, ns: number): HrTime {
  const nanos = t[1] + (ns % 1e9);
  return [t[0] + Math.floor(ns / 1e9) + Math.floor(nanos / 1e9), nanos % 1e9];
}

/** A finished SDK span (what span processors and exporters take) from a wire span record. */
function readableOf(
  s: WireSpan,
  service: string,
  resource: Resource,
  attributes: Attributes | undefined,
): ReadableSpan {
  const spanContext = { traceId: s.traceId, spanId: s.spanId, traceFlags: TraceFlags.SAMPLED };
  const startTime: HrTime = [s.startSeconds, s.startNanos];
  return {
    name: wireSpanNames[s.name],
    kind: SpanKind.SERVER,
    spanContext: () => spanContext,
    ...(s.parentSpanId
      ? {
          parentSpanContext: {
            traceId: s.traceId,
            spanId: s.parentSpanId,
            traceFlags: TraceFlags.SAMPLED,
            isRemote: true,
          },
        }
      : {}),
    startTime,
    endTime: hrAdd(startTime, s.durationNs),
    duration: [Math.floor(s.durationNs / 1e9), s.durationNs % 1e9],
    status:
      s.status === SpanStatusCode.ERROR
        ? { code: SpanStatusCode.ERROR, message: "error reply" }
        : { code: s.status as SpanStatusCode },
    attributes: {
      "moe.node": service,
      "moe.expert": expertKey({ layer: s.layer, expert: s.expert }),
      "moe.experts": s.experts,
      "moe.tokens": s.tokens,
      ...attributes,
    },
    links: [],
    events: [],
    ended: true,
    resource,
    instrumentationScope: remoteScope,
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0,
  };
}
