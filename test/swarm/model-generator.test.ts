import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { parseConfigText } from "../../src/config/load.ts";
import { buildLocalModel } from "../../src/model/build.ts";
import { generateBytes } from "../../src/model/generate.ts";
import { ModelTextGenerator, sampleNucleus } from "../../src/swarm/model-generator.ts";
import { GenerationDeadlineError } from "../../src/swarm/text-generator.ts";

describe("nucleus (top-p) sampling", () => {
  it("draws only from the smallest set reaching top_p, in proportion to its probabilities", () => {
    // Probabilities 0.4, 0.3, 0.2, 0.1 (logits at temperature 1), the rest ~0.
    const row = new Float32Array(258).fill(-1e9);
    [0.4, 0.3, 0.2, 0.1].forEach((p, i) => {
      row[10 + i] = Math.log(p);
    });
    row[256] = 100; // a special token: never sampled, whatever its logit
    const rng = new Prng(7);
    const counts = new Map<number, number>();
    const draws = 20_000;
    for (let i = 0; i < draws; i++) {
      const b = sampleNucleus(row, 1, 0.65, rng);
      counts.set(b, (counts.get(b) ?? 0) + 1);
    }
    // 0.4 + 0.3 ≥ 0.65: the nucleus is {10, 11}, renormalised to 4/7 and 3/7.
    assert.deepEqual([...counts.keys()].sort(), [10, 11]);
    const f10 = (counts.get(10) ?? 0) / draws;
    assert.ok(Math.abs(f10 - 4 / 7) < 0.02, `P(10) = ${f10}; want ${4 / 7}`);
    assert.equal(sampleNucleus(row, 0, 0.65, rng), 10, "temperature 0 is greedy");
    const all = new Set<number>();
    for (let i = 0; i < 2000; i++) all.add(sampleNucleus(row, 1, 1, rng));
    assert.deepEqual([...all].sort(), [10, 11, 12, 13], "top_p = 1 keeps every byte");
  });
});

describe("ModelTextGenerator (the gateway's generator over the model)", () => {
  it("greedy text equals the model's own sampler; stop, deadline and top_p are honoured", async () => {
    const { config } = parseConfigText("profile: local\n");
    const { model, host } = await buildLocalModel(config, { backend: "js" });
    try {
      const gen = new ModelTextGenerator(model, "local");
      const base = {
        temperature: 0,
        topP: 1,
        seed: undefined,
        stop: [],
        signal: new AbortController().signal,
      };
      const pieces: string[] = [];
      const r = await gen.generate({ ...base, prompt: "Call me", maxTokens: 6 }, (p) =>
        pieces.push(p),
      );
      const want = await generateBytes(model, Buffer.from("Call me"), {
        maxNewBytes: 6,
        temperature: 0,
        topK: 0,
        rng: new Prng(1),
      });
      assert.equal(r.text, new TextDecoder().decode(want));
      assert.equal(pieces.join(""), r.text);
      assert.deepEqual([r.promptTokens, r.completionTokens, r.finishReason], [7, 6, "length"]);
      if (r.text.length >= 3) {
        const stop = r.text.slice(2, 3);
        const s = await gen.generate(
          { ...base, prompt: "Call me", maxTokens: 6, stop: [stop] },
          () => {},
        );
        assert.equal(s.finishReason, "stop");
        assert.equal(s.text, r.text.slice(0, r.text.indexOf(stop)));
      }
      await assert.rejects(
        gen.generate({ ...base, prompt: "x", maxTokens: 3, deadlineMs: Date.now() - 1 }, () => {}),
        GenerationDeadlineError,
      );
      // A nucleus that holds only the most probable byte samples greedily at any temperature.
      const narrow = await gen.generate(
        { ...base, prompt: "Call me", maxTokens: 6, temperature: 1.5, topP: 1e-6, seed: 3 },
        () => {},
      );
      assert.equal(narrow.text, r.text);
      const aborted = new AbortController();
      aborted.abort(new Error("client went away"));
      await assert.rejects(
        gen.generate({ ...base, prompt: "x", maxTokens: 3, signal: aborted.signal }, () => {}),
        /client went away/,
      );
    } finally {
      await host.close();
    }
  });
});
