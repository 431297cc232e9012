// The MoE transformer of src/model (issue #4) checkpointed through the tiered store: its weights
// as one safetensors shard go into every tier and come back bit-identical, and the restored model
// computes exactly the loss of the original on the same batch.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { encodeModel, loadModelInto } from "../../src/model/checkpoint.ts";
import { sequentialBatches } from "../../src/model/dataset.ts";
import { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import { Trainer } from "../../src/model/trainer.ts";
import { MoeTransformer } from "../../src/model/transformer.ts";
import { noGradAsync } from "../../src/tensor/tensor.ts";
import { tinyConfig } from "../model/tiny.ts";
import { openTestStore, tempDir } from "./fixtures/store.ts";

const t = tempDir("model");
after(t.cleanup);

describe("MoE transformer checkpoints in the tiered store", () => {
  it("restores bit-identical weights from every tier; the restored model gives the same loss", async () => {
    const mc = tinyConfig();
    const host = await LocalExpertHost.create(mc, { backend: "js" });
    const model = new MoeTransformer(mc, host);
    const trainer = new Trainer(model);
    const text = new TextEncoder().encode(
      "call me ishmael. some years ago, never mind how long precisely",
    );
    const [batch] = sequentialBatches(text, 1, 32, 1);
    assert.ok(batch);
    for (let s = 0; s < 3; s++) await trainer.trainStep(batch, 1e-2);
    const lossOf = async (m: MoeTransformer) =>
      noGradAsync(async () =>
        (await m.forward(batch.ids, batch.B, batch.T, batch.targets)).loss?.item(),
      );
    const expected = await lossOf(model);
    const weights = encodeModel(model, host, { step: String(trainer.step) });
    const store = openTestStore(t.dir);
    for (const tier of ["hot", "warm", "cold"] as const) {
      store.save(tier, "step-3", [{ name: "model.safetensors", bytes: weights }], { step: 3 });
      const [restored] = store.restore(tier, "step-3");
      assert.ok(restored);
      assert.deepEqual(Buffer.from(restored.bytes), Buffer.from(weights), tier);
      const freshHost = await LocalExpertHost.create(
        { ...mc, seed: mc.seed + 1 },
        { backend: "js" },
      );
      const fresh = new MoeTransformer(mc, freshHost);
      assert.notEqual(await lossOf(fresh), expected, "a different init gives a different loss");
      loadModelInto(restored.bytes, fresh, freshHost, `${tier} checkpoint`);
      assert.equal(await lossOf(fresh), expected, tier);
    }
  });
});
