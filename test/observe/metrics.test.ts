import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";
import type { PromData, PromHistogramData, PromMetric, PromMetrics } from "prom2javascript";
import { InvariantError } from "../../src/common/assert.ts";
import { loadConfig, resolveConfig } from "../../src/config/load.ts";
import { routeAll } from "../../src/observe/http-route.ts";
import { customMetricName, MetricsConfigError, SwarmMetrics } from "../../src/observe/metrics.ts";
import { metricsRoute } from "../../src/observe/metrics-http.ts";
import { SwarmRecorder } from "../../src/observe/swarm-recorder.ts";
import { parseExposition } from "./exposition.ts";

const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
});

async function serve(metrics: SwarmMetrics): Promise<string> {
  const server = createServer(routeAll([metricsRoute(metrics)]));
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function family(families: PromMetrics, name: string): PromMetric {
  const f = families[name];
  assert.ok(f, `metric ${name} missing from /metrics; have ${Object.keys(families).join(", ")}`);
  return f;
}

/** Records one of every kind of operation, as the gateway, nodes and coordinators would. */
function exercise(m: SwarmMetrics): void {
  m.recordCoherenceTime(42e-9);
  m.recordCoherenceTime(0.5); // far above the spec's 10 µs top bucket: in the extension's 0.5 s
  m.recordCoherenceTime(30); // above the extension's 10 s: +Inf only
  m.recordGradientFidelity(Float32Array.of(1, 0), Float32Array.of(1, 1));
  m.recordConsensusRound({ region: "ORD", gpuType: "a100-80gb", algorithm: "hotstuff_2chain" });
  m.recordConsensusRound({ region: "ORD", gpuType: "a100-80gb", algorithm: "hotstuff_2chain" });
  m.recordRequest("/v1/generate", 200, 0.012);
  m.recordRequest("/v1/generate", 503, 0.3);
  m.recordTokens("prompt", 17);
  m.recordExpertActivations(0, [3, 0, 5]);
  m.recordDroppedTokens(0, 2);
  m.recordExpertCall("AMS", "ok", 0.05);
  m.recordFailover({
    layer: 0,
    expert: 2,
    from: "node-AMS-0",
    to: "node-SJC-0",
    reason: "timeout",
  });
  m.recordHedge(0);
  m.setNodeHealth({ id: "node-AMS-0", region: "AMS", up: true, experts: ["L0.E2"] });
  m.recordLinkRtt("ORD", "AMS", 0.0962);
  m.setConsensusStatus({ leader: "ORD", view: 1, height: 10 });
  m.recordCommit(0.02);
  m.recordCheckpoint("hot", 123456);
  m.recordTrainingStep(1, 5.5);
  m.recordCanaryStep(1, 0.01, "started");
}

describe("SwarmMetrics /metrics", () => {
  it("serves every spec metric with the right type, unit, buckets and labels (parsed by a Prometheus text parser)", async () => {
    const { config } = loadConfig();
    // prom-client's Node.js runtime metrics are left out here: before its first sample the event-loop
    // lag gauge prints "Nan", which Prometheus accepts and this stricter parser does not.
    const m = new SwarmMetrics({
      config,
      process: "gateway",
      region: "ORD",
      defaultMetrics: false,
    });
    exercise(m);
    const base = await serve(m);
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const families = await parseExposition(await res.text());

    const coherence = family(families, "moe_swarm_expert_coherence_time_seconds");
    assert.equal(coherence.type, "histogram");
    const sample = coherence.data[0] as PromHistogramData;
    // The spec's 10 ns … 10 µs buckets, in seconds, come first and all of them are there; the
    // buckets above them reach 10 s, because measured coherence times are milliseconds.
    // (Sorted: the parser returns the buckets as an object, whose integer keys such as "10" come first.)
    const bounds = Object.keys(sample.buckets)
      .map((k) => (k === "+Inf" ? Number.POSITIVE_INFINITY : Number(k)))
      .sort((a, b) => a - b);
    assert.deepEqual(bounds.slice(0, 7), [1e-8, 5e-8, 1e-7, 5e-7, 1e-6, 5e-6, 1e-5]);
    assert.deepEqual(bounds.slice(7), [
      5e-5,
      1e-4,
      5e-4,
      1e-3,
      5e-3,
      1e-2,
      5e-2,
      0.1,
      0.5,
      1,
      5,
      10,
      Number.POSITIVE_INFINITY,
    ]);
    assert.equal(sample.buckets["1e-8"], 0);
    assert.equal(sample.buckets["5e-8"], 1); // 42 ns
    assert.equal(sample.buckets["0.1"], 1); // 0.5 s is above 0.1 s …
    assert.equal(sample.buckets["0.5"], 2); // … and within 0.5 s
    assert.equal(sample.buckets["10"], 2);
    assert.equal(sample.buckets["+Inf"], 3); // 30 s
    assert.equal(sample.count, 3);
    assert.match(coherence.help, /measured times are milliseconds/);
    assert.deepEqual(sample.labels, { process: "gateway", region: "ORD" });

    const fidelity = family(families, "moe_swarm_gradient_entanglement_fidelity_ratio");
    assert.equal(fidelity.type, "gauge");
    assert.ok(Math.abs((fidelity.data[0] as PromData).value - Math.SQRT1_2) < 1e-12);

    const rounds = family(families, "moe_swarm_consensus_rounds_total");
    assert.equal(rounds.type, "counter");
    assert.equal(rounds.data.length, 1);
    const round = rounds.data[0] as PromData;
    assert.deepEqual(round.labels, {
      process: "gateway",
      region: "ORD",
      gpu_type: "a100-80gb",
      algorithm: "hotstuff_2chain",
    });
    assert.equal(round.value, 2);

    const expected: [string, string, string[]][] = [
      ["moe_swarm_requests_total", "counter", ["route", "status"]],
      ["moe_swarm_request_duration_seconds", "histogram", ["route"]],
      ["moe_swarm_tokens_total", "counter", ["kind"]],
      ["moe_swarm_expert_activations_total", "counter", ["tier", "layer", "expert"]],
      ["moe_swarm_expert_dropped_tokens_total", "counter", ["tier", "layer"]],
      ["moe_swarm_expert_call_duration_seconds", "histogram", ["region", "outcome"]],
      ["moe_swarm_replica_failovers_total", "counter", ["tier", "reason"]],
      ["moe_swarm_hedged_requests_total", "counter", ["tier"]],
      ["moe_swarm_node_up", "gauge", ["node", "node_region"]],
      ["moe_swarm_node_experts", "gauge", ["node", "node_region"]],
      ["moe_swarm_region_link_rtt_seconds", "gauge", ["source_region", "target_region"]],
      ["moe_swarm_consensus_view", "gauge", []],
      ["moe_swarm_consensus_height", "gauge", []],
      ["moe_swarm_consensus_commit_latency_seconds", "histogram", ["since"]],
      ["moe_swarm_checkpoint_size_bytes", "gauge", ["level"]],
      ["moe_swarm_checkpoints_total", "counter", ["level"]],
      ["moe_swarm_training_loss", "gauge", []],
      ["moe_swarm_training_steps_total", "counter", []],
      ["moe_swarm_canary_traffic_ratio", "gauge", []],
      ["moe_swarm_events_total", "counter", ["kind"]],
    ];
    for (const [name, type, labels] of expected) {
      const f = family(families, name);
      assert.equal(f.type, type, name);
      assert.ok(f.data.length > 0, `${name} has a sample`);
      for (const label of [...labels, "process"]) {
        assert.ok(f.data[0]?.labels[label] !== undefined, `${name}{${label}}`);
      }
    }
    const activations = family(families, "moe_swarm_expert_activations_total");
    assert.deepEqual(
      (activations.data as PromData[]).map((s) => [s.labels.expert, s.value]),
      [
        ["0", 3],
        ["2", 5],
      ],
    );
    assert.equal(activations.data[0]?.labels.tier, "Sensory Cortex");
    const requests = family(families, "moe_swarm_request_duration_seconds");
    assert.equal((requests.data[0] as PromHistogramData).count, 2);

    // Naming conventions for everything we define.
    for (const [name, f] of Object.entries(families)) {
      if (!name.startsWith("moe_swarm_")) continue;
      if (f.type === "counter") assert.match(name, /_total$/, name);
      if (f.type === "histogram") assert.match(name, /_(seconds|bytes)$/, name);
      assert.doesNotMatch(name, /milli|micro|nano/, `${name} uses a base unit`);
    }
    const withRuntime = new SwarmMetrics({ config, process: "gateway" });
    assert.match(
      await withRuntime.exposition(),
      /^process_cpu_seconds_total\{process="gateway"\} /m,
    );
  });

  it("answers 405 to a POST and 404 elsewhere, and the server keeps running", async () => {
    const { config } = loadConfig();
    const base = await serve(new SwarmMetrics({ config, process: "p", defaultMetrics: false }));
    assert.equal((await fetch(`${base}/metrics`, { method: "POST", body: "x" })).status, 405);
    assert.equal((await fetch(`${base}/nope`)).status, 404);
    assert.equal((await fetch(`${base}/metrics`)).status, 200);
  });

  it("builds the production example's custom metrics the same way", () => {
    const { config } = resolveConfig({ profile: "production" });
    const m = new SwarmMetrics({ config, process: "p", defaultMetrics: false });
    for (const c of config.metrics.custom_metrics) assert.ok(m.custom(c.name), c.name);
    assert.equal(
      customMetricName({ name: "swarm_consensus_rounds", type: "counter" }),
      "moe_swarm_consensus_rounds_total",
    );
    assert.equal(
      customMetricName({ name: "queue_delay", type: "histogram", unit: "milliseconds" }),
      "moe_swarm_queue_delay_seconds",
    );
  });

  it("rejects a custom metric the exporter cannot build, naming the key", () => {
    const bad = (custom: unknown[]) => {
      const { config } = resolveConfig({ metrics: { exporters: [], custom_metrics: custom } });
      return () => new SwarmMetrics({ config, process: "p", defaultMetrics: false });
    };
    assert.throws(bad([{ name: "x", type: "gauge", buckets: [1] }]), (e: unknown) => {
      assert.ok(e instanceof MetricsConfigError);
      assert.match(e.message, /metrics\.custom_metrics\[0\]\.buckets/);
      return true;
    });
    assert.throws(
      bad([{ name: "gradient_entanglement_fidelity", type: "counter" }]),
      /custom_metrics\[0\]\.type: the spec's gradient_entanglement_fidelity is a gauge/,
    );
    assert.throws(
      bad([{ name: "swarm_consensus_rounds", type: "counter", labels: ["zone"] }]),
      /custom_metrics\[0\]\.labels/,
    );
    // Without the spec metrics in the config they are still built from the spec's definition.
    const { config } = resolveConfig({ metrics: { exporters: [], custom_metrics: [] } });
    const m = new SwarmMetrics({ config, process: "p", defaultMetrics: false });
    assert.ok(m.custom("expert_coherence_time"));
  });

  it("fidelity says no data (NaN, the dashboard n/a) until a gradient is recorded, not 0 or 1", async () => {
    const { config } = loadConfig();
    const m = new SwarmMetrics({ config, process: "p", defaultMetrics: false });
    const text = await m.exposition();
    assert.match(text, /^moe_swarm_gradient_entanglement_fidelity_ratio\{process="p"\} NaN$/m);
    const parsed = await parseExposition(text);
    assert.equal(parsed.moe_swarm_gradient_entanglement_fidelity_ratio?.type, "gauge");
    assert.equal(m.snapshot().gradientFidelity, null);
    m.recordGradientFidelity([1, 0], [1, 1]);
    assert.match(
      await m.exposition(),
      /^moe_swarm_gradient_entanglement_fidelity_ratio\{process="p"\} 0\.7071/m,
    );
  });

  it("computes fidelity as the cosine of the two gradients", () => {
    const { config } = loadConfig();
    const m = new SwarmMetrics({ config, process: "p", defaultMetrics: false });
    assert.equal(m.recordGradientFidelity([1, 2, 3], [2, 4, 6]), 1);
    assert.equal(m.recordGradientFidelity([1, 0], [-1, 0]), -1);
    assert.equal(m.recordGradientFidelity([1, 0], [0, 1]), 0);
    assert.equal(m.recordGradientFidelity([0, 0], [0, 0]), 1);
    assert.equal(m.recordGradientFidelity([0, 0], [1, 0]), 0);
    assert.throws(() => m.recordGradientFidelity([1], [1, 2]), RangeError);
    assert.equal(m.snapshot().gradientFidelity, 0);
  });
});

describe("DashboardState", () => {
  it("gives exact p50/p99 and rate over the recent window from an injected clock", () => {
    let now = 1_000_000;
    const { config } = loadConfig();
    const m = new SwarmMetrics({ config, process: "p", defaultMetrics: false, now: () => now });
    for (let i = 1; i <= 100; i++) m.recordRequest("/r", 200, i / 1000);
    const s = m.snapshot();
    assert.equal(s.requests.p50Seconds, 0.05);
    assert.equal(s.requests.p99Seconds, 0.099);
    assert.equal(s.requests.ratePerSecond, 10); // 100 requests in the 10 s window
    now += 11_000; // all samples age out
    const later = m.snapshot();
    assert.equal(later.requests.p50Seconds, null);
    assert.equal(later.requests.ratePerSecond, 0);
    assert.equal(later.requests.total, 100);
  });

  it("keeps the loss curve bounded while spanning the whole run", () => {
    const { config } = loadConfig();
    const m = new SwarmMetrics({ config, process: "p", defaultMetrics: false });
    for (let step = 1; step <= 10_000; step++) m.recordTrainingStep(step, 10 / step);
    const loss = m.snapshot().loss;
    assert.ok(loss.length <= 512 && loss.length >= 256, `${loss.length} points`);
    assert.equal(loss[0]?.step, 1);
    assert.ok((loss.at(-1)?.step ?? 0) > 9_000);
  });

  it("emits view-change, failover and node events, and refuses a view going back", () => {
    const { config } = loadConfig();
    const m = new SwarmMetrics({ config, process: "p", defaultMetrics: false });
    const seen: string[] = [];
    m.onEvent((e) => seen.push(e.kind));
    m.setConsensusStatus({ leader: "ORD", view: 1, height: 1 });
    m.setConsensusStatus({ leader: "IAD", view: 2, height: 1 });
    m.setNodeHealth({ id: "n", region: "SYD", up: true, experts: [] });
    m.setNodeHealth({ id: "n", region: "SYD", up: false, experts: [] });
    m.recordFailover({ layer: 1, expert: 0, from: "a", to: "b", reason: "error" });
    assert.deepEqual(seen, ["view_change", "node_down", "failover"]);
    assert.equal(m.snapshot().consensus?.leader, "IAD");
    assert.throws(
      () => m.setConsensusStatus({ leader: "ORD", view: 1, height: 2 }),
      InvariantError,
    );
  });
});

describe("SwarmRecorder", () => {
  it("turns cumulative routing, dispatch, consensus and API counters into increments", async () => {
    const { config } = loadConfig();
    const m = new SwarmMetrics({
      config,
      process: "gateway",
      region: "ORD",
      defaultMetrics: false,
    });
    const events: string[] = [];
    m.onEvent((e) => events.push(`${e.kind}: ${e.message}`));
    const r = new SwarmRecorder(m);
    r.recordRouting([{ layer: 0, admitted: [1, 2, 0], droppedTokens: 1 }]);
    r.recordRouting([{ layer: 0, admitted: [4, 2, 1], droppedTokens: 1 }]);
    const iad = { nodeId: "IAD-0", region: "IAD", healthy: true, latencyMsP50: 20 };
    const ord = { nodeId: "ORD-0", region: "ORD", healthy: true, latencyMsP50: 1 };
    r.recordDispatch({ failovers: 0, hedges: 0 }, [iad, ord], "ORD", (id) => [`${id}:L0.E1`]);
    r.recordDispatch({ failovers: 2, hedges: 1 }, [{ ...iad, healthy: false }, ord], "ORD");
    r.recordConsensus(
      { view: 3, committedHeight: 10, leaderRegion: "ORD", roundsTotal: 12 },
      { region: "ORD", gpuType: "a100-80gb", algorithm: "hotstuff_2chain" },
    );
    r.recordConsensus(
      { view: 4, committedHeight: 11, leaderRegion: "IAD", roundsTotal: 15 },
      { region: "ORD", gpuType: "a100-80gb", algorithm: "hotstuff_2chain" },
    );
    r.recordApi({ completionTokens: 5 });
    r.recordApi({ completionTokens: 9 });
    const f = await parseExposition(await m.exposition());
    const samples = (name: string) => (f[name]?.data ?? []) as PromData[];
    const activations = samples("moe_swarm_expert_activations_total").map((d) => [
      d.labels.expert,
      d.value,
    ]);
    assert.deepEqual(activations, [
      ["0", 4],
      ["1", 2],
      ["2", 1],
    ]);
    assert.equal(samples("moe_swarm_expert_dropped_tokens_total")[0]?.value, 1);
    assert.equal(samples("moe_swarm_replica_failovers_total")[0]?.value, 2);
    assert.equal(samples("moe_swarm_consensus_rounds_total")[0]?.value, 15);
    assert.equal(samples("moe_swarm_tokens_total")[0]?.value, 9);
    const s = m.snapshot();
    assert.equal(s.consensus?.leader, "IAD");
    assert.equal(s.consensus?.height, 11);
    assert.equal(s.links.find((l) => l.a === "IAD" && l.b === "ORD")?.measuredRttSeconds, 0.02);
    assert.equal(s.nodes.find((n) => n.id === "IAD-0")?.up, false);
    assert.deepEqual(s.tiers[0]?.activations[0]?.slice(0, 3), [4, 2, 1]);
    assert.deepEqual(events, [
      "failover: 2 expert calls failed over to another replica",
      "node_down: IAD-0 (IAD) is down",
      "view_change: view 3 → 4, leader IAD",
    ]);
  });
});
