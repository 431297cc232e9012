// State transfer with five real coordinator processes (ML-DSA-65, fsynced WALs): one coordinator
// is killed, the others commit far more blocks than they keep (--retain-blocks 4, checkpoints every
// 4 blocks), and the restarted one catches up by a checkpoint snapshot certified by f + 1 signatures
// to the same committed height and the same registry digest as the others.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { RegistryClient } from "../../src/consensus/client.ts";
import { LocalCoordinatorCluster } from "../../src/consensus/local-cluster.ts";

const portBase = 21_000 + 20 * Math.floor(Math.random() * 500);
const dir = mkdtempSync(join(tmpdir(), "moe-coord-sync-"));
const retainBlocks = 4;
const cluster = new LocalCoordinatorCluster({
  dataDir: dir,
  portBase,
  configPath: join(dir, "swarm.yaml"),
  chainId: "state-sync-live",
  coordinatorArgs: ["--retain-blocks", String(retainBlocks), "--snapshot-every", "4"],
  startTimeoutMs: 60_000, // key handshakes of five processes are slow on a loaded 2-core machine
});
const syd = 4;

interface Status {
  committedHeight: number;
  committedBlockId: string;
  registryDigest: string;
  stateSync: { snapshotsInstalled: number; certifiedCheckpointHeight: number };
}

async function statusOf(c: RegistryClient, i: number): Promise<Status> {
  // A generous answer time: on a loaded 2-core machine a replica verifying ML-DSA signatures or
  // installing a snapshot can take seconds to answer a status query.
  return (await c.status(i, 10_000)) as unknown as Status;
}

describe("state transfer between coordinator processes", { timeout: 120_000 }, () => {
  before(async () => {
    writeFileSync(
      join(dir, "swarm.yaml"),
      'profile: local\nconsensus:\n  view_timeout: "400ms"\nswarm:\n  emulation:\n    enabled: false\n',
    );
    await cluster.start();
  });

  after(async () => {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a coordinator restarted after the others truncated past it catches up to the same height and state", async () => {
    const clients = [0, 1, 2, 3].map((k) =>
      cluster.client({ clientId: `sync-load-${k}`, retryMs: 500, deadlineMs: 40_000 }),
    );
    const probe = cluster.client({ clientId: "sync-probe", retryMs: 500, deadlineMs: 20_000 });
    try {
      await Promise.all(
        clients.map((c, k) => c.registerNode(`n${k}`, "ORD", "a10", `127.0.0.1:${9000 + k}`)),
      );
      cluster.kill(syd);
      const atKill = (await statusOf(probe, 0)).committedHeight;
      // Commit well past what the others keep: blocks [atKill, atKill + 3 · retain].
      let stop = false;
      const load = clients.map(async (c, k) => {
        for (let op = 0; !stop; op++)
          assert.deepEqual(await c.setPlacement(`L${k}.E${op}`, [`n${k}`]), { ok: true });
      });
      const target = atKill + 3 * retainBlocks;
      while ((await statusOf(probe, 0)).committedHeight < target)
        await new Promise((r) => setTimeout(r, 100));
      stop = true;
      await Promise.all(load);

      await cluster.startReplica(syd);
      const restartedAt = Date.now();
      // A little more traffic, so the restarted replica hears of certified blocks above it.
      for (let k = 0; k < 3; k++)
        assert.deepEqual(await clients[0]?.setPlacement(`L9.E${k}`, ["n0"]), { ok: true });
      let ord = await statusOf(probe, 0);
      let caught = await statusOf(probe, syd);
      const deadline = Date.now() + 30_000;
      while (
        (caught.committedHeight !== ord.committedHeight ||
          caught.registryDigest !== ord.registryDigest) &&
        Date.now() < deadline
      ) {
        await new Promise((r) => setTimeout(r, 200));
        ord = await statusOf(probe, 0);
        caught = await statusOf(probe, syd);
      }
      process.stderr.write(
        `# SYD at height ${caught.committedHeight} (${caught.stateSync.snapshotsInstalled} snapshot(s) installed) ${Date.now() - restartedAt} ms after it listened again\n`,
      );
      assert.ok(ord.committedHeight >= target, `ORD at ${ord.committedHeight} < ${target}`);
      assert.equal(caught.committedHeight, ord.committedHeight);
      assert.equal(caught.committedBlockId, ord.committedBlockId);
      assert.equal(caught.registryDigest, ord.registryDigest);
      assert.ok(
        caught.stateSync.snapshotsInstalled >= 1,
        `SYD installed ${caught.stateSync.snapshotsInstalled} snapshots`,
      );
      assert.ok(caught.stateSync.certifiedCheckpointHeight > atKill);
      // And it takes part again: a write acknowledged after the catch-up is in its registry.
      assert.deepEqual(await probe.setPlacement("L8.E0", ["n1"]), { ok: true });
    } finally {
      for (const c of clients) c.close();
      probe.close();
    }
  });
});
