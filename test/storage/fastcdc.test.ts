import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { loadConfig } from "../../src/config/load.ts";
import { StorageError } from "../../src/storage/errors.ts";
import { chunkSizesFromAverage, FastCdc } from "../../src/storage/fastcdc.ts";

function randomBytes(seed: number, n: number): Uint8Array {
  const p = new Prng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = p.nextU32() & 0xff;
  return out;
}

function chunksOf(cdc: FastCdc, data: Uint8Array): string[] {
  let start = 0;
  return cdc.cuts(data).map((end) => {
    const s = Buffer.from(data.subarray(start, end)).toString("base64");
    start = end;
    return s;
  });
}

describe("FastCDC", () => {
  it("takes min/avg/max from the config's chunk_size (avg/4, avg, avg·4)", () => {
    const { config } = loadConfig();
    const sizes = chunkSizesFromAverage(config.checkpoint_strategy.deduplication.chunk_size.bytes);
    assert.deepEqual(sizes, { minBytes: 1_000_000, avgBytes: 4_000_000, maxBytes: 16_000_000 });
    assert.throws(
      () => chunkSizesFromAverage(10),
      (e: unknown) => e instanceof StorageError && /chunk_size/.test(e.message),
    );
  });

  it("cuts concatenate to the input, chunks within [min, max] except the last, near the average", () => {
    const sizes = chunkSizesFromAverage(1024);
    const cdc = new FastCdc(sizes);
    const data = randomBytes(1, 400_000);
    const cuts = cdc.cuts(data);
    assert.equal(cuts.at(-1), data.length);
    let prev = 0;
    cuts.forEach((c, k) => {
      const len = c - prev;
      assert.ok(len <= sizes.maxBytes, `chunk ${k} of ${len} B`);
      if (k < cuts.length - 1) assert.ok(len >= sizes.minBytes, `chunk ${k} of ${len} B`);
      prev = c;
    });
    const mean = data.length / cuts.length;
    assert.ok(mean > 0.7 * sizes.avgBytes && mean < 1.5 * sizes.avgBytes, `mean chunk ${mean} B`);
    assert.deepEqual(cdc.cuts(data), cuts, "deterministic");
    assert.deepEqual(cdc.cuts(new Uint8Array(0)), []);
  });

  it("an insertion changes only the chunks near it", () => {
    const cdc = new FastCdc(chunkSizesFromAverage(1024));
    const data = randomBytes(2, 200_000);
    const edited = new Uint8Array(data.length + 7);
    edited.set(data.subarray(0, 100_000));
    edited.set([1, 2, 3, 4, 5, 6, 7], 100_000);
    edited.set(data.subarray(100_000), 100_007);
    const before = new Set(chunksOf(cdc, data));
    const after = chunksOf(cdc, edited);
    const shared = after.filter((c) => before.has(c)).length;
    assert.ok(shared >= after.length - 4, `${shared} of ${after.length} chunks shared`);
  });
});
