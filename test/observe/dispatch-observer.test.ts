// The dispatcher's real measurements as observability: RemoteExpertHost (over real ExpertNodes on
// loopback, test/swarm/fixtures/local-swarm.ts) with the gateway's DispatchObserver
// (src/observe/dispatch-observer.ts):
//   - a hedged read gets its own span, child of the expert call span, linked to it as the primary
//     ("hedge_of"), and the hedge counter counts it;
//   - a replicated update records the coherence time: from the first replica's ack to the last
//     one's, which the emulated link delay of the farthest replica bounds from below;
//   - a failover is counted with its reason and shows up as a live-feed event.
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import type { PromHistogramData } from "prom2javascript";
import { loadConfig } from "../../src/config/load.ts";
import type { ExpertId } from "../../src/model/expert.ts";
import { metricsDispatchObserver } from "../../src/observe/dispatch-observer.ts";
import { SwarmMetrics } from "../../src/observe/metrics.ts";
import { TraceRingBuffer } from "../../src/observe/trace-buffer.ts";
import { TracedExpertHost } from "../../src/observe/traced-expert-host.ts";
import { SwarmTracing } from "../../src/observe/tracing.ts";
import type { DispatchObserver } from "../../src/swarm/dispatch-observer.ts";
import { planPlacement } from "../../src/swarm/placement.ts";
import { directLinks, type RegionLinks } from "../../src/swarm/region-links.ts";
import { RemoteExpertHost } from "../../src/swarm/remote-expert-host.ts";
import { LocalSwarm, randn } from "../swarm/fixtures/local-swarm.ts";
import { parseExposition } from "./exposition.ts";

const d = 8;
const h = 8;
const regions = ["ORD", "IAD", "SJC", "AMS", "SYD"];
const experts: ExpertId[] = Array.from({ length: 5 }, (_, e) => ({ layer: 0, expert: e }));

let swarm: LocalSwarm | undefined;
let dispatcher: RemoteExpertHost | undefined;
let tracing: SwarmTracing | undefined;
afterEach(async () => {
  dispatcher?.close();
  await swarm?.close();
  await tracing?.shutdown();
  swarm = undefined;
  dispatcher = undefined;
  tracing = undefined;
});

async function setup(
  links: RegionLinks = directLinks,
  spy: (o: DispatchObserver) => DispatchObserver = (o) => o,
) {
  const { config } = loadConfig();
  const metrics = new SwarmMetrics({ config, process: "gateway", defaultMetrics: false });
  const traces = new TraceRingBuffer();
  tracing = new SwarmTracing({ serviceName: "gateway", ringBuffer: traces, otlpEndpoint: null });
  swarm = new LocalSwarm(d, h, 5, links);
  const placement = await swarm.start(planPlacement(experts, regions, 1, 3));
  dispatcher = new RemoteExpertHost({
    registry: placement,
    region: "ORD",
    dModel: d,
    links,
    observer: spy(metricsDispatchObserver({ tracing, metrics })),
  });
  const traced = new TracedExpertHost(dispatcher, { tracing, metrics, region: "ORD" });
  return { swarm, dispatcher, traced, metrics, traces };
}

describe("dispatch observer", { timeout: 30_000 }, () => {
  it("a hedged read: a hedge span under the call span, linked to the primary it duplicates", async () => {
    const { dispatcher, swarm, traced, metrics, traces } = await setup();
    const id = { layer: 0, expert: 1 };
    const x = randn(3, d);
    for (let i = 0; i < 12; i++) await dispatcher.forward(id, x, 1); // learn latencies
    // The replica(s) that served so far become slow, not dead (one, unless the machine was so
    // loaded that a learning call was itself hedged); the traced call is hedged to another.
    const served = swarm.nodes.filter((n) => n.host.forwardCalls > 0);
    assert.ok(served.length >= 1 && served.length < 3);
    for (const n of served) n.host.delayMs = 300;
    const slow = new Set(served.map((n) => n.plan.nodeId));
    const carried = new Map<string, string>();
    swarm.onFrame = (nodeId, frame) => carried.set(nodeId, frame.traceparent);
    await traced.forward(id, x, 1);
    assert.ok(dispatcher.counters.hedges >= 1);
    await tracing?.flush();
    const [summary] = traces.traces(1);
    assert.ok(summary);
    const spans = traces.spansOf(summary.traceId);
    const call = spans.find((s) => s.name === "expert.forward");
    const hedge = spans.find((s) => s.name === "expert.forward.hedge");
    assert.ok(call && hedge, `call and hedge spans recorded: ${spans.map((s) => s.name)}`);
    assert.equal(hedge.traceId, call.traceId);
    assert.equal(hedge.parentSpanId, call.spanId);
    assert.equal(hedge.kind, "client");
    assert.deepEqual(
      hedge.links.map((l) => [l.traceId, l.spanId, l.attributes["moe.link"]]),
      [[call.traceId, call.spanId, "hedge_of"]],
    );
    const primaryNode = String(hedge.attributes["moe.hedge_of_node"]);
    const hedgeNode = String(hedge.attributes["moe.node"]);
    assert.ok(slow.has(primaryNode), `the primary ${primaryNode} is a slowed replica`);
    assert.notEqual(hedgeNode, primaryNode);
    // A hedge to a replica that was not slowed answers first.
    if (!slow.has(hedgeNode)) assert.equal(hedge.attributes["moe.hedge.outcome"], "won");
    // The primary attempt carried the call span's context, the hedged one the hedge span's.
    assert.equal(carried.get(primaryNode), `00-${call.traceId}-${call.spanId}-01`);
    assert.equal(carried.get(hedgeNode), `00-${hedge.traceId}-${hedge.spanId}-01`);
    // Every hedge the dispatcher counted is in the metric (learning calls are not traced but counted).
    const families = await parseExposition(await metrics.exposition());
    const hedged = families.moe_swarm_hedged_requests_total?.data ?? [];
    assert.equal(
      hedged.reduce((a, s) => a + Number((s as { value: number }).value), 0),
      dispatcher.counters.hedges,
    );
  });

  it("a replicated update records the coherence time, bounded below by the farthest replica's RTT", async () => {
    // Expert 0 lives on ORD-0, IAD-0, SJC-0; from ORD: 0, 5 and 100 ms one way.
    const links: RegionLinks = {
      oneWayMs: (a, b) => {
        const other = a === "ORD" ? b : b === "ORD" ? a : "";
        return other === "SJC" ? 100 : other === "IAD" ? 5 : 0;
      },
      bitsPerSecond: undefined,
    };
    const seen: { seconds: number; replicas: number; version: number }[] = [];
    const { dispatcher, metrics } = await setup(links, (o) => ({
      ...o,
      coherence: (e) => {
        seen.push(e);
        o.coherence?.(e);
      },
    }));
    const id = { layer: 0, expert: 0 };
    await dispatcher.backward(id, randn(1, d), randn(2, d), 1);
    await dispatcher.applyUpdate([id], { step: 1, learningRate: 0.1, gradScale: 1 });
    assert.equal(seen.length, 1);
    const [c] = seen as [{ seconds: number; replicas: number; version: number }];
    assert.equal(c.replicas, 3);
    assert.equal(c.version, 1);
    // SJC's ack comes back after at least 200 ms; ORD's with no emulated delay.
    assert.ok(c.seconds >= 0.1, `coherence ${c.seconds} s`);
    const families = await parseExposition(await metrics.exposition());
    const hist = families.moe_swarm_expert_coherence_time_seconds?.data as PromHistogramData[];
    assert.equal(hist.length, 1);
    assert.equal(hist[0]?.count, 1);
    assert.ok(Math.abs((hist[0]?.sum ?? 0) - c.seconds) < 1e-9);
  });

  it("a failover is counted with its reason and becomes a live-feed event", async () => {
    const { dispatcher, swarm, metrics } = await setup();
    const events: string[] = [];
    metrics.onEvent((e) => {
      if (e.kind === "failover") events.push(e.message);
    });
    const id = { layer: 0, expert: 0 }; // ORD-0, IAD-0, SJC-0
    const x = randn(9, 2 * d);
    await dispatcher.forward(id, x, 2);
    const first = swarm.nodes.find((n) => n.host.forwardCalls > 0)?.plan.nodeId as string;
    await swarm.stop(first);
    await dispatcher.forward(id, x, 2);
    await dispatcher.forward(id, x, 2); // the node is marked down: not tried first again
    assert.ok(dispatcher.counters.failovers >= 1);
    assert.match(
      events[0] as string,
      new RegExp(`^L0\\.E0: ${first} → [A-Z]{3}-0 \\(node_down\\)$`),
    );
    // Counted where it happened, as often as the dispatcher counted it.
    const families = await parseExposition(await metrics.exposition());
    const failovers = families.moe_swarm_replica_failovers_total?.data ?? [];
    const count = (reason?: string) =>
      failovers
        .filter((s) => reason === undefined || s.labels.reason === reason)
        .reduce((a, s) => a + Number((s as { value: number }).value), 0);
    assert.ok(count("node_down") >= 1);
    assert.equal(count(), dispatcher.counters.failovers);
    assert.equal(metrics.snapshot().failovers, dispatcher.counters.failovers);
  });
});
