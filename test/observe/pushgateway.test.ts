import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";
import { loadConfig, resolveConfig } from "../../src/config/load.ts";
import { SwarmMetrics } from "../../src/observe/metrics.ts";
import { PushLoop, pushTargetFromConfig } from "../../src/observe/pushgateway.ts";
import { parseExposition } from "./exposition.ts";

const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
});

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A fake Pushgateway on 127.0.0.1 that fails the first `failures` pushes with 503. */
async function fakeGateway(failures: number) {
  const received: { method: string; url: string; body: string }[] = [];
  let seen = 0;
  const server = createServer((req: IncomingMessage, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (c: string) => {
      body += c;
    });
    req.on("end", () => {
      seen++;
      if (seen <= failures) {
        res.writeHead(503).end("overloaded");
        return;
      }
      received.push({ method: req.method ?? "", url: req.url ?? "", body });
      res.writeHead(200).end();
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, received };
}

describe("Pushgateway push loop", () => {
  it("reads the target from the spec's prometheus exporter", () => {
    const { config } = resolveConfig({ profile: "production" });
    assert.deepEqual(pushTargetFromConfig(config), {
      url: "https://metrics.fly.io/v1/push",
      intervalSeconds: 15,
    });
    const none = resolveConfig({ metrics: { exporters: [], custom_metrics: [] } }).config;
    assert.equal(pushTargetFromConfig(none), null);
  });

  it("retries failed pushes with backoff, then pushes the registry with PUT", async () => {
    const gw = await fakeGateway(2);
    const { config } = loadConfig();
    const metrics = new SwarmMetrics({ config, process: "node-AMS-0", defaultMetrics: false });
    metrics.recordConsensusRound({ region: "AMS", gpuType: "a10", algorithm: "hotstuff_2chain" });
    const logs: string[] = [];
    const loop = new PushLoop({
      target: { url: gw.url, intervalSeconds: 60 },
      metrics,
      log: (m) => logs.push(m),
      retryDelaySecondsMin: 0.01,
      retryDelaySecondsMax: 0.05,
    });
    loop.start();
    await waitFor(() => loop.stats.pushes === 1, 5000);
    await loop.stop();
    assert.equal(loop.stats.failures, 2);
    assert.equal(loop.stats.consecutiveFailures, 0);
    assert.equal(logs.length, 3);
    assert.match(logs[0] ?? "", /push failed \(push failed with status 503.*retry 1 in/);
    assert.match(logs[2] ?? "", /succeeded after 2 failures/);
    const push = gw.received[0];
    assert.equal(push?.method, "PUT");
    assert.equal(push?.url, "/metrics/job/moe_swarm/instance/node-AMS-0");
    const families = await parseExposition(push?.body ?? "");
    assert.equal(families.moe_swarm_consensus_rounds_total?.type, "counter");
    assert.equal(
      families.moe_swarm_pushgateway_failures_total?.data[0]?.labels.process,
      "node-AMS-0",
    );
  });

  it("never throws when the gateway is unreachable, and its backoff is capped", async () => {
    // A port that was just closed: connections are refused.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const { config } = loadConfig();
    const metrics = new SwarmMetrics({ config, process: "p", defaultMetrics: false });
    const loop = new PushLoop({
      target: { url: `http://127.0.0.1:${port}`, intervalSeconds: 60 },
      metrics,
      log: () => {},
      retryDelaySecondsMin: 0.005,
      retryDelaySecondsMax: 0.02,
    });
    loop.start();
    await waitFor(() => loop.stats.failures >= 3, 5000);
    await loop.stop();
    assert.equal(loop.stats.pushes, 0);
    assert.match(loop.stats.lastError ?? "", /ECONNREFUSED/);
    for (let attempt = 1; attempt <= 40; attempt++) {
      const d = loop.retryDelaySeconds(attempt);
      assert.ok(d >= 0.0025 && d <= 0.02, `attempt ${attempt}: ${d}`);
    }
  });
});
