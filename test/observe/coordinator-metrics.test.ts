// Coordinators expose /metrics (issue #8: every process does):
//   - unit: rejections map to a bounded set of reasons; commit latency is recorded per block
//     (since=proposal) and per request (since=request); status-derived gauges, rounds and WAL
//     fsyncs are read at each scrape and only grow;
//   - the consensus feed's commit figures for the dashboard: median of the coordinators' own
//     percentiles (one liar cannot move it), counts vouched by two coordinators;
//   - live: five real `moe-swarm coordinator` processes (LocalCoordinatorCluster, --metrics-port 0)
//     commit a few registry writes; every coordinator's /metrics parses with a Prometheus parser
//     and holds the spec's metrics, the commit-latency histogram with both `since` series fed,
//     rounds with gpu_type "none", the view and height, and WAL fsyncs.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { PromData, PromHistogramData, PromMetrics } from "prom2javascript";
import { loadConfig, resolveConfig } from "../../src/config/load.ts";
import { LocalCoordinatorCluster } from "../../src/consensus/local-cluster.ts";
import { leaderOf, regionsInLeaderOrder } from "../../src/consensus/types.ts";
import {
  CoordinatorMetrics,
  rejectReasonLabel,
  rejectReasons,
} from "../../src/observe/coordinator-metrics.ts";
import { SwarmMetrics } from "../../src/observe/metrics.ts";
import { SwarmRecorder } from "../../src/observe/swarm-recorder.ts";
import { ConsensusFeed, commitLatencySummary, median } from "../../src/swarm/consensus-feed.ts";
import { parseExposition } from "./exposition.ts";
import { evidenceStatusSource } from "./fixtures/evidence-statuses.ts";

function value(families: PromMetrics, name: string, labels: Record<string, string> = {}): number {
  const f = families[name];
  assert.ok(f, `${name} missing`);
  const s = f.data.find((d) => Object.entries(labels).every(([k, v]) => d.labels[k] === v));
  assert.ok(s, `${name}${JSON.stringify(labels)} missing`);
  return (s as PromData).value;
}

function histogram(families: PromMetrics, name: string, since: string): PromHistogramData {
  const s = families[name]?.data.find((d) => d.labels.since === since);
  assert.ok(s, `${name}{since="${since}"} missing`);
  return s as PromHistogramData;
}

describe("coordinator metrics", () => {
  it("classifies rejections, records commit latency both ways, reads status at each scrape", async () => {
    const { config } = loadConfig();
    let status = { view: 2, committedHeight: 5, leaderRegion: "SJC", roundsTotal: 7 };
    let fsyncs = 3;
    const m = new CoordinatorMetrics({
      config,
      region: "SJC",
      source: {
        status: () => status,
        walFsyncs: () => fsyncs,
        signatureBackend: () => "pqclean-native",
      },
    });
    for (const [text, label] of [
      ["proposal 1a2b3c4d has an invalid signature", "bad_signature"],
      ["vote by 3 relayed by 2", "relayed"],
      ["proposal for view 4 from non-leader 1", "not_leader"],
      ["timeout for future view 9", "future"],
      ["proposal timestamp 9000 ms ahead of this replica's clock", "clock"],
      ["mempool full (4096 requests)", "mempool_full"],
      ["malformed: bad frame", "malformed"],
      ["something new", "other"],
    ] as const) {
      assert.equal(rejectReasonLabel(text), label, text);
      assert.ok(rejectReasons.includes(label));
      m.event({ kind: "reject", reason: text });
    }
    m.event({ kind: "timeout" });
    m.event({ kind: "view-change" }); // counted from the status' view, not from the event
    m.committed({ timestampMs: 1_000 }, 1_250);
    m.committed({ timestampMs: 2_000 }, 1_990); // leader clock ahead: 0, not negative
    m.requestCommitted(400);
    let f = await parseExposition(await m.metrics.exposition());
    const proposal = histogram(f, "moe_swarm_consensus_commit_latency_seconds", "proposal");
    assert.equal(proposal.count, 2);
    assert.ok(Math.abs((proposal.sum ?? 0) - 0.25) < 1e-12);
    const request = histogram(f, "moe_swarm_consensus_commit_latency_seconds", "request");
    assert.equal(request.count, 1);
    assert.equal(request.sum, 0.4);
    assert.equal(value(f, "moe_swarm_consensus_rejected_messages_total", { reason: "relayed" }), 1);
    assert.equal(value(f, "moe_swarm_consensus_timeouts_total"), 1);
    assert.equal(value(f, "moe_swarm_consensus_view"), 2);
    assert.equal(value(f, "moe_swarm_consensus_height"), 5);
    assert.equal(value(f, "moe_swarm_consensus_wal_fsyncs_total"), 3);
    assert.equal(
      value(f, "moe_swarm_consensus_signature_backend_info", { backend: "pqclean-native" }),
      1,
    );
    const rounds = { region: "SJC", gpu_type: "none", algorithm: config.consensus.algorithm };
    assert.equal(value(f, "moe_swarm_consensus_rounds_total", rounds), 7);
    assert.equal(value(f, "moe_swarm_consensus_view_changes_total"), 0);
    // The replica moves on: the next scrape adds the differences.
    status = { view: 5, committedHeight: 9, leaderRegion: "ORD", roundsTotal: 12 };
    fsyncs = 10;
    f = await parseExposition(await m.metrics.exposition());
    assert.equal(value(f, "moe_swarm_consensus_rounds_total", rounds), 12);
    assert.equal(value(f, "moe_swarm_consensus_wal_fsyncs_total"), 10);
    assert.equal(value(f, "moe_swarm_consensus_view_changes_total"), 3);
    assert.equal(value(f, "moe_swarm_consensus_height"), 9);
  });

  it("pushes to the configured Pushgateway while served; a failed push is logged and retried", async () => {
    // A loopback Pushgateway stand-in that answers the first push 503, then accepts.
    const received: { method: string; url: string; body: string }[] = [];
    let seen = 0;
    const gateway = createServer((req, res) => {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (c: string) => {
        body += c;
      });
      req.on("end", () => {
        if (++seen === 1) {
          res.writeHead(503).end("overloaded");
          return;
        }
        received.push({ method: req.method ?? "", url: req.url ?? "", body });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => gateway.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`;
    const { config } = resolveConfig({
      profile: "production",
      metrics: {
        exporters: [{ type: "prometheus", endpoint: url, push_interval: "60s" }],
      },
    });
    const logs: string[] = [];
    const m = new CoordinatorMetrics({
      config,
      region: "AMS",
      source: {
        status: () => ({ view: 1, committedHeight: 42, leaderRegion: "ORD", roundsTotal: 9 }),
        walFsyncs: () => 4,
      },
      log: (line) => logs.push(line),
      pushRetryDelaySeconds: { min: 0.01, max: 0.05 },
    });
    assert.ok(m.push, "a push loop for the configured Pushgateway");
    assert.equal(m.push.stats.pushes, 0, "nothing pushed before serve");
    try {
      await m.serve("127.0.0.1", 0);
      const until = Date.now() + 10_000;
      while (received.length === 0 && Date.now() < until)
        await new Promise((r) => setTimeout(r, 10));
      assert.equal(received.length, 1);
      assert.equal(received[0]?.method, "PUT");
      assert.equal(received[0]?.url, "/metrics/job/moe_swarm/instance/coordinator-AMS");
      const families = await parseExposition(received[0]?.body ?? "");
      assert.equal(value(families, "moe_swarm_consensus_height"), 42);
      assert.equal(m.push.stats.failures, 1);
      assert.match(logs[0] ?? "", /push failed .*503.*retry 1 in/);
    } finally {
      await m.close();
      gateway.close();
    }
    // The local profile (tests, `npm start`) never pushes off the machine by default.
    const local = new CoordinatorMetrics({
      config: loadConfig().config,
      region: "AMS",
      source: {
        status: () => ({ view: 0, committedHeight: 0, leaderRegion: "ORD", roundsTotal: 0 }),
        walFsyncs: () => 0,
      },
    });
    assert.equal(local.push, null);
  });

  it("the dashboard's commit figures: a median one liar cannot move, counts two vouch for", () => {
    const honest = (p50: number, p99: number, blocks: number) => ({
      region: "ORD",
      view: 1,
      committedHeight: blocks,
      roundsTotal: blocks,
      blocksCommittedTotal: blocks,
      requestsCommittedTotal: blocks * 2,
      commitLatencyMsP50: p50,
      commitLatencyMsP99: p99,
    });
    const up = [
      honest(250, 400, 100),
      honest(260, 420, 99),
      honest(240, 390, 100),
      // A liar claims instant commits and a huge count.
      { ...honest(0.001, 0.001, 1e9) },
    ];
    const s = commitLatencySummary(up);
    assert.equal(s.p50Seconds, 0.245); // median of 0.001, 240, 250, 260 ms
    assert.equal(s.p99Seconds, 0.395);
    assert.equal(s.blocksCommitted, 100);
    assert.equal(s.requestsCommitted, 200);
    assert.equal(s.coordinatorsUp, 4);
    assert.equal(s.coordinators, 5);
    // No coordinator has committed a request yet: no latency, not zero.
    const idle = commitLatencySummary([
      { region: "ORD", view: 0, committedHeight: 0, roundsTotal: 0 },
      { region: "IAD", view: 0, committedHeight: 0, roundsTotal: 0 },
    ]);
    assert.equal(idle.p50Seconds, null);
    assert.equal(idle.blocksCommitted, 0);
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([]), undefined);
  });

  it("the gateway's consensus feed puts the commit figures in the dashboard snapshot", async () => {
    const { config } = loadConfig();
    const metrics = new SwarmMetrics({ config, process: "gateway", defaultMetrics: false });
    const status = (view: number, p50: number) => ({
      view,
      committedHeight: 40,
      roundsTotal: 41,
      blocksCommittedTotal: 40,
      requestsCommittedTotal: 35,
      commitLatencyMsP50: p50,
      commitLatencyMsP99: 2 * p50,
    });
    const answers = [status(3, 300), status(3, 310), status(3, 290), status(3, 305), "down"];
    const feed = new ConsensusFeed(
      {
        status: (i: number) => {
          const a = answers[i];
          return typeof a === "string"
            ? Promise.reject(new Error("connection refused"))
            : Promise.resolve(a as Record<string, unknown>);
        },
      },
      new SwarmRecorder(metrics),
      config.consensus.algorithm,
    );
    await feed.poll();
    const c = metrics.snapshot().consensus;
    assert.equal(c?.view, 3);
    assert.equal(c?.leader, regionsInLeaderOrder[leaderOf(3)]);
    assert.deepEqual(c?.commitLatency, {
      p50Seconds: 0.3025,
      p99Seconds: 0.605,
      blocksCommitted: 40,
      requestsCommitted: 35,
      coordinatorsUp: 4,
      coordinators: 5,
    });
  });

  it("the feed puts the coordinators' Byzantine evidence in the snapshot: reporters per accused, newest records, garbage left out", async () => {
    const { config } = loadConfig();
    const metrics = new SwarmMetrics({ config, process: "gateway", defaultMetrics: false });
    assert.equal(metrics.snapshot().evidence, null, "nothing before the first poll");
    const feed = new ConsensusFeed(
      evidenceStatusSource,
      new SwarmRecorder(metrics),
      config.consensus.algorithm,
    );
    await feed.poll();
    const e = metrics.snapshot().evidence;
    assert.ok(e);
    assert.equal(e.coordinatorsUp, 4);
    assert.deepEqual(
      e.against.map((a) => [a.region, a.reporters, a.countMax]),
      [
        ["ORD", 0, 0],
        ["IAD", 0, 0],
        ["SJC", 0, 0],
        ["AMS", 1, 1],
        ["SYD", 2, 2],
      ],
    );
    // Newest first; IAD's record against a replica that does not exist is dropped.
    assert.deepEqual(
      e.recent.map((r) => `${r.reporter}→${r.against} v${r.view}`),
      ["IAD→AMS v7", "ORD→SYD v6", "IAD→SYD v6", "ORD→SYD v6"],
    );
  });
});

// ---- five live coordinators ----------------------------------------------------------------------

// Below the ephemeral port range (32768+), so outgoing connections cannot hold our ports.
const portBase = 23_000 + 20 * Math.floor(Math.random() * 400);
const dir = mkdtempSync(join(tmpdir(), "moe-coord-metrics-"));
const cluster = new LocalCoordinatorCluster({
  dataDir: dir,
  portBase,
  configPath: join(dir, "swarm.yaml"),
  chainId: "metrics-test",
});

describe("five coordinator processes serve /metrics", { timeout: 120_000 }, () => {
  before(async () => {
    writeFileSync(
      join(dir, "swarm.yaml"),
      'profile: local\nconsensus:\n  view_timeout: "1s"\nswarm:\n  emulation:\n    enabled: false\n',
    );
    await cluster.start();
  });
  after(async () => {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("every coordinator's /metrics parses and shows its commits, rounds, view, height and fsyncs", async () => {
    const urls = cluster.metricsUrls();
    assert.deepEqual(Object.keys(urls).sort(), ["AMS", "IAD", "ORD", "SJC", "SYD"]);
    const client = cluster.client({ clientId: "metrics-test", deadlineMs: 60_000 });
    try {
      for (let k = 0; k < 4; k++)
        await client.registerNode(`n${k}`, "ORD", "a10", `127.0.0.1:${9000 + k}`);
    } finally {
      client.close();
    }
    const { config } = loadConfig(join(dir, "swarm.yaml"));
    let requestsSeen = 0;
    for (const [region, url] of Object.entries(urls)) {
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      // A replica learns of a commit one round after the leader: allow it a moment.
      let f: PromMetrics | undefined;
      const until = Date.now() + 20_000;
      for (;;) {
        const res = await fetch(url);
        assert.equal(res.status, 200);
        f = await parseExposition(await res.text());
        const p = f.moe_swarm_consensus_commit_latency_seconds?.data.find(
          (d) => d.labels.since === "proposal",
        ) as PromHistogramData | undefined;
        if ((p?.count ?? 0) > 0 || Date.now() > until) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      const proposal = histogram(f, "moe_swarm_consensus_commit_latency_seconds", "proposal");
      assert.ok(proposal.count > 0, `${region}: blocks committed`);
      const sum = proposal.sum ?? 0;
      assert.ok(sum > 0 && sum / proposal.count < 30, `${region}: latency`);
      requestsSeen += histogram(f, "moe_swarm_consensus_commit_latency_seconds", "request").count;
      assert.equal(f.moe_swarm_expert_coherence_time_seconds?.type, "histogram");
      assert.equal(f.moe_swarm_gradient_entanglement_fidelity_ratio?.type, "gauge");
      const rounds = value(f, "moe_swarm_consensus_rounds_total", {
        region,
        gpu_type: "none",
        algorithm: config.consensus.algorithm,
      });
      assert.ok(rounds > 0, `${region}: rounds`);
      assert.ok(value(f, "moe_swarm_consensus_height") >= 1, `${region}: height`);
      assert.ok(value(f, "moe_swarm_consensus_view") >= 0);
      assert.ok(value(f, "moe_swarm_consensus_wal_fsyncs_total") > 0, `${region}: fsyncs`);
      const backends = f.moe_swarm_consensus_signature_backend_info?.data ?? [];
      assert.equal(backends.length, 1, `${region}: one signature backend`);
      assert.ok(
        ["pqclean-native", "pqclean-wasm", "noble"].includes(backends[0]?.labels.backend ?? ""),
        `${region}: backend ${backends[0]?.labels.backend}`,
      );
      assert.equal(f.moe_swarm_consensus_height?.data[0]?.labels.process, `coordinator-${region}`);
    }
    // The client sent its 4 requests to some coordinator(s); each was timed from its arrival there.
    assert.ok(requestsSeen >= 4, `request → commit observations: ${requestsSeen}`);
  });
});
