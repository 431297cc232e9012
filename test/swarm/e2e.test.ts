// End-to-end: expert nodes as real child processes (`moe-swarm node`) on loopback, the dispatcher
// in this process. Same expert outputs as the in-process model's experts; under a bounded load,
// kill -9 of one node and then of a whole emulated region loses no request.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { Prng } from "../../src/common/prng.ts";
import { loadConfig } from "../../src/config/load.ts";
import { buildLocalModel } from "../../src/model/build.ts";
import { allExpertIds, modelConfigFrom } from "../../src/model/config.ts";
import type { ExpertId } from "../../src/model/expert.ts";
import { generateBytes } from "../../src/model/generate.ts";
import { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import { type ChildNode, spawnPlan, stopChild } from "../../src/swarm/child-nodes.ts";
import { startGateway } from "../../src/swarm/gateway.ts";
import { planFromConfig, plannedEntries, StaticPlacement } from "../../src/swarm/placement.ts";
import { regionLinksFromConfig } from "../../src/swarm/region-links.ts";
import { RemoteExpertHost } from "../../src/swarm/remote-expert-host.ts";
import { noGradAsync } from "../../src/tensor/tensor.ts";

const dir = mkdtempSync(join(tmpdir(), "moe-swarm-e2e-"));
const configPath = join(dir, "swarm.yaml");
// local profile (d_model 64, 26 experts), two nodes per region, emulated latency on
writeFileSync(configPath, "profile: local\nswarm:\n  nodes_per_region: 2\n");
const { config } = loadConfig(configPath);
const mc = modelConfigFrom(config);
const d = mc.dModel;

let nodes: ChildNode[] = [];
let dispatcher: RemoteExpertHost;
let reference: LocalExpertHost;
let placement: StaticPlacement;

describe("swarm end to end (child processes)", { timeout: 120_000 }, () => {
  before(async () => {
    const plan = planFromConfig(config);
    nodes = await spawnPlan(plan, () => ({ configPath, backend: "js" }));
    placement = new StaticPlacement(plannedEntries(nodes, plan));
    dispatcher = new RemoteExpertHost({
      registry: placement,
      region: "ORD",
      dModel: d,
      links: regionLinksFromConfig(config),
    });
    reference = await LocalExpertHost.create(mc, { backend: "js" });
  });

  after(async () => {
    dispatcher?.close();
    await Promise.all(nodes.map((n) => stopChild(n.child)));
    await reference?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("every expert answers through the swarm exactly as the in-process model's expert", async () => {
    assert.equal(nodes.length, 10);
    const ids = allExpertIds(mc);
    const rng = new Prng(11);
    const x = Float32Array.from({ length: 3 * d }, () => rng.normal());
    const got = await Promise.all(ids.map((id) => dispatcher.forward(id, x, 3)));
    for (const [i, id] of ids.entries())
      assert.deepEqual(got[i], await reference.forward(id, x, 3), `L${id.layer}.E${id.expert}`);
  });

  it("the gateway's trunk over the swarm gives the same logits as the in-process model; the openai client gets the same greedy text", async () => {
    const gateway = await startGateway(config, {
      placement,
      port: 0,
      host: "127.0.0.1",
      modelId: "local",
      trunk: "js", // as the in-process reference, for bit-equal logits
    });
    try {
      const local = await buildLocalModel(config, { backend: "js" });
      const text = "Call me Ishmael. Some years ago";
      const ids = Int32Array.from(Buffer.from(text, "utf8"));
      const remote = await noGradAsync(() => gateway.trunk.forward(ids, 1, ids.length));
      const inProcess = await noGradAsync(() => local.model.forward(ids, 1, ids.length));
      assert.deepEqual(remote.logits.data, inProcess.logits.data);
      const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "unused", maxRetries: 0 });
      const r = await client.completions.create({
        model: "local",
        prompt: text,
        max_tokens: 8,
        temperature: 0,
      });
      const want = await generateBytes(local.model, Buffer.from(text, "utf8"), {
        maxNewBytes: 8,
        temperature: 0,
        topK: 0,
        rng: new Prng(1),
      });
      assert.equal(r.choices[0]?.text, new TextDecoder().decode(want));
      assert.equal(r.usage?.completion_tokens, 8);
      await local.host.close();
    } finally {
      await gateway.close();
    }
  });

  it("kill -9 of a node, then of a whole region, under load: zero failed requests, failovers reported", async () => {
    const ids = allExpertIds(mc);
    const rng = new Prng(12);
    const x = Float32Array.from({ length: 2 * d }, () => rng.normal());
    const want = new Map<string, Float32Array>();
    for (const id of ids) want.set(`${id.layer}.${id.expert}`, await reference.forward(id, x, 2));
    let ok = 0;
    let failed = 0;
    let stop = false;
    const errors: string[] = [];
    const worker = async (seed: number) => {
      const r = new Prng(seed);
      while (!stop) {
        const id = ids[r.int(ids.length)] as ExpertId;
        try {
          const y = await dispatcher.forward(id, x, 2);
          assert.deepEqual(y, want.get(`${id.layer}.${id.expert}`));
          ok++;
        } catch (err) {
          failed++;
          errors.push((err as Error).message);
        }
      }
    };
    // HTTP load through a gateway too: greedy completions of varied prompts, checked against the
    // text the same gateway gave before any fault.
    const gateway = await startGateway(config, {
      placement,
      port: 0,
      host: "127.0.0.1",
      modelId: "local",
    });
    const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const prompts = Array.from(
      { length: 12 },
      (_, i) => `${"abcdefghijklmnopqrstuvwxyz".slice(i, i + 9)} ${i}`,
    );
    const complete = async (prompt: string) =>
      (await client.completions.create({ model: "local", prompt, max_tokens: 3, temperature: 0 }))
        .choices[0]?.text;
    const wantText = new Map<string, string | undefined>();
    for (const p of prompts) wantText.set(p, await complete(p));
    let httpOk = 0;
    let httpFailed = 0;
    const httpWorker = async (seed: number) => {
      const r = new Prng(seed);
      while (!stop) {
        const p = prompts[r.int(prompts.length)] as string;
        try {
          assert.equal(await complete(p), wantText.get(p));
          httpOk++;
        } catch (err) {
          httpFailed++;
          errors.push(`HTTP: ${(err as Error).message}`);
        }
      }
    };
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    // 4 direct expert callers + 2 HTTP clients
    const load = Promise.all([...[1, 2, 3, 4].map(worker), ...[5, 6].map(httpWorker)]);
    await sleep(800);
    const victim = nodes.find((n) => n.nodeId === "IAD-0") as ChildNode;
    victim.child.kill("SIGKILL");
    const killedAt = performance.now();
    const before = ok;
    while (ok === before || dispatcher.counters.failovers === 0) {
      if (performance.now() - killedAt > 10_000) break;
      await sleep(5);
    }
    const recoveryMs = (dispatcher.counters.lastFailoverAtMs ?? Number.NaN) - killedAt;
    await sleep(800);
    for (const n of nodes.filter((n) => n.region === "AMS")) n.child.kill("SIGKILL");
    await sleep(1200);
    stop = true;
    await load;
    await dispatcher.probeAll(500); // nodes no call happened to hit are found by the probe
    const swarmStats = (await (await fetch(`${gateway.url}/v1/swarm`)).json()) as {
      swarm: { dispatch: { failovers: number }; nodes: { nodeId: string; healthy: boolean }[] };
    };
    await gateway.close();
    const down = dispatcher
      .nodeStats()
      .filter((s) => !s.healthy)
      .map((s) => s.nodeId)
      .sort();
    console.log(
      `# gateway: ${httpOk} completions, ${httpFailed} failed, failovers ${swarmStats.swarm.dispatch.failovers}, nodes marked down ${swarmStats.swarm.nodes.filter((n) => !n.healthy).map((n) => n.nodeId)}`,
    );
    console.log(
      `# served ${ok} requests, ${failed} failed; failovers ${dispatcher.counters.failovers}, hedges ${dispatcher.counters.hedges}; first failover ${recoveryMs.toFixed(1)} ms after kill -9; down: ${down.join(", ")}`,
    );
    assert.equal(failed + httpFailed, 0, errors.slice(0, 3).join("\n"));
    assert.ok(httpOk > 5, `only ${httpOk} completions served`);
    assert.ok(
      swarmStats.swarm.dispatch.failovers >= 1,
      "the gateway reports the failover in /v1/swarm",
    );
    assert.ok(ok > 50, `only ${ok} requests served`);
    assert.ok(dispatcher.counters.failovers >= 1, "the failover is reported");
    assert.deepEqual(down, ["AMS-0", "AMS-1", "IAD-0"]);
  });
});
