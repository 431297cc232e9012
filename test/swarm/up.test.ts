// `moe-swarm up` as a user runs it (a child process): it starts nodes and the gateway, prints the
// URL, serves the official openai client, and on SIGTERM stops every child it started.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { describe, it } from "node:test";
import OpenAI from "openai";
import { binPath } from "../../src/swarm/child-nodes.ts";

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

describe("moe-swarm up", { timeout: 90_000 }, () => {
  it("brings up nodes and gateway, serves completions, and stops every child on SIGTERM", async () => {
    const dir = mkdtempSync(join(tmpdir(), "moe-swarm-up-"));
    const configPath = join(dir, "swarm.yaml");
    writeFileSync(configPath, `profile: local\nswarm:\n  data_dir: ${JSON.stringify(dir)}\n`);
    const child = spawn(
      process.execPath,
      [
        binPath,
        "--config",
        configPath,
        "up",
        "--untrained",
        "--port",
        "0",
        "--regions",
        "ORD,IAD,SJC",
        "--backend",
        "js",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let stderr = "";
    child.stderr.on("data", (c) => (stderr += c));
    try {
      const event = await new Promise<{ url: string; nodes: number }>((resolve, reject) => {
        createInterface({ input: child.stdout }).on("line", (line) => {
          if (line.startsWith("{")) resolve(JSON.parse(line) as { url: string; nodes: number });
        });
        child.once("exit", (code) => reject(new Error(`up exited ${code}: ${stderr}`)));
      });
      assert.equal(event.nodes, 3);
      const client = new OpenAI({ baseURL: `${event.url}/v1`, apiKey: "unused", maxRetries: 0 });
      const r = await client.completions.create({
        model: "moe-swarm-local",
        prompt: "Call me",
        max_tokens: 5,
        temperature: 0,
      });
      assert.equal(r.usage?.completion_tokens, 5);
      const placement = JSON.parse(readFileSync(join(dir, "placement.json"), "utf8")) as {
        nodes: { port: number }[];
      };
      const ports = placement.nodes.map((n) => n.port);
      for (const p of ports) assert.ok(await portOpen(p), `node port ${p} open while up`);
      const exited = new Promise<number | null>((resolve) =>
        child.once("exit", (code) => resolve(code)),
      );
      child.kill("SIGTERM");
      assert.equal(await exited, 0, stderr);
      for (const p of ports)
        assert.equal(await portOpen(p), false, `node port ${p} closed after SIGTERM`);
      assert.equal(await portOpen(Number(new URL(event.url).port)), false, "gateway closed");
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
