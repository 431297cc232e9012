import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { main } from "../../src/cli/main.ts";

async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await main(["node", "moe-swarm", ...args], {
    out: (t) => (out += t),
    err: (t) => (err += t),
  });
  return { code, out, err };
}

describe("moe-swarm CLI", () => {
  it("prints help for every command and subcommand", async () => {
    const top = await run("--help");
    assert.equal(top.code, 0);
    for (const name of [
      "config",
      "train",
      "generate",
      "up",
      "node",
      "gateway",
      "coordinator",
      "checkpoint",
    ]) {
      assert.match(top.out, new RegExp(`\\b${name}\\b`));
      const help = await run(name, "--help");
      assert.equal(help.code, 0, `${name} --help`);
      assert.match(help.out, /Usage: moe-swarm/);
    }
    for (const sub of ["validate", "show"])
      assert.equal((await run("config", sub, "--help")).code, 0);
  });

  it("validates the example config", async () => {
    const r = await run("config", "validate", "config/swarm.example.yaml");
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /valid \(profile production/);
  });

  it("rejects a bad config with the key's path and exit code 1", async () => {
    const dir = mkdtempSync(join(tmpdir(), "moe-cli-"));
    const file = join(dir, "bad.yaml");
    writeFileSync(
      file,
      "expert_topology:\n  hierarchical_layers:\n    - {name: a, experts_per_region: 4, gpu_type: a10, activation: sideways, expert_hidden: 8}\n",
    );
    const r = await run("config", "validate", file);
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /expert_topology\.hierarchical_layers\[0\]\.activation: expected one of parallel, selective, sequential; got "sideways"/,
    );
  });

  it("shows the resolved config, which validates again", async () => {
    const shown = await run("config", "show", "--profile", "production");
    assert.equal(shown.code, 0);
    const dir = mkdtempSync(join(tmpdir(), "moe-cli-"));
    const file = join(dir, "shown.yaml");
    writeFileSync(file, shown.out);
    assert.equal((await run("config", "validate", file)).code, 0);
    const json = JSON.parse((await run("config", "show", "--json")).out) as {
      checkpoint_strategy: { levels: { retention: { seconds: unknown } }[] };
    };
    assert.equal(json.checkpoint_strategy.levels[0]?.retention.seconds, 86400);
  });

  it("reads --config globally", async () => {
    const r = await run("--config", "config/swarm.example.yaml", "config", "validate");
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^config\/swarm\.example\.yaml: valid/);
  });

  it("runs as a binary with --version and --help", () => {
    const version = execFileSync(process.execPath, ["bin/moe-swarm.js", "--version"], {
      encoding: "utf8",
    });
    assert.match(version, /^\d+\.\d+\.\d+/);
    const bad = spawnSync(process.execPath, ["bin/moe-swarm.js", "no-such-command"], {
      encoding: "utf8",
    });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /unknown command/);
  });
});
