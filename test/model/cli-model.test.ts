// `moe-swarm train` and `moe-swarm generate` end to end on a tiny config (seconds).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { main } from "../../src/cli/main.ts";

const dir = mkdtempSync(join(tmpdir(), "moe-cli-model-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const tier = (name: string, experts: number, gpu: string, activation: string, k: number) =>
  `    - {name: ${name}, experts_per_region: ${experts}, gpu_type: ${gpu}, activation: ${activation}, blocks: 1, expert_hidden: 16, top_k: ${k}}\n`;
const yaml =
  "profile: local\n" +
  "model: {d_model: 16, n_heads: 2, context_length: 32, seed: 5}\n" +
  "expert_topology:\n  hierarchical_layers:\n" +
  tier("Sensory Cortex", 8, "a10", "parallel", 2) +
  tier("Association Areas", 4, "l40s", "selective", 3) +
  tier("Prefrontal Cortex", 1, "a100-80gb", "sequential", 1) +
  `swarm: {data_dir: ${JSON.stringify(dir)}}\n`;
const config = join(dir, "tiny.yaml");
writeFileSync(config, yaml);

async function run(...args: string[]) {
  let out = "";
  let err = "";
  const code = await main(["node", "moe-swarm", "--config", config, ...args], {
    out: (t) => {
      out += t;
    },
    err: (t) => {
      err += t;
    },
  });
  return { code, out, err };
}

describe("moe-swarm train / generate", () => {
  it("trains, validates in bits per byte, saves to <data_dir>/models/<profile>.safetensors", async () => {
    const r = await run(
      "train",
      "--steps",
      "4",
      "--batch",
      "2",
      "--eval-every",
      "2",
      "--eval-windows",
      "2",
      "--no-progress",
      "--threads",
      "1",
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /step 2: loss [\d.]+ nats, val [\d.]+ bits\/byte/);
    assert.match(r.out, /trained 4 steps .* tokens\/s .* validation [\d.]+ bits\/byte/);
    assert.ok(statSync(join(dir, "models", "local.safetensors")).size > 10_000);
  });

  it("generates from the saved model, reproducibly per seed", async () => {
    const a = await run(
      "generate",
      "--prompt",
      "Call me ",
      "--bytes",
      "12",
      "--seed",
      "3",
      "--stats",
    );
    const b = await run(
      "generate",
      "--prompt",
      "Call me ",
      "--bytes",
      "12",
      "--seed",
      "3",
      "--trunk",
      "js",
      "--backend",
      "js",
    );
    assert.equal(a.code, 0, a.err);
    assert.ok(a.out.startsWith("Call me "));
    assert.ok(Buffer.byteLength(a.out) >= 8 + 12 - 1);
    assert.match(a.err, /[\d.]+ experts\/token, superposition cache not consulted \(KV-cached/);
    assert.equal(b.code, 0, b.err);
    const c = await run("generate", "--prompt", "Call me ", "--bytes", "12", "--seed", "3");
    assert.equal(c.out, a.out);
  });

  it("rejects bad flags and missing or mismatched model files with clear errors", async () => {
    const bad = await run("train", "--steps", "0");
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--steps: expected an integer in \[1, /);
    const missing = await run(
      "generate",
      "--prompt",
      "x",
      "--model",
      join(dir, "none.safetensors"),
    );
    assert.equal(missing.code, 1);
    assert.match(missing.err, /no model at .*moe-swarm train/);
    const junk = join(dir, "junk.safetensors");
    writeFileSync(junk, "not a safetensors file");
    const j = await run("generate", "--prompt", "x", "--model", junk);
    assert.equal(j.code, 1);
    assert.match(j.err, /header length|truncated|JSON/);
  });
});
