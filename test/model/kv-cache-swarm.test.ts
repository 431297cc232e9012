// The KV cache through the swarm data plane: the gateway's generator (trunk here, experts behind a
// RemoteExpertHost on expert nodes speaking the real wire protocol over loopback TCP) decodes with
// the cache and produces the same greedy bytes as the in-process model by full recompute, and a
// cached step's forward frames carry one row per sequence.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { generateBytes } from "../../src/model/generate.ts";
import { KvSession } from "../../src/model/kv-cache.ts";
import { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import { MoeTransformer } from "../../src/model/transformer.ts";
import { ExpertNode } from "../../src/swarm/expert-node.ts";
import { type Frame, Op } from "../../src/swarm/frame.ts";
import { ModelTextGenerator } from "../../src/swarm/model-generator.ts";
import { StaticPlacement } from "../../src/swarm/placement.ts";
import { directLinks } from "../../src/swarm/region-links.ts";
import { RemoteExpertHost } from "../../src/swarm/remote-expert-host.ts";
import { tinyConfig } from "./tiny.ts";

describe("KV cache through the swarm (expert nodes on loopback)", () => {
  it("cached generation through the swarm equals in-process full recompute; steps send 1 row", async () => {
    const mc = { ...tinyConfig(), seed: 7 };
    const local = await LocalExpertHost.create(mc, { backend: "js" });
    const model = new MoeTransformer(mc, local);
    const experts = model.expertIds();
    const forwardRows: number[] = [];
    // Three replicas of every expert, as the product places them (a slow call fails over).
    const regions = ["ORD", "IAD", "SJC"];
    const hosts = await Promise.all(
      regions.map(() => LocalExpertHost.create(mc, { backend: "js" })),
    );
    const nodes = regions.map(
      (region, i) =>
        new ExpertNode({
          nodeId: `${region}-0`,
          region,
          host: hosts[i] as LocalExpertHost,
          experts,
          dModel: mc.dModel,
          links: directLinks,
          listenHost: "127.0.0.1",
          onRequest: (frame: Frame) => {
            if (frame.op === Op.forward)
              for (const t of frame.tensors) forwardRows.push(t.dims[0] as number);
            return undefined;
          },
        }),
    );
    const ports = await Promise.all(nodes.map(async (n) => (await n.listen()).port));
    const dispatcher = new RemoteExpertHost({
      registry: new StaticPlacement(
        regions.map((region, i) => ({
          nodeId: `${region}-0`,
          region,
          host: "127.0.0.1",
          port: ports[i] as number,
          experts,
        })),
      ),
      region: "ORD",
      dModel: mc.dModel,
    });
    try {
      const trunk = new MoeTransformer(mc, dispatcher); // same seed: same trunk weights
      const prompt = "Call me Ishmael.";
      const want = await generateBytes(model, new TextEncoder().encode(prompt), {
        maxNewBytes: 24, // 16 + 24 > context 32: the window slides
        temperature: 0,
        topK: 0,
        rng: new Prng(1),
        kvCache: false,
      });
      const gen = new ModelTextGenerator(trunk, "tiny");
      const r = await gen.generate(
        {
          prompt,
          maxTokens: 24,
          temperature: 0,
          topP: 1,
          seed: 1,
          stop: [],
          signal: new AbortController().signal,
        },
        () => {},
      );
      assert.equal(r.text, new TextDecoder().decode(want));

      // Concurrent requests through the swarm share batched passes; each equals its recompute.
      const prompts = ["Some years ago", "x", prompt];
      const wants = await Promise.all(
        prompts.map(async (p) =>
          new TextDecoder().decode(
            await generateBytes(model, new TextEncoder().encode(p), {
              maxNewBytes: 12,
              temperature: 0,
              topK: 0,
              rng: new Prng(1),
              kvCache: false,
            }),
          ),
        ),
      );
      const passes0 = gen.batcher?.stats.passes ?? 0;
      const got = await Promise.all(
        prompts.map((p) =>
          gen.generate(
            {
              prompt: p,
              maxTokens: 12,
              temperature: 0,
              topP: 1,
              seed: 1,
              stop: [],
              signal: new AbortController().signal,
            },
            () => {},
          ),
        ),
      );
      assert.deepEqual(
        got.map((g) => g.text),
        wants,
      );
      assert.ok((gen.batcher?.stats.passes ?? 0) - passes0 < 3 * 12, "requests shared passes");

      // A client that goes away mid-generation fails only its own request, not its pass-mates.
      const quitter = new AbortController();
      const results = await Promise.allSettled(
        prompts.map((p, i) =>
          gen.generate(
            {
              prompt: p,
              maxTokens: 12,
              temperature: 0,
              topP: 1,
              seed: 1,
              stop: [],
              signal: i === 1 ? quitter.signal : new AbortController().signal,
            },
            () => {
              if (i === 1) quitter.abort();
            },
          ),
        ),
      );
      assert.equal(results[1]?.status, "rejected");
      assert.deepEqual(
        [results[0], results[2]].map((r) => (r?.status === "fulfilled" ? r.value.text : r?.reason)),
        [wants[0], wants[2]],
      );

      // One step after a prefill: every forward frame carries exactly one row.
      const session = new KvSession(trunk);
      const seq = Array.from(new TextEncoder().encode(prompt));
      await session.lastLogits(seq);
      assert.ok(Math.max(...forwardRows) > 1, "the prefill sends the prompt's rows");
      forwardRows.length = 0;
      seq.push(0x20);
      await session.lastLogits(seq);
      assert.ok(forwardRows.length >= 3, "at least one expert call per MoE layer");
      assert.deepEqual(new Set(forwardRows), new Set([1]));
    } finally {
      dispatcher.close();
      await Promise.all(nodes.map((n) => n.close()));
      await local.close();
      await Promise.all(hosts.map((h) => h.close()));
    }
  });
});
