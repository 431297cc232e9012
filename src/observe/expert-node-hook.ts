// The expert node's side of tracing and metrics, as the `onRequest` hook of the swarm's
// ExpertNode (src/swarm/expert-node.ts): each request frame that carries work gets a SERVER span
// whose parent is the caller's span, named by the frame's W3C `traceparent`, so one trace holds
// the gateway's request, its expert calls and the nodes' handling of them. Pings (health probes)
// are not traced. The node's request count and latency go to its own `/metrics`.
//
// Wiring on a node: `new ExpertNode({ …, onRequest: expertNodeRequestHook({ tracing, metrics,
// nodeId }) })`, with SwarmTracing exporting OTLP to the gateway's `/v1/traces` (or a collector).

import { SpanStatusCode } from "@opentelemetry/api";
import type { Frame } from "../swarm/frame.ts";
import { Op } from "../swarm/frame.ts";
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

type FrameLike = Pick<Frame, "op" | "traceparent" | "ids" | "tensors" | "region">;

export function expertNodeRequestHook(
  init: ExpertNodeHookInit,
): (frame: FrameLike) => ((failed: boolean) => void) | undefined {
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
    // A call the gateway did not sample (flag off in its traceparent) gets no span: parent-based
    // sampling would make it a non-recording span anyway, so skip building one and its attributes.
    const traceparent = frame.traceparent || undefined;
    const span =
      init.tracing && traceparentSampled(traceparent) !== false
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
    };
  };
}
