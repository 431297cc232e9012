// The observability hot path (issue #8's < 3 % overhead budget) must stay exact while it got cheap:
//   - BoundHistogram prints the same exposition as prom-client's own Histogram for the same
//     observations (parsed by an independent Prometheus parser), PendingCounter totals are exact
//     at every read, and binding per call instead of once is refused;
//   - an expert call under an unsampled request makes no span, builds no traceparent and hands
//     the callee the caller's context untouched; under a sampled request it makes a client span;
//   - an expert node makes a span only for a frame whose traceparent is sampled: an SDK span when
//     the caller does not ask for spans, a wire record (frame-spans.ts) when it does.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { context, trace } from "@opentelemetry/api";
import client from "prom-client";
import type { PromHistogramData } from "prom2javascript";
import { loadConfig } from "../../src/config/load.ts";
import type { ExpertCallContext, ExpertHost } from "../../src/model/expert.ts";
import {
  BoundHistogram,
  boundChildrenMax,
  PendingCounter,
} from "../../src/observe/bound-metrics.ts";
import { expertNodeRequestHook } from "../../src/observe/expert-node-hook.ts";
import { SwarmMetrics } from "../../src/observe/metrics.ts";
import { TraceRingBuffer } from "../../src/observe/trace-buffer.ts";
import { TracedExpertHost } from "../../src/observe/traced-expert-host.ts";
import { SwarmTracing, traceparentSampled } from "../../src/observe/tracing.ts";
import { Op } from "../../src/swarm/frame.ts";
import { WireSpanStatus } from "../../src/swarm/frame-spans.ts";
import { parseExposition } from "./exposition.ts";

describe("bound metrics", () => {
  it("BoundHistogram's exposition equals prom-client's Histogram for the same observations", async () => {
    const buckets = [0.001, 0.01, 0.1, 1];
    const ours = new client.Registry();
    const theirs = new client.Registry();
    ours.setDefaultLabels({ process: "p" });
    theirs.setDefaultLabels({ process: "p" });
    const a = new BoundHistogram({
      name: "x_seconds",
      help: "h",
      labelNames: ["route"],
      buckets,
      registers: [ours],
    });
    const b = new client.Histogram({
      name: "x_seconds",
      help: "h",
      labelNames: ["route"],
      buckets,
      registers: [theirs],
    });
    const values = [0, 0.001, 0.0010001, 0.05, 0.1, 0.7, 1, 3, 1e9];
    const childA = a.child({ route: "/a" });
    for (const v of values) {
      childA.observe(v);
      b.observe({ route: "/a" }, v);
      a.observe({ route: "/b" }, v / 2);
      b.observe({ route: "/b" }, v / 2);
    }
    assert.equal(await ours.metrics(), await theirs.metrics());
    const parsed = await parseExposition(await ours.metrics());
    const series = parsed.x_seconds?.data as PromHistogramData[];
    const first = series.find((s) => s.labels.route === "/a");
    assert.deepEqual(first?.buckets, { "0.001": 2, "0.01": 3, "0.1": 5, "1": 7, "+Inf": 9 });
    assert.equal(first?.count, 9);
    a.reset();
    assert.equal((await a.get()).values.find((v) => v.metricName === "x_seconds_count")?.value, 0);
    assert.throws(() => childA.observe(Number.NaN), TypeError);
  });

  it("PendingCounter totals are exact at every read, and binding per call is refused", async () => {
    const registry = new client.Registry();
    const pending = new PendingCounter<"kind">(["kind"]);
    pending.attach(
      new client.Counter({
        name: "t_total",
        help: "h",
        labelNames: ["kind"],
        registers: [registry],
        collect: () => pending.flush(),
      }),
    );
    const prompt = pending.child({ kind: "prompt" });
    prompt.inc(3);
    prompt.inc();
    assert.match(await registry.metrics(), /^t_total\{kind="prompt"\} 4$/m);
    prompt.inc(2);
    pending.child({ kind: "prompt" }).inc(1); // the same child
    assert.match(await registry.metrics(), /^t_total\{kind="prompt"\} 7$/m);
    assert.throws(() => prompt.inc(-1), RangeError);
    const h = new BoundHistogram({ name: "y_seconds", help: "h", labelNames: ["k"], buckets: [1] });
    for (let i = 0; i < boundChildrenMax; i++) h.child({ k: String(i) });
    assert.throws(() => h.child({ k: "one too many" }), /bind children once/);
  });

  it("SwarmMetrics' bound recorders feed the same series as the by-name ones", async () => {
    const { config } = loadConfig();
    const m = new SwarmMetrics({ config, process: "node-AMS-0", defaultMetrics: false });
    const record = m.bindRequest("wire:forward");
    record(200, 0.002);
    record(500, 0.2);
    m.recordRequest("wire:forward", 200, 0.003);
    const call = m.bindExpertCall("ORD");
    call("ok", 0.004);
    m.recordExpertCall("ORD", "timeout", 0.5);
    m.recordTokens("prompt", 12);
    m.recordTokens("prompt", 5);
    const f = await parseExposition(await m.exposition());
    const requests = f.moe_swarm_requests_total?.data.map((d) => [
      d.labels.status,
      (d as { value: number }).value,
    ]);
    assert.deepEqual(requests, [
      ["2xx", 2],
      ["5xx", 1],
    ]);
    const duration = f.moe_swarm_request_duration_seconds?.data[0] as PromHistogramData;
    assert.equal(duration.count, 3);
    const calls = (
      (f.moe_swarm_expert_call_duration_seconds?.data ?? []) as PromHistogramData[]
    ).map((d) => [d.labels.outcome, d.count]);
    assert.deepEqual(calls, [
      ["ok", 1],
      ["error", 0],
      ["timeout", 1],
      ["cancelled", 0],
    ]);
    assert.equal((f.moe_swarm_tokens_total?.data[0] as { value: number } | undefined)?.value, 17);
    assert.equal(m.snapshot().tokens.total, 17);

    // An expert node (no dashboard): the same /metrics series, the dashboard windows left alone.
    const node = new SwarmMetrics({
      config,
      process: "AMS-0",
      defaultMetrics: false,
      feedDashboard: false,
    });
    node.bindRequest("wire:forward")(200, 0.002);
    node.recordTokens("prompt", 12);
    const g = await parseExposition(await node.exposition());
    assert.equal((g.moe_swarm_tokens_total?.data[0] as { value: number } | undefined)?.value, 12);
    const served = g.moe_swarm_request_duration_seconds?.data[0] as PromHistogramData | undefined;
    assert.equal(served?.count, 1);
    assert.equal(node.snapshot().tokens.total, 0);
    assert.equal(node.snapshot().requests.total, 0);
  });
});

describe("sampling on the hot path", () => {
  const noop = (seen: (ExpertCallContext | undefined)[]): ExpertHost => ({
    forward: async (_id, x, _tokens, ctx) => {
      seen.push(ctx);
      return x;
    },
    backward: async (_id, x) => x,
    gradSquaredNorm: async () => 0,
    applyUpdate: async () => {},
  });

  it("a call under an unsampled request makes no span and no traceparent", async () => {
    const buffer = new TraceRingBuffer(64);
    // Ratio 0: every new trace is unsampled; parent-based children follow.
    const tracing = new SwarmTracing({
      serviceName: "gateway",
      ringBuffer: buffer,
      otlpEndpoint: null,
      sampleRatio: 0,
    });
    const seen: (ExpertCallContext | undefined)[] = [];
    const host = new TracedExpertHost(noop(seen), { tracing });
    const request = tracing.startSpan("POST /v1/completions");
    const x = new Float32Array(4);
    await context.with(trace.setSpan(context.active(), request), () =>
      host.forward({ layer: 0, expert: 1 }, x, 1),
    );
    request.end();
    assert.equal(seen[0], undefined, "the caller's (absent) context, untouched");
    const signal = new AbortController().signal;
    await context.with(trace.setSpan(context.active(), request), () =>
      host.forward({ layer: 0, expert: 1 }, x, 1, { signal }),
    );
    assert.equal(seen[1]?.signal, signal);
    assert.equal(seen[1]?.traceparent, undefined, "no traceparent for an unsampled request");
    // No request span at all: the sampler decides for a root (ratio 0: none).
    await host.forward({ layer: 0, expert: 1 }, x, 1);
    assert.equal(seen[2], undefined);
    assert.equal(buffer.added, 0, "no span recorded");
    seen.length = 1;

    // Sampled request (ratio 1): the call gets its own client span, and the callee its context.
    const sampled = new SwarmTracing({ serviceName: "g2", ringBuffer: buffer, otlpEndpoint: null });
    const host2 = new TracedExpertHost(noop(seen), { tracing: sampled });
    await sampled.withSpan("POST /v1/completions", () =>
      host2.forward({ layer: 0, expert: 1 }, x, 1),
    );
    const tp2 = seen.at(-1)?.traceparent;
    assert.equal(traceparentSampled(tp2), true);
    const spans = buffer.traces(1)[0];
    assert.equal(spans?.spanCount, 2);
    assert.equal(spans?.roots[0]?.children[0]?.span.name, "expert.forward");
    assert.ok(tp2?.includes(spans?.roots[0]?.children[0]?.span.spanId ?? "none"));
    await tracing.shutdown();
    await sampled.shutdown();
  });

  it("an expert node makes a span only for a sampled frame: SDK span, or wire record when asked", async () => {
    const buffer = new TraceRingBuffer(64);
    const tracing = new SwarmTracing({
      serviceName: "AMS-0",
      ringBuffer: buffer,
      otlpEndpoint: null,
      activeContext: false,
    });
    const hook = expertNodeRequestHook({ nodeId: "AMS-0", tracing });
    const frame = (traceparent: string, spansWanted = false) => ({
      op: Op.forward,
      traceparent,
      ids: [{ layer: 0, expert: 3 }],
      tensors: [{ dims: [5, 2], data: new Float32Array(10) }],
      region: "ORD",
      spansWanted,
    });
    const trace0 = "0af7651916cd43dd8448eb211c80319c";
    hook(frame(`00-${trace0}-b7ad6b7169203331-00`))?.(false);
    assert.equal(buffer.added, 0, "unsampled: no span");
    hook(frame(`00-${trace0}-b7ad6b7169203331-01`))?.(false);
    assert.equal(buffer.added, 1, "sampled: one span");
    assert.equal(buffer.spansOf(trace0)[0]?.parentSpanId, "b7ad6b7169203331");
    hook(frame(""))?.(false);
    assert.equal(buffer.added, 1, "no traceparent: not traced");
    assert.equal(hook(frame(`00-${trace0}-b7ad6b7169203331-00`, true))?.(false), undefined);
    const record = hook(frame(`00-${trace0}-b7ad6b7169203331-01`, true))?.(true);
    assert.equal(buffer.added, 1, "asked for a wire record: no SDK span");
    assert.equal(record?.traceId, trace0);
    assert.equal(record?.parentSpanId, "b7ad6b7169203331");
    assert.equal(record?.status, WireSpanStatus.error);
    assert.equal(record?.tokens, 5);
    assert.equal(traceparentSampled("garbage"), undefined);
    assert.equal(traceparentSampled(`00-${trace0}-b7ad6b7169203331-03`), true);
    await tracing.shutdown();
  });
});
