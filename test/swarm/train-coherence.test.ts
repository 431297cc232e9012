// `moe-swarm train --swarm` passes issue #8's dispatch observer to the training swarm, so every
// replicated expert update is timed (expert_coherence_time: first to last replica acknowledgement
// of the same weight version) and the run's final line reports how many were measured.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { main } from "../../src/cli/main.ts";

const dir = mkdtempSync(join(tmpdir(), "moe-train-coherence-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const tier = (name: string, experts: number, gpu: string, activation: string, k: number) =>
  `    - {name: ${name}, experts_per_region: ${experts}, gpu_type: ${gpu}, activation: ${activation}, blocks: 1, expert_hidden: 16, top_k: ${k}}\n`;

describe("train --swarm", { timeout: 90_000 }, () => {
  it("records the coherence time of the replicated expert updates", async () => {
    const config = join(dir, "swarm.yaml");
    writeFileSync(
      config,
      "profile: local\n" +
        "model: {d_model: 16, n_heads: 2, context_length: 32, seed: 5}\n" +
        "expert_topology:\n  hierarchical_layers:\n" +
        tier("Sensory Cortex", 4, "a10", "parallel", 2) +
        tier("Association Areas", 2, "l40s", "selective", 2) +
        tier("Prefrontal Cortex", 1, "a100-80gb", "sequential", 1) +
        `swarm: {data_dir: ${JSON.stringify(dir)}, emulation: {enabled: false}}\n`,
    );
    let out = "";
    let err = "";
    const code = await main(
      [
        "node",
        "moe-swarm",
        "--config",
        config,
        "train",
        "--swarm",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq",
        "16",
        "--eval-every",
        "2",
        "--eval-windows",
        "2",
        "--no-progress",
        "--threads",
        "1",
        "--out",
        join(dir, "m.safetensors"),
      ],
      { out: (t) => (out += t), err: (t) => (err += t) },
    );
    assert.equal(code, 0, err);
    const m =
      /expert coherence time over (\d+) replicated updates: mean ([\d.]+) ms, max ([\d.]+) ms/.exec(
        out,
      );
    assert.ok(m, out);
    // Every expert has 3 replicas and is updated once per step (unused experts too: AdamW decay).
    assert.ok(Number(m[1]) > 0, out);
    assert.ok(Number(m[3]) >= Number(m[2]));
  });
});
