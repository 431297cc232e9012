// Five real coordinator processes on 127.0.0.1 (ML-DSA-65 signatures, hybrid ML-KEM-768 + X25519
// links, fsynced WALs). Under client load the leader is killed with SIGKILL; no acknowledged write
// may be lost, another coordinator must take the lead and commits must go on. Then the killed
// replica restarts from its WAL and catches up.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { RegistryClient } from "../../src/consensus/client.ts";
import { LocalCoordinatorCluster } from "../../src/consensus/local-cluster.ts";
import { publishPlacement, RegistryPlacementView } from "../../src/consensus/placement-view.ts";

// Below the ephemeral port range (32768+), so outgoing connections cannot hold our ports.
const portBase = 21_000 + 20 * Math.floor(Math.random() * 500);
const dir = mkdtempSync(join(tmpdir(), "moe-coord-live-"));
const cluster = new LocalCoordinatorCluster({
  dataDir: dir,
  portBase,
  configPath: join(dir, "swarm.yaml"),
  chainId: "live-test",
});

function newClient(name: string): RegistryClient {
  return cluster.client({ clientId: name, retryMs: 500, deadlineMs: 40_000 });
}

async function statusOf(c: RegistryClient, i: number) {
  return (await c.status(i)) as {
    view: number;
    leader: number;
    committedHeight: number;
    leaderRegion: string;
  };
}

describe("five coordinator processes on loopback", { timeout: 150_000 }, () => {
  before(async () => {
    writeFileSync(
      join(dir, "swarm.yaml"),
      'profile: local\nconsensus:\n  view_timeout: "400ms"\nswarm:\n  emulation:\n    enabled: false\n',
    );
    await cluster.start();
  });

  after(() => {
    cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("survives kill -9 of the leader under load without losing an acknowledged write", async () => {
    const clients = [0, 1, 2, 3].map((c) => newClient(`load-${c}`));
    const probe = newClient("probe");
    const acked = new Map<string, string[]>();
    try {
      await Promise.all(
        clients.map((c, k) => c.registerNode(`n${k}`, "ORD", "a10", `127.0.0.1:${9000 + k}`)),
      );
      let stop = false;
      let written = 0;
      const load = clients.map(async (c, k) => {
        for (let op = 0; !stop; op++) {
          const expert = `L${k}.E${op}`;
          const nodes = [`n${k}`, `n${(k + 1) % 4}`];
          const r = await c.setPlacement(expert, nodes);
          assert.deepEqual(r, { ok: true });
          acked.set(expert, nodes);
          written += 1;
        }
      });
      while (written < 20) await new Promise((r) => setTimeout(r, 50));
      const before = await statusOf(probe, 1);
      const leader = before.leader;
      cluster.kill(leader);
      const writtenAtKill = written;
      // The cluster must elect another leader and keep committing the clients' writes.
      const deadline = Date.now() + 60_000;
      while (written < writtenAtKill + 20 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
      stop = true;
      await Promise.all(load);
      assert.ok(written >= writtenAtKill + 20, `writes after the kill: ${written - writtenAtKill}`);
      const survivor = leader === 1 ? 2 : 1;
      const afterKill = await statusOf(probe, survivor);
      assert.ok(afterKill.view > before.view, `view ${before.view} → ${afterKill.view}`);
      assert.notEqual(afterKill.leader, leader);
      assert.ok(afterKill.committedHeight > before.committedHeight);

      // Every acknowledged write is in the registry, read linearizably through consensus.
      const reg = await probe.getRegistry();
      assert.equal(reg.ok, true);
      const placements = (reg as { value: { placements: Record<string, string[]> } }).value
        .placements;
      for (const [expert, nodes] of acked) assert.deepEqual(placements[expert], nodes, expert);

      // The killed replica restarts from its WAL and catches up with the others.
      await cluster.startReplica(leader);
      await probe.setPlacement("after-restart", ["n0"]);
      const target = (await statusOf(probe, survivor)).committedHeight;
      let restarted = await statusOf(probe, leader);
      const catchUp = Date.now() + 30_000;
      while (restarted.committedHeight < target && Date.now() < catchUp) {
        await probe.heartbeat("n0"); // keeps blocks coming so the restarted replica sees new QCs
        restarted = await statusOf(probe, leader);
      }
      assert.ok(
        restarted.committedHeight >= target,
        `restarted at ${restarted.committedHeight} < ${target}`,
      );
    } finally {
      for (const c of [...clients, probe]) c.close();
    }
  });

  it("serves the swarm's placement reads through RegistryPlacementView", async () => {
    const client = newClient("swarm-gateway");
    const view = new RegistryPlacementView(client, 100);
    try {
      await publishPlacement(client, [
        {
          nodeId: "ORD-0",
          region: "ORD",
          gpuType: "a10",
          host: "127.0.0.1",
          port: 9100,
          experts: [{ layer: 1, expert: 2 }],
        },
        {
          nodeId: "AMS-0",
          region: "AMS",
          gpuType: "l40s",
          host: "127.0.0.1",
          port: 9101,
          experts: [{ layer: 1, expert: 2 }],
        },
      ]);
      await view.start();
      assert.deepEqual(
        view.replicas({ layer: 1, expert: 2 }).map((n) => [n.nodeId, n.region, n.port]),
        [
          ["ORD-0", "ORD", 9100],
          ["AMS-0", "AMS", 9101],
        ],
      );
      assert.deepEqual(view.replicas({ layer: 9, expert: 9 }), []);
      await client.deregisterNode("AMS-0");
      await view.refresh();
      assert.deepEqual(
        view.replicas({ layer: 1, expert: 2 }).map((n) => n.nodeId),
        ["ORD-0"],
      );
    } finally {
      view.stop();
      client.close();
    }
  });
});
