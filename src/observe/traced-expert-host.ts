// An ExpertHost decorator (src/model/expert.ts) that traces and times every expert call: each
// forward/backward gets a CLIENT span, child of the caller's active span (the request), and the
// span's W3C `traceparent` is put in the call context so a remote host (the swarm's
// RemoteExpertHost) carries it in its wire frames to the expert node. The calls of one MoE layer
// run concurrently, so they appear as parallel sibling spans (the fan-out). Call latency and
// outcome go to `moe_swarm_expert_call_duration_seconds`.
//
// Cost (issue #8's < 3 % budget): with parent-based sampling most requests are not sampled. The
// request's sampling decision is read once per call from its span's trace flags; a call under an
// unsampled request creates no span, builds no traceparent string and passes the caller's context
// on untouched: a frame without a traceparent is not traced by the expert node either (the wire's
// "not sampled"). The latency series are bound once (SwarmMetrics.bindExpertCall), so such a
// call costs two clock reads and an array write.
//
// Wiring: the gateway wraps its dispatcher, `buildTrunk(cfg, new TracedExpertHost(dispatcher, …))`.

import {
  context,
  type Span,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  trace,
} from "@opentelemetry/api";
import {
  type ExpertCallContext,
  type ExpertHost,
  type ExpertId,
  type ExpertUpdate,
  expertKey,
} from "../model/expert.ts";
import type { ExpertCallOutcome, SwarmMetrics } from "./metrics.ts";
import { type SwarmTracing, traceparentOf } from "./tracing.ts";

export interface TracedExpertHostInit {
  readonly tracing?: SwarmTracing;
  readonly metrics?: SwarmMetrics;
  /** Label of the expert-call histogram's `region` (the caller cannot know which replica served). */
  readonly region?: string;
  /** Runtime switch; when it returns false calls pass straight through (default: always on). */
  readonly enabled?: () => boolean;
}

function outcomeOf(err: unknown): ExpertCallOutcome {
  const name = err instanceof Error ? `${err.name} ${err.message}` : String(err);
  if (/abort/i.test(name)) return "cancelled";
  if (/deadline|timeout|timed out/i.test(name)) return "timeout";
  return "error";
}

export class TracedExpertHost implements ExpertHost {
  readonly inner: ExpertHost;
  readonly #init: TracedExpertHostInit;
  readonly #recordCall: ((outcome: ExpertCallOutcome, seconds: number) => void) | undefined;

  constructor(inner: ExpertHost, init: TracedExpertHostInit) {
    this.inner = inner;
    this.#init = init;
    this.#recordCall = init.metrics?.bindExpertCall(init.region ?? "swarm");
  }

  #call<T>(
    name: string,
    id: ExpertId,
    tokens: number,
    ctx: ExpertCallContext | undefined,
    run: (ctx: ExpertCallContext | undefined) => Promise<T>,
  ): Promise<T> {
    if (this.#init.enabled && !this.#init.enabled()) return run(ctx);
    const { tracing } = this.#init;
    // The request's decision: its span's sampled flag (no span: the sampler decides for a root).
    const parent = tracing ? trace.getSpan(context.active()) : undefined;
    if (tracing && (!parent || (parent.spanContext().traceFlags & TraceFlags.SAMPLED) !== 0)) {
      const span = tracing.startSpan(name, {
        kind: SpanKind.CLIENT,
        attributes: { "moe.expert": expertKey(id), "moe.layer": id.layer, "moe.tokens": tokens },
      });
      if (span.isRecording()) return this.#traced(span, ctx, run);
      span.end();
    }
    // Unsampled: the caller's context untouched, only the latency sample (no extra async frame).
    const record = this.#recordCall;
    if (!record) return run(ctx);
    const t0 = performance.now();
    return run(ctx).then(
      (result) => {
        record("ok", (performance.now() - t0) / 1000);
        return result;
      },
      (err: unknown) => {
        record(outcomeOf(err), (performance.now() - t0) / 1000);
        throw err;
      },
    );
  }

  /** A sampled call: its client span's context goes to the callee (the wire's traceparent). */
  async #traced<T>(
    span: Span,
    ctx: ExpertCallContext | undefined,
    run: (ctx: ExpertCallContext | undefined) => Promise<T>,
  ): Promise<T> {
    const record = this.#recordCall;
    const t0 = record ? performance.now() : 0;
    try {
      const result = await run({ ...ctx, traceparent: traceparentOf(span) });
      record?.("ok", (performance.now() - t0) / 1000);
      return result;
    } catch (err) {
      record?.(outcomeOf(err), (performance.now() - t0) / 1000);
      span.recordException(err instanceof Error ? err : String(err));
      span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
      throw err;
    } finally {
      span.end();
    }
  }

  forward(
    id: ExpertId,
    x: Float32Array,
    tokens: number,
    ctx?: ExpertCallContext,
  ): Promise<Float32Array> {
    return this.#call("expert.forward", id, tokens, ctx, (c) =>
      this.inner.forward(id, x, tokens, c),
    );
  }

  backward(
    id: ExpertId,
    x: Float32Array,
    dy: Float32Array,
    tokens: number,
    ctx?: ExpertCallContext,
  ): Promise<Float32Array> {
    return this.#call("expert.backward", id, tokens, ctx, (c) =>
      this.inner.backward(id, x, dy, tokens, c),
    );
  }

  gradSquaredNorm(ids: readonly ExpertId[]): Promise<number> {
    return this.inner.gradSquaredNorm(ids);
  }

  applyUpdate(ids: readonly ExpertId[], update: ExpertUpdate): Promise<void> {
    return this.inner.applyUpdate(ids, update);
  }
}
