// The in-process trace store the dashboard reads when no OTLP collector is configured: a ring of
// the last `traceSpansMax` finished spans, indexed by trace id, from this process's tracer (as an
// OpenTelemetry SpanProcessor) and from other processes (through the OTLP/HTTP receiver in
// otlp-receiver.ts). `traces()` assembles each trace's span tree: children under their parent,
// spans whose parent is not (yet) here shown as roots, span links kept for fan-out and hedging.
//
// Memory is bounded: spans past the capacity evict the oldest, attributes past
// `spanAttributesMax` per span are dropped.

import type { Context } from "@opentelemetry/api";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import type { ReadableSpan, Span, SpanProcessor } from "@opentelemetry/sdk-trace-base";
import { invariant } from "../common/assert.ts";
import { spanAttributesMax, traceSpansMax, tracesListedMax } from "./constants.ts";

export type StoredAttributeValue = string | number | boolean;

export interface StoredLink {
  readonly traceId: string;
  readonly spanId: string;
  readonly attributes: Readonly<Record<string, StoredAttributeValue>>;
}

/** One finished span, as kept in the ring and sent to the dashboard. */
export interface StoredSpan {
  readonly traceId: string;
  readonly spanId: string;
  /** Empty for a root span. */
  readonly parentSpanId: string;
  readonly name: string;
  /** `service.name` of the process that recorded it. */
  readonly service: string;
  readonly kind: "internal" | "server" | "client" | "producer" | "consumer";
  /** Epoch milliseconds (fractional). */
  readonly startMs: number;
  readonly durationMs: number;
  readonly status: "unset" | "ok" | "error";
  readonly statusMessage: string;
  readonly attributes: Readonly<Record<string, StoredAttributeValue>>;
  readonly links: readonly StoredLink[];
}

export interface SpanTreeNode {
  readonly span: StoredSpan;
  readonly children: SpanTreeNode[];
}

export interface TraceSummary {
  readonly traceId: string;
  readonly rootName: string;
  readonly startMs: number;
  readonly durationMs: number;
  readonly spanCount: number;
  readonly services: readonly string[];
  readonly error: boolean;
  readonly roots: readonly SpanTreeNode[];
}

const kindNames: Record<SpanKind, StoredSpan["kind"]> = {
  [SpanKind.INTERNAL]: "internal",
  [SpanKind.SERVER]: "server",
  [SpanKind.CLIENT]: "client",
  [SpanKind.PRODUCER]: "producer",
  [SpanKind.CONSUMER]: "consumer",
};

/** Keeps at most `spanAttributesMax` attributes of scalar type (arrays are joined). */
export function boundedAttributes(
  attributes: Readonly<Record<string, unknown>>,
): Record<string, StoredAttributeValue> {
  const out: Record<string, StoredAttributeValue> = {};
  let n = 0;
  for (const [key, value] of Object.entries(attributes)) {
    if (n >= spanAttributesMax) break;
    if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") {
      out[key] = value;
    } else if (Array.isArray(value)) {
      out[key] = value.join(",");
    } else continue;
    n++;
  }
  return out;
}

function hrToMs(t: readonly [number, number]): number {
  return t[0] * 1e3 + t[1] / 1e6;
}

/** Converts a finished SDK span to its stored form. */
export function storedFromReadable(span: ReadableSpan): StoredSpan {
  const ctx = span.spanContext();
  const service = span.resource.attributes["service.name"];
  return {
    traceId: ctx.traceId,
    spanId: ctx.spanId,
    parentSpanId: span.parentSpanContext?.spanId ?? "",
    name: span.name,
    service: typeof service === "string" ? service : "unknown",
    kind: kindNames[span.kind] ?? "internal",
    startMs: hrToMs(span.startTime),
    durationMs: hrToMs(span.duration),
    status:
      span.status.code === SpanStatusCode.ERROR
        ? "error"
        : span.status.code === SpanStatusCode.OK
          ? "ok"
          : "unset",
    statusMessage: span.status.message ?? "",
    attributes: boundedAttributes(span.attributes),
    links: span.links.map((l) => ({
      traceId: l.context.traceId,
      spanId: l.context.spanId,
      attributes: boundedAttributes(l.attributes ?? {}),
    })),
  };
}

export class TraceRingBuffer {
  readonly #capacity: number;
  readonly #ring: (StoredSpan | undefined)[];
  #next = 0;
  #size = 0;
  /** traceId → its spans in the ring, oldest first (to list traces without a scan per trace). */
  readonly #byTrace = new Map<string, StoredSpan[]>();
  #added = 0;

  constructor(capacity = traceSpansMax) {
    if (!Number.isInteger(capacity) || capacity <= 0) {
      throw new RangeError(`trace buffer capacity must be a positive integer; got ${capacity}`);
    }
    this.#capacity = capacity;
    this.#ring = new Array(capacity);
  }

  get size(): number {
    return this.#size;
  }

  /** Spans ever added (including those since evicted). */
  get added(): number {
    return this.#added;
  }

  add(span: StoredSpan): void {
    const evicted = this.#ring[this.#next];
    if (evicted) {
      const list = this.#byTrace.get(evicted.traceId);
      invariant(list && list[0] === evicted, "the oldest span of a trace is evicted first");
      list.shift();
      if (list.length === 0) this.#byTrace.delete(evicted.traceId);
    } else {
      this.#size++;
    }
    this.#ring[this.#next] = span;
    this.#next = (this.#next + 1) % this.#capacity;
    const list = this.#byTrace.get(span.traceId);
    if (list) list.push(span);
    else this.#byTrace.set(span.traceId, [span]);
    this.#added++;
  }

  /** A snapshot of the trace's spans: a copy, so spans arriving later do not change it. */
  spansOf(traceId: string): readonly StoredSpan[] {
    return [...(this.#byTrace.get(traceId) ?? [])];
  }

  /** One trace with its span tree, or undefined when none of its spans is here. */
  trace(traceId: string): TraceSummary | undefined {
    const spans = this.#byTrace.get(traceId);
    return spans ? summarize(traceId, spans) : undefined;
  }

  /** The most recently updated traces, newest first. */
  traces(limit = tracesListedMax): TraceSummary[] {
    const n = Math.max(0, Math.min(limit, tracesListedMax));
    const ids: string[] = [];
    const seen = new Set<string>();
    for (let k = 1; k <= this.#size && ids.length < n; k++) {
      const span = this.#ring[(this.#next - k + this.#capacity) % this.#capacity];
      if (span && !seen.has(span.traceId)) {
        seen.add(span.traceId);
        ids.push(span.traceId);
      }
    }
    return ids.map((id) => summarize(id, this.#byTrace.get(id) ?? []));
  }
}

function summarize(traceId: string, spans: readonly StoredSpan[]): TraceSummary {
  const nodes = new Map<string, SpanTreeNode>();
  for (const span of spans) nodes.set(span.spanId, { span, children: [] });
  const roots: SpanTreeNode[] = [];
  for (const node of nodes.values()) {
    const parent = node.span.parentSpanId ? nodes.get(node.span.parentSpanId) : undefined;
    if (parent && parent !== node) parent.children.push(node);
    else roots.push(node);
  }
  const byStart = (a: SpanTreeNode, b: SpanTreeNode) => a.span.startMs - b.span.startMs;
  const sortTree = (list: SpanTreeNode[]) => {
    list.sort(byStart);
    for (const n of list) sortTree(n.children);
  };
  sortTree(roots);
  let start = Number.POSITIVE_INFINITY;
  let end = Number.NEGATIVE_INFINITY;
  const services = new Set<string>();
  let error = false;
  for (const s of spans) {
    start = Math.min(start, s.startMs);
    end = Math.max(end, s.startMs + s.durationMs);
    services.add(s.service);
    if (s.status === "error") error = true;
  }
  const root = roots.find((r) => r.span.parentSpanId === "") ?? roots[0];
  return {
    traceId,
    rootName: root?.span.name ?? "",
    startMs: spans.length ? start : 0,
    durationMs: spans.length ? end - start : 0,
    spanCount: spans.length,
    services: [...services].sort(),
    error,
    roots,
  };
}

/** An OpenTelemetry SpanProcessor that stores every finished span of this process in the ring. */
export class RingBufferSpanProcessor implements SpanProcessor {
  readonly #buffer: TraceRingBuffer;

  constructor(buffer: TraceRingBuffer) {
    this.#buffer = buffer;
  }

  onStart(_span: Span, _parentContext: Context): void {}

  onEnd(span: ReadableSpan): void {
    // Converted at once: a compact StoredSpan costs less to retain (GC promotion) than the SDK's span.
    this.#buffer.add(storedFromReadable(span));
  }

  async forceFlush(): Promise<void> {}

  async shutdown(): Promise<void> {}
}
