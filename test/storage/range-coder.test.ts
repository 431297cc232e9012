import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { decodeRecord, encodeRecord, parseRecordHeader } from "../../src/storage/block-record.ts";
import { cidFor, rawCode } from "../../src/storage/cid.ts";
import {
  RangeCoderError,
  rangeDecodeBytes,
  rangeEncodeBytes,
} from "../../src/storage/range-coder.ts";
import { floatBytes } from "./fixtures/store.ts";

/** Bytes that are `common` with probability p, else uniform. */
function skewed(prng: Prng, n: number, p: number, common = 0x3c): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = prng.next() < p ? common : prng.nextU32() & 0xff;
  return out;
}

describe("range coder (byte planes)", () => {
  it("decodes exactly what it encoded, with and without context, for any length", () => {
    const prng = new Prng(11);
    for (const n of [0, 1, 2, 5, 255, 4096, 70_000]) {
      for (const p of [0, 0.5, 0.99, 1]) {
        const data = skewed(prng, n, p);
        const context = skewed(prng, n, 0.3);
        for (const ctx of [undefined, context]) {
          const coded = rangeEncodeBytes(data, ctx);
          const back = rangeDecodeBytes(coded, n, ctx);
          assert.ok(Buffer.from(back).equals(Buffer.from(data)), `n ${n} p ${p} ctx ${!!ctx}`);
        }
      }
    }
  });

  it("codes a byte predictable from its context in far fewer bits than order 0 can", () => {
    const prng = new Prng(12);
    const n = 100_000;
    const context = skewed(prng, n, 0); // uniform context bytes
    const data = context.map((c) => (c * 7 + 3) & 0xff); // a function of the context
    const order0 = rangeEncodeBytes(data).length;
    const withContext = rangeEncodeBytes(data, context).length;
    assert.ok(order0 > 0.95 * n, `order 0: ${order0} B (the bytes are uniform)`);
    assert.ok(withContext < 0.2 * n, `with context: ${withContext} B`);
    // A skewed source (90% one byte) costs about its entropy (~1.3 bits), not 8.
    const s = skewed(prng, n, 0.9);
    assert.ok(rangeEncodeBytes(s).length < (1.6 / 8) * n);
  });

  it("any flipped bit, cut or extension of a payload is an error or different bytes", () => {
    const prng = new Prng(13);
    const data = skewed(prng, 800, 0.8);
    const coded = rangeEncodeBytes(data);
    const same = (bad: Uint8Array) => {
      try {
        return Buffer.from(rangeDecodeBytes(bad, data.length)).equals(Buffer.from(data));
      } catch (err) {
        assert.ok(err instanceof RangeCoderError, String(err));
        return false;
      }
    };
    for (let i = 0; i < coded.length; i++) {
      for (const bit of [0, 7]) {
        const bad = coded.slice();
        bad[i] = (bad[i] as number) ^ (1 << bit);
        assert.equal(same(bad), false, `byte ${i} bit ${bit} flipped goes unnoticed`);
      }
    }
    assert.equal(same(coded.subarray(0, coded.length - 1)), false, "cut");
    assert.equal(same(Uint8Array.from([...coded, 0])), false, "extended");
    assert.equal(same(coded), true);
  });

  it("records with range-coded planes round-trip, with the base as context only", () => {
    // An unrelated base (below any similarity threshold) still serves as context: exact anyway.
    for (const phase of [0, 1, 2, 3]) {
      const base = floatBytes(21, 3000);
      const plain = floatBytes(22, 3000).subarray(phase, 10_000 + phase);
      const baseBytes = base.subarray(phase, 10_000 + phase);
      const cid = cidFor(rawCode, plain);
      const ref = { bases: [cidFor(rawCode, base)], offset: phase, baseDepth: 0 };
      for (const compression of ["zstd", "brotli"] as const) {
        const rec = encodeRecord({
          cid,
          plaintext: plain,
          phase,
          compression,
          context: { ref, baseBytes },
        });
        const h = parseRecordHeader(rec.bytes);
        assert.ok(h.planes && h.coders, "byte planes with a coder table");
        assert.ok(rec.bytes.length < plain.length, "compresses");
        const back = decodeRecord(cid, rec.bytes, {
          baseRange: (_b, offset, length) => base.subarray(offset, offset + length),
          dataKey: () => {
            throw new Error("no key");
          },
          block: () => {
            throw new Error("no dictionary");
          },
        });
        assert.ok(Buffer.from(back).equals(Buffer.from(plain)), `${compression} phase ${phase}`);
      }
    }
  });

  it("a slightly moved tensor is coded against its base's planes: smaller than without", () => {
    const base = floatBytes(31, 50_000);
    const f = new Float32Array(base.slice().buffer);
    const prng = new Prng(32);
    for (let i = 0; i < f.length; i++) f[i] = (f[i] as number) * (1 + 0.3 * prng.normal());
    const plain = new Uint8Array(f.buffer);
    const cid = cidFor(rawCode, plain);
    const ref = { bases: [cidFor(rawCode, base)], offset: 0, baseDepth: 0 };
    const alone = encodeRecord({ cid, plaintext: plain, phase: 0, compression: "zstd" });
    const withBase = encodeRecord({
      cid,
      plaintext: plain,
      phase: 0,
      compression: "zstd",
      context: { ref, baseBytes: base },
    });
    assert.equal(parseRecordHeader(withBase.bytes).delta?.kind, "context");
    assert.ok(
      withBase.bytes.length < 0.97 * alone.bytes.length,
      `${withBase.bytes.length} vs ${alone.bytes.length} B`,
    );
  });
});
