// `moe-swarm up` with the five BFT coordinators (the default, what `npm start` runs): the placement
// is published into the coordinators' replicated registry and the gateway reads it from there (a
// node registered by this test appears in the gateway's node list); /metrics counts consensus rounds
// for each coordinator (gpu_type "none"); the dashboard snapshot shows a leader and a growing
// committed height; kill -9 of the ORD coordinator leaves completions working and the view moves
// to a regional leader within a bounded time; the nodes register and heartbeat themselves, and
// kill -9 of a node gets it marked expired by the registry within its TTL (3 heartbeats), the
// placement view stops offering it and completions go on from the replicas; SIGTERM leaves no
// process behind.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { RegistryClient } from "../../src/consensus/client.ts";
import { RegistryPlacementView } from "../../src/consensus/placement-view.ts";
import type { RegistryState } from "../../src/consensus/registry.ts";
import { parseExposition } from "../observe/exposition.ts";
import { startUp } from "./fixtures/up-process.ts";

interface UpEvent {
  url: string;
  dashboard: string;
  metrics: string;
  nodePids: Record<string, number>;
  coordinators: Record<string, string>;
  coordinatorPids: Record<string, number>;
}

interface Snapshot {
  consensus: { leader: string; view: number; height: number } | null;
}

async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 20_000,
): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A process that has exited (or is a zombie waiting to be reaped) is not alive. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** "L1.E3" → { layer: 1, expert: 3 }. */
function parseExpert(key: string): { layer: number; expert: number } {
  const m = /^L(\d+)\.E(\d+)$/.exec(key);
  assert.ok(m, key);
  return { layer: Number(m[1]), expert: Number(m[2]) };
}

async function complete(url: string): Promise<string> {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: "moe-swarm-local",
      prompt: "Call me",
      max_tokens: 4,
      temperature: 0,
    }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = (await res.json()) as {
    choices: { text: string }[];
    usage: { completion_tokens: number };
  };
  assert.equal(body.usage.completion_tokens, 4);
  return body.choices[0]?.text ?? "";
}

/** Node heartbeat interval given to `up`; the registry's node TTL is 3 of them. */
const heartbeatMs = 1_000;

describe("moe-swarm up with the coordinators", { timeout: 180_000 }, () => {
  it("reads placement from the registry, shows live consensus, survives kill -9 of ORD, stops everything", async () => {
    const up = startUp<UpEvent>("moe-swarm-up-bft-", [
      "--regions",
      "ORD,IAD,SJC",
      "--backend",
      "js",
      "--node-heartbeat-ms",
      String(heartbeatMs),
    ]);
    let client: RegistryClient | undefined;
    let pids: number[] = [];
    try {
      const event = await up.event;
      pids = [...Object.values(event.coordinatorPids), ...Object.values(event.nodePids)];
      assert.deepEqual(Object.keys(event.coordinators), ["ORD", "IAD", "SJC", "AMS", "SYD"]);
      assert.equal(Object.keys(event.coordinatorPids).length, 5);
      const api = event.dashboard.replace(/\/$/, "");
      const text = await complete(api);

      // The registry holds the nodes (address = the node's wire port) and the placement.
      client = new RegistryClient({
        endpoints: Object.values(event.coordinators).map((e) => {
          const [host, port] = e.split(":");
          return { host: host as string, port: Number(port) };
        }),
        deadlineMs: 15_000,
      });
      const reg = await client.getRegistry();
      assert.ok(reg.ok);
      const state = reg.value as RegistryState;
      assert.deepEqual(Object.keys(state.nodes).sort(), ["IAD-0", "ORD-0", "SJC-0"]);
      assert.ok(Object.values(state.nodes).every((n) => n.gpuType && /:\d+$/.test(n.address)));
      assert.ok(Object.keys(state.placements).length > 0);
      for (const ids of Object.values(state.placements)) assert.equal(ids.length, 3);
      await waitFor("the human-readable lines", async () =>
        up.printed().includes("coordinators (BFT") ? true : undefined,
      );
      // The gateway reads the registry live: a node registered now shows up in its node list.
      const extra = await client.registerNode("AMS-7", "AMS", "a10", "127.0.0.1:1");
      assert.ok(extra.ok);
      await waitFor("the registry's new node in the gateway", async () => {
        await client?.heartbeat("AMS-7"); // it has no process that heartbeats: keep it unexpired
        const s = (await (await fetch(`${api}/v1/swarm`)).json()) as {
          swarm: { nodes: { nodeId: string }[] };
        };
        return s.swarm.nodes.some((n) => n.nodeId === "AMS-7") ? true : undefined;
      });

      // Rounds of every coordinator on the gateway's /metrics, labelled gpu_type="none".
      await waitFor("consensus rounds of all five coordinators", async () => {
        const f = await parseExposition(await (await fetch(event.metrics)).text());
        const data = (f.moe_swarm_consensus_rounds_total?.data ?? []) as {
          labels: Record<string, string>;
          value: number;
        }[];
        const regions = data
          .filter((d) => d.value > 0 && d.labels.gpu_type === "none")
          .map((d) => d.labels.region);
        return ["ORD", "IAD", "SJC", "AMS", "SYD"].every((r) => regions.includes(r))
          ? true
          : undefined;
      });
      // The dashboard: a leader and a committed height that grows with registry writes.
      const snap = async () =>
        ((await (await fetch(`${api}/api/snapshot`)).json()) as Snapshot).consensus;
      const first = await waitFor(
        "a consensus status on the dashboard",
        async () => (await snap()) ?? undefined,
      );
      assert.match(first.leader, /^(ORD|IAD|SJC|AMS|SYD)$/);
      assert.ok((await client.heartbeat("AMS-7")).ok);
      await waitFor("a higher committed height", async () => {
        const c = await snap();
        return c && c.height > first.height ? c : undefined;
      });

      // kill -9 of the ORD coordinator: completions go on, and the view moves to a regional leader.
      const before = (await snap()) as NonNullable<Snapshot["consensus"]>;
      process.kill(event.coordinatorPids.ORD as number, "SIGKILL");
      assert.equal(await complete(api), text, "same greedy text");
      assert.ok((await client.deregisterNode("AMS-7")).ok, "the registry still commits writes");
      // On a loaded machine the start can already have timed ORD out: then a regional leader holds
      // the view (for up to leaderTermRoundsMax rounds) and killing ORD changes no view.
      const after = await waitFor(
        "a view change away from ORD",
        async () => {
          const c = await snap();
          if (!c || c.leader === "ORD") return undefined;
          return before.leader !== "ORD" || c.view > before.view ? c : undefined;
        },
        30_000,
      );
      assert.notEqual(after.leader, "ORD");
      assert.equal(await complete(api), text);

      // The nodes registered and heartbeat by themselves (up does not do it for them): their
      // heartbeat times move on. kill -9 of one: the registry marks it expired within its TTL.
      const registry = async () => {
        const r = await (client as RegistryClient).getRegistry();
        assert.ok(r.ok);
        return r.value as RegistryState;
      };
      const beat0 = (await registry()).nodes["IAD-0"]?.lastHeartbeatMs ?? 0;
      await waitFor("a heartbeat from the IAD-0 process", async () =>
        ((await registry()).nodes["IAD-0"]?.lastHeartbeatMs ?? 0) > beat0 ? true : undefined,
      );
      const killedAt = Date.now();
      process.kill(event.nodePids["SJC-0"] as number, "SIGKILL");
      const expired = await waitFor(
        "SJC-0 marked expired by the registry",
        async () => {
          const n = (await registry()).nodes["SJC-0"];
          return n?.expiredAtMs !== undefined ? n : undefined;
        },
        30_000,
      );
      const ttlMs = 3 * heartbeatMs;
      // Expired at the first committed block past its TTL (block time, the leader's clock).
      assert.ok(
        expired.expiredAtMs !== undefined && expired.expiredAtMs > expired.lastHeartbeatMs + ttlMs,
      );
      process.stderr.write(
        `# SJC-0 seen expired ${Date.now() - killedAt} ms after kill -9 (TTL ${ttlMs} ms)\n`,
      );
      const view = new RegistryPlacementView(client);
      await view.refresh();
      assert.ok(view.expiredNodeIds().includes("SJC-0"));
      assert.ok(!view.nodes().some((n) => n.nodeId === "SJC-0"));
      assert.ok(
        Object.keys((await registry()).placements).every(
          (e) => !view.replicas(parseExpert(e)).some((n) => n.nodeId === "SJC-0"),
        ),
        "no expert is offered on the expired node",
      );
      assert.equal(await complete(api), text, "served from the other replicas");

      client.close();
      client = undefined;
      assert.equal(await up.terminate(), 0, up.stderrTail());
      await waitFor(
        "every coordinator and node process gone",
        async () => (pids.every((p) => !alive(p)) ? true : undefined),
        10_000,
      );
    } finally {
      client?.close();
      for (const p of pids) if (alive(p)) process.kill(p, "SIGKILL");
      up.cleanup();
    }
  });
});
