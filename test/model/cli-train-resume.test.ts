// `moe-swarm train --checkpoint-every` then `moe-swarm train --resume-from latest` on a tiny
// config: the interrupted-and-resumed run prints the same per-step losses and writes the same
// model file, byte for byte, as the uninterrupted run; through the hot tier and the sealed cold
// tier (operator key); conflicting flags, a different model config and a missing checkpoint are
// refused with errors that name what to change.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { main } from "../../src/cli/main.ts";
import { encodeOperatorKey, generateOperatorKeyPair } from "../../src/crypto/envelope.ts";

const dir = mkdtempSync(join(tmpdir(), "moe-cli-resume-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const tier = (name: string, experts: number, gpu: string, activation: string, k: number) =>
  `    - {name: ${name}, experts_per_region: ${experts}, gpu_type: ${gpu}, activation: ${activation}, blocks: 1, expert_hidden: 16, top_k: ${k}}\n`;
const yaml = (dModel: number, swarm = "") =>
  "profile: local\n" +
  `model: {d_model: ${dModel}, n_heads: 2, context_length: 32, seed: 5}\n` +
  "expert_topology:\n  hierarchical_layers:\n" +
  tier("Sensory Cortex", 4, "a10", "parallel", 2) +
  tier("Association Areas", 2, "l40s", "selective", 2) +
  tier("Prefrontal Cortex", 1, "a100-80gb", "sequential", 1) +
  `swarm: {data_dir: ${JSON.stringify(dir)}${swarm}}\n`;
const config = join(dir, "tiny.yaml");
writeFileSync(config, yaml(16));
const wider = join(dir, "wider.yaml");
writeFileSync(wider, yaml(24));
const swarmConfig = join(dir, "swarm.yaml");
writeFileSync(swarmConfig, yaml(16, ", emulation: {enabled: false}"));
const keys = generateOperatorKeyPair();
const publicKey = join(dir, "op.public.key");
const secretKey = join(dir, "op.secret.key");
writeFileSync(publicKey, encodeOperatorKey("public", keys.publicKey));
writeFileSync(secretKey, encodeOperatorKey("secret", keys.secretKey));

async function run(cfg: string, ...args: string[]) {
  let out = "";
  let err = "";
  const code = await main(["node", "moe-swarm", "--config", cfg, ...args], {
    out: (t) => {
      out += t;
    },
    err: (t) => {
      err += t;
    },
  });
  return { code, out, err };
}

/** Evaluation at every step on 2 windows, no progress bar: the per-step lines the tests compare. */
const evalArgs = ["--eval-every", "1", "--eval-windows", "2", "--no-progress"];
const common = ["--batch", "2", "--seq", "16", ...evalArgs, "--threads", "1"];

/** "step N: loss … nats, val … bits/byte" reports, by step (io.err pieces are not newline-ended). */
function stepLines(err: string): Map<number, string> {
  const m = new Map<number, string>();
  for (const r of err.matchAll(/step (\d+): loss [\d.]+ nats, val [\d.]+ bits\/byte/g))
    m.set(Number(r[1]), r[0]);
  return m;
}

describe("moe-swarm train --checkpoint-every / --resume-from", () => {
  const ref = join(dir, "uninterrupted.safetensors");
  let reference: Map<number, string>;

  it("an uninterrupted run of 4 steps (no checkpoints)", async () => {
    const r = await run(
      config,
      "train",
      "--steps",
      "4",
      ...common,
      "--checkpoint-every",
      "0",
      "--out",
      ref,
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /no checkpoints/);
    reference = stepLines(r.err);
    assert.equal(reference.size, 4);
  });

  for (const via of ["hot", "cold"] as const) {
    it(`stops at step 2 with a checkpoint, resumes from latest (${via}) and matches it exactly`, async () => {
      const store = join(dir, `store-${via}`);
      const first = await run(
        config,
        "train",
        "--steps",
        "4",
        ...common,
        "--checkpoint-every",
        "2",
        "--stop-at",
        "2",
        "--store",
        store,
        ...(via === "cold" ? ["--key", publicKey, "--cold-every", "1"] : []),
        "--out",
        join(dir, `first-${via}.safetensors`),
      );
      assert.equal(first.code, 0, first.err);
      assert.match(
        first.err,
        via === "cold"
          ? /checkpoint train-\w+-step-00000002 → hot: .*; cold copy queued/
          : /checkpoint train-\w+-step-00000002 → hot: /,
      );
      assert.match(first.out, /trained 2 steps/);
      const out = join(dir, `resumed-${via}.safetensors`);
      const second = await run(
        config,
        "train",
        "--resume-from",
        "latest",
        "--tier",
        via,
        ...(via === "cold" ? ["--key", secretKey] : []),
        "--store",
        store,
        "--checkpoint-every",
        "2",
        ...evalArgs,
        "--threads",
        "1",
        "--out",
        out,
      );
      assert.equal(second.code, 0, second.err);
      assert.match(
        second.err,
        new RegExp(`resumed train-\\w+-step-00000002 from the ${via} tier at step 2/4`),
      );
      assert.match(second.out, /trained 4 steps \(2 after resuming\)/);
      const lines = stepLines(second.err);
      assert.deepEqual([...lines.keys()], [3, 4]);
      for (const s of [3, 4]) assert.equal(lines.get(s), reference.get(s), `step ${s}`);
      assert.ok(readFileSync(out).equals(readFileSync(ref)), "identical model file");
      // The resumed run checkpoints step 4 under its own run id; latest is now that one.
      assert.match(second.err, /checkpoint train-\w+-step-00000004 → hot/);
      const again = await run(config, "train", "--resume-from", "latest", "--store", store);
      assert.equal(again.code, 0, again.err);
      assert.match(again.out, /at the last step \(4\) of its schedule: nothing to train/);
    });
  }

  it("--swarm: experts on child nodes; stop at 2, resume from latest = uninterrupted swarm run, byte for byte", async () => {
    const store = join(dir, "store-swarm");
    const swarmRef = join(dir, "swarm-uninterrupted.safetensors");
    const whole = await run(
      swarmConfig,
      "train",
      "--swarm",
      "--steps",
      "4",
      ...common,
      "--checkpoint-every",
      "0",
      "--out",
      swarmRef,
    );
    assert.equal(whole.code, 0, whole.err);
    assert.match(whole.err, /experts on swarm \(\d+ nodes\)/);
    const first = await run(
      swarmConfig,
      "train",
      "--swarm",
      "--steps",
      "4",
      ...common,
      "--checkpoint-every",
      "2",
      "--stop-at",
      "2",
      "--store",
      store,
      "--out",
      join(dir, "swarm-first.safetensors"),
    );
    assert.equal(first.code, 0, first.err);
    assert.match(first.err, /checkpoint train-\w+-step-00000002 → hot: /);
    const out = join(dir, "swarm-resumed.safetensors");
    const second = await run(
      swarmConfig,
      "train",
      "--swarm",
      "--resume-from",
      "latest",
      "--store",
      store,
      "--checkpoint-every",
      "0",
      ...evalArgs,
      "--out",
      out,
    );
    assert.equal(second.code, 0, second.err);
    const lines = stepLines(second.err);
    const ref = stepLines(whole.err);
    assert.deepEqual([...lines.keys()], [3, 4]);
    for (const s of [3, 4]) assert.equal(lines.get(s), ref.get(s), `step ${s}`);
    assert.ok(readFileSync(out).equals(readFileSync(swarmRef)), "identical model file");
  });

  it("refuses a conflicting flag, another model config, a missing checkpoint, a sealed tier without the key", async () => {
    const store = join(dir, "store-hot");
    const flag = await run(
      config,
      "train",
      "--resume-from",
      "latest",
      "--store",
      store,
      "--batch",
      "3",
    );
    assert.equal(flag.code, 2);
    assert.match(
      flag.err,
      /--batch 3 differs from checkpoint train-\w+-step-\d+, which was trained with --batch 2/,
    );
    const model = await run(wider, "train", "--resume-from", "latest", "--store", store);
    assert.equal(model.code, 1);
    assert.match(
      model.err,
      /different model config \(model_config\.dModel: file has 16, expected 24\)/,
    );
    const missing = await run(config, "train", "--resume-from", "nope", "--store", store);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /no checkpoint manifest at .*nope\.json/);
    const empty = await run(
      config,
      "train",
      "--resume-from",
      "latest",
      "--store",
      join(dir, "none"),
    );
    assert.equal(empty.code, 1);
    assert.match(empty.err, /no training checkpoint in the hot tier/);
    const sealed = await run(
      config,
      "train",
      "--resume-from",
      "latest",
      "--tier",
      "cold",
      "--store",
      join(dir, "store-cold"),
    );
    assert.equal(sealed.code, 1);
    assert.match(sealed.err, /cold tier is sealed: pass the operator's secret key/);
    const early = await run(
      config,
      "train",
      "--resume-from",
      "latest",
      "--store",
      join(dir, "store-hot"),
      "--stop-at",
      "3",
    );
    assert.equal(early.code, 2);
    assert.match(early.err, /--stop-at 3: the run is already at step 4/);
    const both = await run(config, "train", "--resume", "--resume-from", "latest");
    assert.equal(both.code, 2);
  });
});
