// Bit-exact resume of training through the tiered checkpoint store: N steps uninterrupted vs k
// steps → checkpoint → brand-new model, host, trainer and sampler → restore → N−k steps must give
// identical losses at every step and identical final weights and optimizer moments, through the
// hot tier and through the sealed cold tier. A corrupt checkpoint, a mismatched model config or
// recipe is refused with an error naming the CID/file/field, and leaves the trainer untouched.

import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { after, describe, it } from "node:test";
import { BatchSampler } from "../../src/model/batch-sampler.ts";
import { loadModelInto } from "../../src/model/checkpoint.ts";
import type { ModelConfig } from "../../src/model/config.ts";
import { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import { learningRate } from "../../src/model/schedule.ts";
import { Trainer } from "../../src/model/trainer.ts";
import {
  readTrainingCheckpoint,
  TrainingCheckpointer,
  trainingCheckpointId,
} from "../../src/model/training-checkpoints.ts";
import {
  applyTrainingState,
  captureTrainingState,
  optimizerShardName,
  parseTrainingState,
  restoreTrainingState,
  type TrainingRecipe,
  TrainingStateError,
} from "../../src/model/training-state.ts";
import { MoeTransformer } from "../../src/model/transformer.ts";
import { StorageError } from "../../src/storage/errors.ts";
import { adamwHyper } from "../../src/tensor/adamw.ts";
import { tinyConfig } from "../model/tiny.ts";
import { openTestStore, tempDir } from "./fixtures/store.ts";

const t = tempDir("train-resume");
after(t.cleanup);

const text = new TextEncoder().encode(
  "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money " +
    "in my purse, and nothing particular to interest me on shore, I thought I would sail about a " +
    "little and see the watery part of the world. It is a way I have of driving off the spleen.",
);
const totalSteps = 6;
const k = 3;
const recipe: TrainingRecipe = {
  seed: 7,
  batch: 2,
  seq: 16,
  schedule: { peak: 1e-2, min: 1e-3, warmupSteps: 2, totalSteps },
  clipNorm: 0.5,
  adamw: adamwHyper({ weightDecay: 0.1 }),
};

interface Run {
  readonly host: LocalExpertHost;
  readonly model: MoeTransformer;
  readonly trainer: Trainer;
  readonly sampler: BatchSampler;
}

async function fresh(mc: ModelConfig = tinyConfig(), r: TrainingRecipe = recipe): Promise<Run> {
  const host = await LocalExpertHost.create(mc, { backend: "js", adamw: r.adamw });
  const model = new MoeTransformer(mc, host);
  const trainer = new Trainer(model, { adamw: r.adamw, clipNorm: r.clipNorm });
  const sampler = new BatchSampler(text, r.batch, r.seq, { seed: r.seed, draws: 0 });
  return { host, model, trainer, sampler };
}

/** Trains until `until` steps; returns [loss, ce] per step. */
async function trainTo(run: Run, until: number): Promise<number[][]> {
  const out: number[][] = [];
  while (run.trainer.step < until) {
    const step = run.trainer.step + 1;
    const r = await run.trainer.trainStep(run.sampler.next(), learningRate(recipe.schedule, step));
    out.push([r.loss, r.ce, r.gradNorm]);
  }
  return out;
}

function meta(run: Run) {
  return {
    runId: "train-test",
    recipe,
    sampler: run.sampler.position(),
    kernels: { experts: "js", trunk: "js" },
  };
}

/** Every float of the trainer's state (weights and moments), as bytes. */
async function stateBytes(run: Run): Promise<Buffer> {
  const shards = await captureTrainingState(run.trainer, meta(run));
  return Buffer.concat(
    shards.filter((s) => s.name !== "training.json").map((s) => Buffer.from(s.bytes)),
  );
}

let reference: { losses: number[][]; state: Buffer } | undefined;
async function uninterrupted() {
  if (reference === undefined) {
    const run = await fresh();
    const losses = await trainTo(run, totalSteps);
    reference = { losses, state: await stateBytes(run) };
  }
  return reference;
}

describe("training resumes bit-exactly from the tiered store", () => {
  for (const tier of ["hot", "warm", "cold"] as const) {
    it(`${k} steps → checkpoint (${tier}) → new objects → ${totalSteps - k} steps equals ${totalSteps} uninterrupted`, async () => {
      const ref = await uninterrupted();
      const dir = `${t.dir}/${tier}`;
      const first = await fresh();
      const head = await trainTo(first, k);
      assert.deepEqual(head, ref.losses.slice(0, k));
      const checkpointer = new TrainingCheckpointer(openTestStore(dir), {
        frequency: { kind: "steps", steps: k, text: `every_${k}_steps` },
        warmEvery: tier === "warm" ? 1 : 0,
        coldEvery: tier === "cold" ? 1 : 0,
        coldEnabled: tier === "cold",
      });
      assert.equal(checkpointer.due(k), true);
      assert.equal(checkpointer.due(k + 1), false);
      const saved = await checkpointer.save(first.trainer, meta(first));
      assert.equal(saved.id, trainingCheckpointId("train-test", k));
      assert.deepEqual(
        saved.copies.map((c) => c.tier),
        tier === "hot" ? [] : [tier],
      );
      // A new process: new store object, new model (same config), new host, trainer, sampler.
      const second = await fresh();
      const { id, state } = readTrainingCheckpoint(openTestStore(dir), tier, "latest");
      assert.equal(id, saved.id);
      await applyTrainingState(state, second.trainer, id, recipe);
      assert.equal(second.trainer.step, k);
      const resumed = {
        ...second,
        sampler: new BatchSampler(text, recipe.batch, recipe.seq, state.meta.sampler),
      };
      const tail = await trainTo(resumed, totalSteps);
      assert.deepEqual(tail, ref.losses.slice(k), "identical losses at every resumed step");
      assert.ok((await stateBytes(resumed)).equals(ref.state), "identical weights and moments");
    });
  }

  it("policy: hot every checkpoint, warm and cold every Nth (cold only with a key); time cadence", async () => {
    const run = await fresh();
    let nowMs = 1_000_000;
    const store = openTestStore(`${t.dir}/policy`);
    const policy = {
      frequency: { kind: "steps" as const, steps: 1, text: "every_1_steps" },
      warmEvery: 2,
      coldEvery: 3,
      coldEnabled: true,
    };
    const c = new TrainingCheckpointer(store, policy, () => nowMs);
    const tiersAt: string[][] = [];
    for (let s = 1; s <= 6; s++) {
      await trainTo(run, s);
      assert.equal(c.due(s), true);
      const saved = await c.save(run.trainer, meta(run));
      tiersAt.push(saved.copies.map((x) => x.tier));
    }
    assert.deepEqual(tiersAt, [[], ["warm"], ["cold"], ["warm"], [], ["warm", "cold"]]);
    assert.equal(store.list("hot").length, 6);
    const noKey = new TrainingCheckpointer(openTestStore(`${t.dir}/policy-nokey`), {
      ...policy,
      coldEnabled: false,
    });
    const saved = await noKey.save(run.trainer, meta(run));
    assert.deepEqual(
      saved.copies.map((x) => x.tier),
      ["warm"],
    );
    // A time cadence ("30m"): due once 1800 s have passed since the last save.
    const timed = new TrainingCheckpointer(
      store,
      { ...policy, frequency: { kind: "time", seconds: 1800, text: "30m" } },
      () => nowMs,
    );
    assert.equal(timed.due(7), false);
    nowMs += 1_799_000;
    assert.equal(timed.due(7), false);
    nowMs += 1000;
    assert.equal(timed.due(7), true);
  });

  it("weights alone, or state without the sampler position, do not continue the curve (the test can fail)", async () => {
    const ref = await uninterrupted();
    const first = await fresh();
    await trainTo(first, k);
    const shards = await captureTrainingState(first.trainer, meta(first));
    const position = first.sampler.position();
    // Weights only (what `train --resume` restored before): moments and step start from zero.
    const weightsOnly = await fresh();
    const model = shards.find((s) => s.name === "model.safetensors");
    assert.ok(model);
    loadModelInto(model.bytes, weightsOnly.model, weightsOnly.host);
    weightsOnly.trainer.step = k;
    const w = { ...weightsOnly, sampler: new BatchSampler(text, 2, 16, position) };
    assert.notDeepEqual(await trainTo(w, totalSteps), ref.losses.slice(k));
    // Full state, but the data order restarted from the seed.
    const second = await fresh();
    await restoreTrainingState(shards, second.trainer, "memory");
    assert.notDeepEqual(await trainTo(second, totalSteps), ref.losses.slice(k));
  });

  it("a corrupt block is refused naming the CID and file; nothing is loaded", async () => {
    const dir = `${t.dir}/corrupt`;
    const first = await fresh();
    await trainTo(first, k);
    const store = openTestStore(dir);
    const checkpointer = new TrainingCheckpointer(store, {
      frequency: { kind: "steps", steps: k, text: `every_${k}_steps` },
      warmEvery: 0,
      coldEvery: 0,
      coldEnabled: false,
    });
    const saved = await checkpointer.save(first.trainer, meta(first));
    const blocks = store.blockStore("hot");
    const victim = saved.hot.manifest.blocks
      .map((cid) => ({ cid, path: blocks.pathOf(cid) }))
      .sort((a, b) => readFileSync(b.path).length - readFileSync(a.path).length)[0];
    assert.ok(victim);
    const bytes = readFileSync(victim.path);
    bytes[bytes.length - 7] = (bytes[bytes.length - 7] as number) ^ 0x40;
    writeFileSync(victim.path, bytes);
    const second = await fresh();
    const before = await stateBytes(second);
    const reopened = openTestStore(dir);
    await assert.rejects(
      async () => {
        const { id, state } = readTrainingCheckpoint(reopened, "hot", saved.id);
        await applyTrainingState(state, second.trainer, id, recipe);
      },
      (err: unknown) =>
        err instanceof StorageError &&
        err.cid === victim.cid &&
        err.file === victim.path &&
        err.message.includes(victim.cid),
    );
    assert.equal(second.trainer.step, 0);
    assert.ok((await stateBytes(second)).equals(before), "nothing half-loaded");
  });

  it("a shard with a missing tensor is refused naming it; the trainer is unchanged", async () => {
    const first = await fresh();
    await trainTo(first, k);
    const shards = await captureTrainingState(first.trainer, meta(first));
    const second = await fresh();
    const before = await stateBytes(second);
    // Cut the optimizer shard down to the trunk's moments only (drop every expert moment).
    const { decodeSafetensors, encodeSafetensors } = await import("../../src/model/safetensors.ts");
    const opt = shards.find((s) => s.name === optimizerShardName);
    assert.ok(opt);
    const file = decodeSafetensors(opt.bytes);
    const cut = encodeSafetensors(
      [...file.tensors.values()].filter((x) => !x.name.startsWith("experts.L2.")),
      { ...file.metadata },
    );
    const bad = shards.map((s) => (s.name === optimizerShardName ? { ...s, bytes: cut } : s));
    await assert.rejects(
      restoreTrainingState(bad, second.trainer, "ckpt"),
      (err: unknown) =>
        err instanceof TrainingStateError &&
        /ckpt\/optimizer\.safetensors: tensor experts\.L2\.E\d\.\w+\.m is missing/.test(
          err.message,
        ),
    );
    assert.equal(second.trainer.step, 0);
    assert.ok((await stateBytes(second)).equals(before));
    // Truncated bytes: named by shard file.
    const truncated = shards.map((s) =>
      s.name === optimizerShardName ? { ...s, bytes: s.bytes.subarray(0, s.bytes.length - 5) } : s,
    );
    assert.throws(
      () => parseTrainingState(truncated, "ckpt"),
      /ckpt\/optimizer\.safetensors: truncated/,
    );
    // A forged or inconsistent training.json: named by field.
    const forge = (edit: (m: Record<string, unknown>) => void) =>
      shards.map((s) => {
        if (s.name !== "training.json") return s;
        const m = JSON.parse(new TextDecoder().decode(s.bytes)) as Record<string, unknown>;
        edit(m);
        return { ...s, bytes: new TextEncoder().encode(JSON.stringify(m)) };
      });
    assert.throws(
      () =>
        parseTrainingState(
          forge((m) => Object.assign(m, { sampler: { seed: 7, draws: 1e12 } })),
          "ckpt",
        ),
      /ckpt\/training\.json: sampler\.draws is 1000000000000, expected step × batch = 6/,
    );
    assert.throws(
      () =>
        parseTrainingState(
          forge((m) => Object.assign(m, { step: -1 })),
          "ckpt",
        ),
      /ckpt\/training\.json is malformed at step/,
    );
    assert.throws(
      () =>
        parseTrainingState(
          forge((m) => Object.assign(m, { step: 2 })),
          "ckpt",
        ),
      /sampler\.draws is 6, expected step × batch = 4/,
    );
  });

  it("a mismatched model config or recipe is rejected naming the field", async () => {
    const first = await fresh();
    await trainTo(first, 1);
    const shards = await captureTrainingState(first.trainer, meta(first));
    const mc = tinyConfig();
    const other: ModelConfig = {
      ...mc,
      tiers: mc.tiers.map((tier, i) => (i === 1 ? { ...tier, experts: 3 } : tier)),
    };
    const wrongModel = await fresh(other);
    const before = await stateBytes(wrongModel);
    await assert.rejects(
      restoreTrainingState(shards, wrongModel.trainer, "ckpt", recipe),
      /different model config \(model_config\.tiers\[1\]\.experts: file has 2, expected 3\)/,
    );
    assert.ok((await stateBytes(wrongModel)).equals(before));
    const second = await fresh();
    await assert.rejects(
      restoreTrainingState(shards, second.trainer, "ckpt", { ...recipe, batch: 4 }),
      /different recipe \(recipe\.batch: file has 2, expected 4\)/,
    );
    await assert.rejects(
      restoreTrainingState(shards, second.trainer, "ckpt", {
        ...recipe,
        schedule: { ...recipe.schedule, totalSteps: 9 },
      }),
      /recipe\.schedule\.totalSteps: file has 6, expected 9/,
    );
    assert.equal(second.trainer.step, 0);
  });
});
