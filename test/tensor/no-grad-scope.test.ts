import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setImmediate as tick } from "node:timers/promises";
import { isGradEnabled, noGrad, noGradAsync } from "../../src/tensor/tensor.ts";

describe("noGrad scope", () => {
  it("is off inside noGrad and restored after, also on throw", () => {
    assert.equal(isGradEnabled(), true);
    noGrad(() => assert.equal(isGradEnabled(), false));
    assert.throws(() =>
      noGrad(() => {
        throw new Error("boom");
      }),
    );
    assert.equal(isGradEnabled(), true);
  });

  it("does not leak between concurrent async callers", async () => {
    // Two interleaved no-grad generations and one recording caller: with a global flag saved and
    // restored around awaits, the second generation to finish would restore "off" for good.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const first = noGradAsync(async () => {
      await gate;
      return isGradEnabled();
    });
    const second = noGradAsync(async () => {
      await tick();
      return isGradEnabled();
    });
    const recording = (async () => {
      await tick();
      return isGradEnabled();
    })();
    assert.equal(await second, false);
    assert.equal(await recording, true);
    release();
    assert.equal(await first, false);
    assert.equal(isGradEnabled(), true);
  });
});
