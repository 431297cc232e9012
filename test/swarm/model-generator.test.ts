import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { parseConfigText } from "../../src/config/load.ts";
import { buildLocalModel } from "../../src/model/build.ts";
import { generateBytes } from "../../src/model/generate.ts";
import { ModelTextGenerator } from "../../src/swarm/model-generator.ts";
import {
  GenerationDeadlineError,
  type UnsupportedParameterError,
} from "../../src/swarm/text-generator.ts";

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
      await assert.rejects(
        gen.generate({ ...base, prompt: "x", maxTokens: 3, topP: 0.9 }, () => {}),
        (e: UnsupportedParameterError) => e.param === "top_p",
      );
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
