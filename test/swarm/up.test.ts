// `moe-swarm up` as a user runs it (a child process): it starts nodes and the gateway, prints the
// URL, serves the official openai client, and on SIGTERM stops every child it started. With
// observability wired in: the printed dashboard URL serves the page, `/metrics` (gateway and each
// node) parses with every spec metric, `/live` streams snapshots that count the request, and one
// trace holds spans of the gateway and of a node process (exported over OTLP to the gateway); a
// kill -9 of the nearest node is served by the replicas and reported as an event on the feed.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { describe, it } from "node:test";
import OpenAI from "openai";
import { WebSocket } from "ws";
import { parseExposition } from "../observe/exposition.ts";
import { startUp } from "./fixtures/up-process.ts";

interface UpEvent {
  url: string;
  nodes: number;
  dashboard: string;
  metrics: string;
  live: string;
  nodeMetrics: Record<string, string | null>;
  nodePids: Record<string, number | null>;
}

const specMetrics: [string, string][] = [
  ["moe_swarm_expert_coherence_time_seconds", "histogram"],
  ["moe_swarm_gradient_entanglement_fidelity_ratio", "gauge"],
  ["moe_swarm_consensus_rounds_total", "counter"],
];

async function assertSpecMetrics(url: string): Promise<void> {
  const res = await fetch(url);
  assert.equal(res.status, 200, url);
  const families = await parseExposition(await res.text());
  for (const [name, type] of specMetrics)
    assert.equal(families[name]?.type, type, `${url}: ${name}`);
}

/** The first live-feed message whose snapshot satisfies `ok` (the feed sends one per tick). */
function liveMessage(url: string, ok: (m: { snapshot: unknown }) => boolean): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`no matching live-feed message from ${url} in 10 s`));
    }, 10_000);
    ws.on("message", (data) => {
      const m = JSON.parse(String(data)) as { type: string; snapshot: unknown };
      if (m.type === "update" && ok(m)) {
        clearTimeout(timer);
        ws.close();
        resolve(m.snapshot);
      }
    });
    ws.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** Collects live-feed events until one satisfies `ok`. */
function liveEvent(
  url: string,
  ok: (e: { kind: string; message: string }) => boolean,
): { opened: Promise<void>; found: Promise<{ kind: string; message: string }> } {
  const ws = new WebSocket(url);
  const opened = new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  const found = new Promise<{ kind: string; message: string }>((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`no matching live-feed event from ${url} in 15 s`));
    }, 15_000);
    ws.on("message", (data) => {
      const m = JSON.parse(String(data)) as { events?: { kind: string; message: string }[] };
      const e = m.events?.find(ok);
      if (e) {
        clearTimeout(timer);
        ws.close();
        resolve(e);
      }
    });
  });
  return { opened, found };
}

async function waitFor(what: string, condition: () => Promise<boolean>, timeoutMs = 15_000) {
  const until = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

describe("moe-swarm up", { timeout: 120_000 }, () => {
  it("brings up nodes and gateway, serves completions, and stops every child on SIGTERM", async () => {
    const up = startUp<UpEvent>("moe-swarm-up-", [
      "--regions",
      "ORD,IAD,SJC",
      "--backend",
      "js",
      // The static placement file (the coordinators: test/swarm/up-coordinators.test.ts).
      "--no-coordinators",
    ]);
    try {
      const event = await up.event;
      assert.equal(event.nodes, 3);
      const client = new OpenAI({ baseURL: `${event.url}/v1`, apiKey: "unused", maxRetries: 0 });
      const r = await client.completions.create({
        model: "moe-swarm-local",
        prompt: "Call me",
        max_tokens: 5,
        temperature: 0,
      });
      assert.equal(r.usage?.completion_tokens, 5);

      // The dashboard on the same port as the API, at the printed URL.
      assert.equal(new URL(event.dashboard).port, new URL(event.url).port);
      await waitFor("the human-readable lines", async () => up.printed().includes("dashboard: "));
      assert.ok(up.printed().includes(event.dashboard), up.printed());
      const page = await fetch(event.dashboard);
      assert.equal(page.status, 200);
      assert.match(page.headers.get("content-type") ?? "", /text\/html/);
      assert.match(await page.text(), /dashboard\.js/);
      await assertSpecMetrics(event.metrics);
      const gatewayMetrics = await (await fetch(event.metrics)).text();
      assert.match(
        gatewayMetrics,
        /moe_swarm_request_duration_seconds_count\{[^}]*route="\/v1\/completions"/,
      );
      assert.equal(Object.keys(event.nodeMetrics).length, 3);
      for (const url of Object.values(event.nodeMetrics)) {
        assert.ok(url, "every node prints its /metrics URL");
        await assertSpecMetrics(url);
      }
      // The live feed: a snapshot that has counted the completion.
      const snapshot = (await liveMessage(event.live, (m) => {
        const s = m.snapshot as { requests?: { total?: number } };
        return (s.requests?.total ?? 0) >= 1;
      })) as { nodes: unknown[] };
      assert.ok(Array.isArray(snapshot.nodes));
      // One trace across processes: the node spans arrive over OTLP at the gateway.
      await waitFor("a trace with a node process's spans", async () => {
        const res = await fetch(`${event.dashboard.replace(/\/$/, "")}/api/traces?limit=50`);
        const body = (await res.json()) as { traces: { services: string[] }[] };
        return body.traces.some(
          (t) => t.services.includes("gateway") && t.services.some((s) => /^[A-Z]{3}-0$/.test(s)),
        );
      });
      // kill -9 of a node while the dashboard's feed is open: the next request fails over to a
      // replica, and the feed reports it.
      const victim = "ORD-0"; // the gateway's region: the replica every read prefers
      const pid = event.nodePids[victim];
      assert.ok(pid, "every node prints its process id");
      const feed = liveEvent(event.live, (e) => e.kind === "failover" || e.kind === "node_down");
      await feed.opened;
      process.kill(pid, "SIGKILL");
      const again = await client.completions.create({
        model: "moe-swarm-local",
        prompt: "Call me",
        max_tokens: 5,
        temperature: 0,
      });
      assert.deepEqual(
        again.choices[0]?.text,
        r.choices[0]?.text,
        "same greedy text from the replicas",
      );
      const reported = await feed.found;
      assert.match(reported.message, new RegExp(victim));
      // A node that no request needs (SJC-0: every read prefers ORD, then IAD) is found down by
      // the gateway's health probe and reported too.
      const idle = "SJC-0";
      const down = liveEvent(event.live, (e) => e.kind === "node_down" && e.message.includes(idle));
      await down.opened;
      process.kill(event.nodePids[idle] as number, "SIGKILL");
      assert.match((await down.found).message, /SJC-0 \(SJC\) is down/);
      const placement = JSON.parse(readFileSync(join(up.dir, "placement.json"), "utf8")) as {
        nodes: { nodeId: string; port: number }[];
      };
      const ports = placement.nodes.map((n) => n.port);
      for (const n of placement.nodes)
        if (n.nodeId !== victim && n.nodeId !== idle)
          assert.ok(await portOpen(n.port), `node port ${n.port} open while up`);
      assert.equal(await up.terminate(), 0, up.stderrTail());
      for (const p of ports)
        assert.equal(await portOpen(p), false, `node port ${p} closed after SIGTERM`);
      assert.equal(await portOpen(Number(new URL(event.url).port)), false, "gateway closed");
    } finally {
      up.cleanup();
    }
  });
});
