// The expert node's side of tracing and metrics, as the `onRequest` hook of the swarm's
// ExpertNode (src/swarm/expert-node.ts): each request frame that carries work gets a SERVER span
// whose parent is the caller's span, named by the frame's W3C `traceparent`, so one trace holds
// the gateway's request, its expert calls and the nodes' handling of them. Pings (health probes)
// are not traced. The node's request count and latency go to its own `/metrics`.
//
// Only calls the gateway sampled are traced: a frame without a traceparent, or with its sampled
// flag off, costs no span, no id and no attribute.
//
// Where a span goes:
//   - the frame asks for spans (flags bit 0, src/swarm/frame-spans.ts; the gateway does when it
//     collects node spans, `DispatchObserver.nodeSpans`): the span is a 56-byte binary record
//     returned to the ExpertNode, which puts it in the reply frame. No OpenTelemetry SDK span, no
//     export: issue #8 measured the OTLP/HTTP JSON path at ≈ 30 µs of CPU per span.
//   - otherwise (a caller that does not collect spans): an OpenTelemetry SERVER span, exported by
//     the node's SwarmTracing over OTLP when it has an endpoint (the gateway's `/v1/traces` or a
//     collector).
//
// Wiring on a node: `new ExpertNode({ …, onRequest: expertNodeRequestHook({ tracing, metrics,
// nodeId }) })`.

import { randomFillSync } from "node:crypto";
import { SpanStatusCode } from "@opentelemetry/api";
import type { Frame } from "../swarm/frame.ts";
import { Op } from "../swarm/frame.ts";
import { type WireSpan, WireSpanName, WireSpanStatus } from "../swarm/frame-spans.ts";
import type { SwarmMetrics } from "./metrics.ts";
import { type SwarmTracing, traceparentSampled } from "./tracing.ts";

const opNames: Record<number, string> = {
  [Op.forward]: "forward",
  [Op.backward]: "backward",
  [Op.gradSquaredNorm]: "grad_squared_norm",
  [Op.applyUpdate]: "apply_update",
};

export interface ExpertNodeHookInit {
  readonly nodeId: string;
  readonly tracing?: SwarmTracing;
  readonly metrics?: SwarmMetrics;
  /** Runtime switch; when it returns false requests are neither traced nor counted. */
  readonly enabled?: () => boolean;
}

const wireNames: Record<number, WireSpanName> = {
  [Op.forward]: WireSpanName.nodeForward,
  [Op.backward]: WireSpanName.nodeBackward,
  [Op.gradSquaredNorm]: WireSpanName.nodeGradSquaredNorm,
  [Op.applyUpdate]: WireSpanName.nodeApplyUpdate,
};

type FrameLike = Pick<Frame, "op" | "traceparent" | "ids" | "tensors" | "region" | "spansWanted">;

/** Span ids: 8 random bytes each, cut from a pool refilled 512 ids at a time. */
const idPool = Buffer.alloc(8 * 512);
let idPoolAt = idPool.length;
function newSpanId(): string {
  for (;;) {
    if (idPoolAt === idPool.length) {
      randomFillSync(idPool);
      idPoolAt = 0;
    }
    const id = idPool.toString("hex", idPoolAt, idPoolAt + 8);
    idPoolAt += 8;
    if (id !== "0000000000000000") return id;
  }
}

/** Epoch time of a `performance.now()` reading, as whole seconds and nanoseconds. */
function epochOf(nowMs: number): { seconds: number; nanos: number } {
  const ms = performance.timeOrigin + nowMs;
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.min(999_999_999, Math.round((ms - seconds * 1000) * 1e6)) };
}

export function expertNodeRequestHook(
  init: ExpertNodeHookInit,
): (frame: FrameLike) => ((failed: boolean) => WireSpan | undefined) | undefined {
  // Bound once per op: a frame's metrics cost no label lookup (see bound-metrics.ts).
  const recordByOp = new Map<number, (status: number, seconds: number) => void>();
  if (init.metrics) {
    for (const [op, name] of Object.entries(opNames))
      recordByOp.set(Number(op), init.metrics.bindRequest(`wire:${name}`));
  }
  return (frame) => {
    const op = opNames[frame.op];
    if (op === undefined || (init.enabled && !init.enabled())) return undefined;
    const t0 = performance.now();
    // A forward frame carries one tensor per expert (the dispatcher groups a round's calls to a
    // node); a backward frame carries x and dy of the same rows.
    const tokens =
      frame.op === Op.forward
        ? frame.tensors.reduce((sum, t) => sum + (t.dims[0] ?? 0), 0)
        : (frame.tensors[0]?.dims[0] ?? 0);
    // Only a call the gateway sampled gets a span (the sampled flag of its traceparent).
    const traceparent = frame.traceparent || undefined;
    const sampled = traceparentSampled(traceparent) === true;
    const wire = sampled && frame.spansWanted;
    const span =
      init.tracing && sampled && !wire
        ? init.tracing.startServerSpan(`expert.node.${op}`, traceparent, {
            "moe.node": init.nodeId,
            "moe.expert": frame.ids[0] ? `L${frame.ids[0].layer}.E${frame.ids[0].expert}` : "",
            "moe.experts": frame.ids.length,
            "moe.tokens": tokens,
            "moe.caller_region": frame.region,
          })
        : undefined;
    const record = recordByOp.get(frame.op);
    return (failed) => {
      const seconds = (performance.now() - t0) / 1000;
      record?.(failed ? 500 : 200, seconds);
      if (op === "forward" || op === "backward") {
        if (!failed && tokens > 0)
          init.metrics?.recordTokens(op === "forward" ? "prompt" : "train", tokens);
      }
      if (span) {
        if (failed) span.setStatus({ code: SpanStatusCode.ERROR, message: "error reply" });
        span.end();
      }
      if (!wire) return undefined;
      // traceparent = "00-" trace id (32) "-" parent span id (16) "-" flags, checked above.
      const tp = traceparent as string;
      const start = epochOf(t0);
      const first = frame.ids[0];
      return {
        traceId: tp.slice(3, 35),
        spanId: newSpanId(),
        parentSpanId: tp.slice(36, 52),
        name: wireNames[frame.op] as WireSpanName,
        status: failed ? WireSpanStatus.error : WireSpanStatus.unset,
        startSeconds: start.seconds,
        startNanos: start.nanos,
        durationNs: Math.max(0, Math.round(seconds * 1e9)),
        layer: first?.layer ?? 0,
        expert: first?.expert ?? 0,
        experts: frame.ids.length,
        tokens,
      };
    };
  };
}
