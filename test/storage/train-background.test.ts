// Training with a TierCopier: the trainer saves into hot on its own thread, warm copies and the
// retention GC run on the worker after each checkpoint. Retention is scaled down (hot: 0 s, so
// every hot checkpoint but the newest expires at the next GC, unless a copy still reads it).

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { BatchSampler } from "../../src/model/batch-sampler.ts";
import { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import { Trainer } from "../../src/model/trainer.ts";
import {
  readTrainingCheckpoint,
  TrainingCheckpointer,
  trainingCheckpointId,
} from "../../src/model/training-checkpoints.ts";
import { captureTrainingState } from "../../src/model/training-state.ts";
import { MoeTransformer } from "../../src/model/transformer.ts";
import { chunkSizesFromAverage } from "../../src/storage/fastcdc.ts";
import { TierCopier } from "../../src/storage/tier-copier.ts";
import { adamwHyper } from "../../src/tensor/adamw.ts";
import { tinyConfig } from "../model/tiny.ts";
import { openTestStore, tempDir, tiersIn } from "./fixtures/store.ts";

const t = tempDir("train-background");
after(t.cleanup);

const text = new TextEncoder().encode(
  "It is not down in any map; true places never are. Call me Ishmael. Whenever I find myself " +
    "growing grim about the mouth; whenever it is a damp, drizzly November in my soul.",
);
const recipe = {
  seed: 5,
  batch: 2,
  seq: 16,
  schedule: { peak: 1e-2, min: 1e-3, warmupSteps: 1, totalSteps: 4 },
  clipNorm: 0.5,
  adamw: adamwHyper({ weightDecay: 0.1 }),
};

describe("training checkpoints with background copies and GC", () => {
  it("copies every 2nd checkpoint to warm off the training thread and applies retention after each", async () => {
    const dir = join(t.dir, "store");
    const tiers = tiersIn(dir)
      .filter((x) => x.name !== "cold")
      .map((x) => (x.name === "hot" ? { ...x, retentionSeconds: 0 } : x));
    const store = openTestStore(dir, { tiers, chunkSizes: chunkSizesFromAverage(16 * 1024) });
    const copier = await TierCopier.start(store.spec);
    const mc = tinyConfig();
    const host = await LocalExpertHost.create(mc, { backend: "js", adamw: recipe.adamw });
    try {
      const trainer = new Trainer(new MoeTransformer(mc, host), {
        adamw: recipe.adamw,
        clipNorm: recipe.clipNorm,
      });
      const sampler = new BatchSampler(text, recipe.batch, recipe.seq, { seed: 5, draws: 0 });
      const checkpointer = new TrainingCheckpointer(
        store,
        {
          frequency: { kind: "steps", steps: 1, text: "every_1_steps" },
          warmEvery: 2,
          coldEvery: 0,
          coldEnabled: false,
        },
        undefined,
        copier,
      );
      const meta = () => ({
        runId: "bg",
        recipe,
        sampler: sampler.position(),
        kernels: { experts: "js", trunk: "js" },
      });
      const atStep2: Uint8Array[] = [];
      for (let step = 1; step <= 4; step++) {
        await trainer.trainStep(sampler.next(), 1e-2);
        if (step === 2)
          for (const s of await captureTrainingState(trainer, meta())) atStep2.push(s.bytes);
        const saved = await checkpointer.save(trainer, meta());
        assert.deepEqual(saved.copies, [], "no copy ran on the training thread");
        assert.deepEqual(saved.queued, step % 2 === 0 ? ["warm"] : []);
      }
      await copier.drain();
      const id = (s: number) => trainingCheckpointId("bg", s);
      assert.deepEqual(
        store.list("warm").map((m) => m.id),
        [id(2), id(4)],
      );
      // Retention ran in the background: only the newest hot checkpoint is left.
      assert.deepEqual(
        store.list("hot").map((m) => m.id),
        [id(4)],
      );
      const gcs = copier.results.filter((r) => r.ok && r.kind === "gc");
      assert.ok(gcs.length >= 2, `${gcs.length} GC runs`);
      const expired = gcs
        .flatMap((r) => (r.ok && r.kind === "gc" ? r.reports : []))
        .flatMap((r) => (r.tier === "hot" ? r.expired : []));
      assert.deepEqual(expired.sort(), [id(1), id(2), id(3)]);
      // The warm copy of step 2 restores the state of step 2 bit for bit, and verify is clean.
      const { state } = readTrainingCheckpoint(store, "warm", id(2));
      assert.equal(state.meta.step, 2);
      const back = store.restore("warm", id(2));
      assert.deepEqual(
        back.map((s) => Buffer.from(s.bytes).toString("hex")).sort(),
        atStep2.map((b) => Buffer.from(b).toString("hex")).sort(),
      );
      for (const tier of ["hot", "warm"] as const)
        assert.deepEqual(store.verify(tier).problems, [], `${tier} verifies clean`);
    } finally {
      await copier.close();
      await host.close();
    }
  });
});
