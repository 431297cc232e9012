// Distributed training: the model's own Trainer with its experts on expert nodes (3 replicas each,
// forward/backward/update over the wire) follows the same loss curve as local training for the
// same seed, within float tolerance, and the replicas of every expert stay identical.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { parseConfigText } from "../../src/config/load.ts";
import { buildExpertHost, buildLocalModel, buildTrunk } from "../../src/model/build.ts";
import { loadModelInto, readModelFile } from "../../src/model/checkpoint.ts";
import { mobyDick, sampleBatch } from "../../src/model/dataset.ts";
import type { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import { Trainer } from "../../src/model/trainer.ts";
import { ExpertNode } from "../../src/swarm/expert-node.ts";
import { planFromConfig, StaticPlacement } from "../../src/swarm/placement.ts";
import { directLinks } from "../../src/swarm/region-links.ts";
import { RemoteExpertHost } from "../../src/swarm/remote-expert-host.ts";
import { saveSwarmModel } from "../../src/swarm/swarm-checkpoint.ts";
import { noGradAsync } from "../../src/tensor/tensor.ts";
import { startModelNodes } from "./fixtures/model-nodes.ts";

describe("training through the swarm", { timeout: 60_000 }, () => {
  it("same loss curve as local training for the same seed; replicas stay identical", async () => {
    const { config } = parseConfigText(
      "profile: local\nswarm:\n  emulation:\n    enabled: false\n",
    );
    const swarm = await startModelNodes(config, { weights: true });
    const { plan, hosts } = swarm;
    const remote = new RemoteExpertHost({
      registry: swarm.placement,
      region: "ORD",
      dModel: config.model.d_model,
    });
    const local = await buildLocalModel(config, { backend: "js" });
    try {
      const trunk = buildTrunk(config, remote);
      const swarmTrainer = new Trainer(trunk);
      const localTrainer = new Trainer(local.model);
      const text = mobyDick().train;
      const rngA = new Prng(7);
      const rngB = new Prng(7);
      const losses: [number, number][] = [];
      for (let step = 1; step <= 4; step++) {
        const a = await swarmTrainer.trainStep(sampleBatch(text, 2, 16, rngA), 3e-3);
        const b = await localTrainer.trainStep(sampleBatch(text, 2, 16, rngB), 3e-3);
        losses.push([a.loss, b.loss]);
      }
      console.log(
        `# losses swarm vs local: ${losses.map(([a, b]) => `${a.toFixed(6)}/${b.toFixed(6)}`).join(", ")}`,
      );
      for (const [i, [a, b]] of losses.entries())
        assert.ok(Math.abs(a - b) <= 1e-4 * Math.abs(b), `step ${i + 1}: swarm ${a} vs local ${b}`);
      assert.ok((losses[3]?.[1] as number) < (losses[0]?.[1] as number) + 0.5, "training runs");
      // every replica of an expert holds the same weights, equal to the local model's within tolerance
      for (const [i, p] of plan.entries()) {
        for (const id of p.experts) {
          const w = (hosts[i] as LocalExpertHost).params(id).w1;
          const want = local.host.params(id).w1;
          let maxDiff = 0;
          for (let k = 0; k < w.length; k++)
            maxDiff = Math.max(maxDiff, Math.abs((w[k] as number) - (want[k] as number)));
          assert.ok(maxDiff < 1e-5, `${p.nodeId} L${id.layer}.E${id.expert}: max |Δw1| ${maxDiff}`);
        }
      }
      assert.equal(remote.counters.failedCalls, 0);
      // the swarm-trained model saves as one checkpoint that loads into a local model
      const dir = mkdtempSync(join(tmpdir(), "moe-swarm-train-"));
      try {
        const path = join(dir, "swarm.safetensors");
        await saveSwarmModel(config, path, trunk, remote);
        const loaded = await buildLocalModel(config, { backend: "js" });
        loadModelInto(readModelFile(path), loaded.model, loaded.host, path);
        const ids = Int32Array.from(Buffer.from("Call me Ishmael.", "utf8"));
        const a = await noGradAsync(() => loaded.model.forward(ids, 1, ids.length));
        const b = await noGradAsync(() => local.model.forward(ids, 1, ids.length));
        let maxDiff = 0;
        for (let k = 0; k < a.logits.data.length; k++)
          maxDiff = Math.max(
            maxDiff,
            Math.abs((a.logits.data[k] as number) - (b.logits.data[k] as number)),
          );
        assert.ok(maxDiff < 1e-4, `logits of the saved swarm model vs local: max |Δ| ${maxDiff}`);
        await loaded.host.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    } finally {
      remote.close();
      await swarm.close();
      await local.host.close();
    }
  });
});

describe("replica resync", { timeout: 60_000 }, () => {
  it("a node that missed training steps is brought up to date (weights and AdamW moments) and training stays on the local curve", async () => {
    const { config } = parseConfigText(
      "profile: local\nswarm:\n  emulation:\n    enabled: false\n",
    );
    const plan = planFromConfig(config);
    const d = config.model.d_model;
    const running = new Map<string, { node: ExpertNode; host: LocalExpertHost; port: number }>();
    const start = async (p: (typeof plan)[number], port = 0) => {
      const host = await buildExpertHost(config, { ids: p.experts, backend: "js" });
      const node = new ExpertNode({
        nodeId: p.nodeId,
        region: p.region,
        host,
        experts: p.experts,
        dModel: d,
        links: directLinks,
        port,
      });
      const bound = await node.listen();
      running.set(p.nodeId, { node, host, port: bound.port });
    };
    for (const p of plan) await start(p);
    const entries = plan.map((p) => ({
      nodeId: p.nodeId,
      region: p.region,
      host: "127.0.0.1",
      port: running.get(p.nodeId)?.port ?? 0,
      experts: p.experts,
    }));
    const remote = new RemoteExpertHost({
      registry: new StaticPlacement(entries),
      region: "ORD",
      dModel: d,
    });
    const local = await buildLocalModel(config, { backend: "js" });
    try {
      const swarmTrainer = new Trainer(buildTrunk(config, remote));
      const localTrainer = new Trainer(local.model);
      const text = mobyDick().train;
      const rngA = new Prng(9);
      const rngB = new Prng(9);
      const step = async () => {
        const a = await swarmTrainer.trainStep(sampleBatch(text, 2, 16, rngA), 3e-3);
        const b = await localTrainer.trainStep(sampleBatch(text, 2, 16, rngB), 3e-3);
        assert.ok(
          Math.abs(a.loss - b.loss) <= 1e-4 * Math.abs(b.loss),
          `swarm ${a.loss} vs local ${b.loss}`,
        );
      };
      await step();
      const victim = plan.find((p) => p.nodeId === "IAD-0") as (typeof plan)[number];
      const old = running.get("IAD-0");
      await old?.node.close();
      await old?.host.close();
      await step(); // IAD-0 misses this step: its replicas go stale
      await step();
      await start(victim, old?.port); // back with initial weights and empty moments
      assert.equal(await remote.probeAll(), plan.length);
      const synced = await remote.resyncStaleReplicas();
      // Exactly the returning node's experts: writes run under deadlines learned from their own
      // latencies, so no healthy replica elsewhere missed an update during the outage.
      assert.equal(synced, victim.experts.length, "every expert of the returning node resynced");
      await step(); // all replicas train again
      await step();
      const back = running.get("IAD-0") as { host: LocalExpertHost };
      for (const id of victim.experts) {
        const w = back.host.params(id).w2;
        const want = local.host.params(id).w2;
        let maxDiff = 0;
        for (let k = 0; k < w.length; k++)
          maxDiff = Math.max(maxDiff, Math.abs((w[k] as number) - (want[k] as number)));
        assert.ok(
          maxDiff < 1e-5,
          `IAD-0 L${id.layer}.E${id.expert}: max |Δw2| ${maxDiff} after resync and 2 more steps`,
        );
      }
      assert.equal(remote.counters.resyncedReplicas, victim.experts.length);
    } finally {
      remote.close();
      for (const r of running.values()) {
        await r.node.close();
        await r.host.close();
      }
      await local.host.close();
    }
  });
});
