import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { decodeRecord, encodeRecord, parseRecordHeader } from "../../src/storage/block-record.ts";
import { cidFor, rawCode } from "../../src/storage/cid.ts";
import {
  decodeFloatBlock,
  decodeFloats,
  encodeFloatBlock,
  encodeFloats,
} from "../../src/storage/float-coder.ts";
import { RangeCoderError } from "../../src/storage/range-coder.ts";
import { floatBytes, perturbed } from "./fixtures/store.ts";

/** Words mixing every kind of float32 bit pattern: normal, zero, -0, subnormal, inf, NaN, noise. */
function wildWords(prng: Prng, n: number): Uint32Array {
  const specials = [
    0, 0x8000_0000, 1, 0x8000_0001, 0x7f_ffff, 0x7f80_0000, 0xff80_0000, 0x7fc0_0001,
  ];
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const r = prng.next();
    if (r < 0.1) out[i] = specials[prng.int(specials.length)] as number;
    else if (r < 0.3) out[i] = prng.nextU32();
    else out[i] = new Uint32Array(new Float32Array([prng.normal() * 0.02]).buffer)[0] as number;
  }
  return out;
}

/** `base` with each float moved by a relative step of `scale` (and a few sign flips). */
function moved(prng: Prng, base: Uint32Array, scale: number): Uint32Array {
  const f = new Float32Array(base.slice().buffer);
  for (let i = 0; i < f.length; i++) {
    const v = f[i] as number;
    if (Number.isFinite(v)) f[i] = v * (1 + scale * prng.normal()) + (prng.next() < 0.01 ? -v : 0);
  }
  return new Uint32Array(f.buffer);
}

const noBase = {
  dataKey: () => {
    throw new Error("no key");
  },
  block: () => {
    throw new Error("no dictionary");
  },
};

describe("float coder (sign + exponent given the base, mantissa class, raw noise)", () => {
  it("decodes exactly what it encoded, for any bit patterns, with and without a base", () => {
    const prng = new Prng(41);
    for (const n of [0, 1, 2, 3, 17, 1000, 20_000]) {
      const base = wildWords(prng, n);
      for (const x of [wildWords(prng, n), moved(prng, base, 0.01), moved(prng, base, 1), base]) {
        for (const b of [undefined, base]) {
          const back = decodeFloats(encodeFloats(x, b), n, b);
          assert.deepEqual(back, x, `n ${n} base ${b !== undefined}`);
        }
      }
    }
  });

  it("blocks round-trip at every phase and length, edges raw, with the base when it helps", () => {
    const prng = new Prng(42);
    for (let trial = 0; trial < 120; trial++) {
      const n = prng.int(trial < 100 ? 40 : 40_000);
      const phase = prng.int(4);
      const baseWords = wildWords(prng, (n >> 2) + 2);
      const base = new Uint8Array(baseWords.buffer).subarray(0, n + prng.int(3));
      const x = new Uint8Array(moved(prng, baseWords, 0.001).buffer).subarray(0, n);
      const coded = encodeFloatBlock(x, phase, base);
      const back = decodeFloatBlock(coded.bytes, n, phase, coded.usedBase ? base : undefined);
      assert.deepEqual(back, x, `trial ${trial} n ${n} phase ${phase}`);
      const alone = encodeFloatBlock(x, phase, undefined);
      assert.equal(alone.usedBase, false);
      assert.deepEqual(decodeFloatBlock(alone.bytes, n, phase, undefined), x);
    }
  });

  it("costs what the move carries: small moves and zeros are cheap, noise stays near 32 bits", () => {
    const prng = new Prng(43);
    const n = 50_000;
    const base = new Uint32Array(floatBytes(44, n).buffer);
    const small = moved(prng, base, 1e-4);
    const large = moved(prng, base, 1);
    const withBase = encodeFloats(small, base).length;
    const alone = encodeFloats(small, undefined).length;
    // A relative move of 1e-4 leaves ~10 significant bits of the mantissa difference.
    assert.ok(withBase < 0.55 * 4 * n, `small move given the base: ${withBase} B`);
    assert.ok(alone > 0.75 * 4 * n, `the same floats alone: ${alone} B`);
    // A float that moved by its own size: the base still tells its binade, never worse than alone.
    const largeWith = encodeFloats(large, base).length;
    assert.ok(largeWith < 1.01 * encodeFloats(large, undefined).length, `${largeWith} B`);
    // Zeros (untouched embedding rows' optimizer state) cost a fraction of a bit each.
    assert.ok(encodeFloats(new Uint32Array(n), undefined).length < n / 50);
    // Uniform bit patterns cannot be compressed (the coder's sparse contexts even cost a few
    // percent over raw): a record then keeps a smaller layout, at most the header over raw.
    const noise = new Uint8Array(new Uint32Array(n).map(() => prng.nextU32()).buffer);
    const rec = encodeRecord({
      cid: cidFor(rawCode, noise),
      plaintext: noise,
      phase: 0,
      compression: "zstd",
    });
    assert.ok(rec.bytes.length <= noise.length + 32, `${rec.bytes.length} B`);
  });

  it("any flipped bit, cut or extension of a payload is an error or different floats", () => {
    const prng = new Prng(45);
    const base = wildWords(prng, 300);
    const x = moved(prng, base, 0.05);
    const coded = encodeFloats(x, base);
    const same = (bad: Uint8Array) => {
      try {
        const back = decodeFloats(bad, x.length, base);
        return back.every((w, i) => w === x[i]);
      } catch (err) {
        assert.ok(err instanceof RangeCoderError, String(err));
        return false;
      }
    };
    for (let i = 0; i < coded.length; i++) {
      for (const bit of [0, 3, 7]) {
        const bad = coded.slice();
        bad[i] = (bad[i] as number) ^ (1 << bit);
        assert.equal(same(bad), false, `byte ${i} bit ${bit} flipped goes unnoticed`);
      }
    }
    assert.equal(same(coded.subarray(0, coded.length - 1)), false, "cut");
    assert.equal(same(Uint8Array.from([...coded, 0])), false, "extended");
    assert.equal(same(coded.subarray(0, 3)), false, "shorter than its header");
    assert.equal(same(coded), true);
  });

  it("records choose the float coder for a moved tensor and round-trip in every compressed tier", () => {
    const dataKey = new Uint8Array(32).fill(7);
    for (const phase of [0, 1, 2, 3]) {
      const base = floatBytes(46, 3000);
      const next = perturbed(base, 47, 0.0003);
      const plain = next.subarray(phase, 10_000 + phase);
      const baseBytes = base.subarray(phase, 10_000 + phase);
      const cid = cidFor(rawCode, plain);
      const ref = { bases: [cidFor(rawCode, base)], offset: phase, baseDepth: 0 };
      for (const compression of ["zstd", "brotli"] as const) {
        for (const how of ["delta", "context", "none"] as const) {
          // The cold tier seals the float-coded payload like any other.
          const seal = compression === "brotli" ? { keyId: "k1", dataKey } : undefined;
          const rec = encodeRecord({
            cid,
            plaintext: plain,
            phase,
            compression,
            ...(how === "none" ? {} : { [how]: { ref, baseBytes } }),
            ...(seal !== undefined ? { seal } : {}),
          });
          const h = parseRecordHeader(rec.bytes);
          // Without a base these i.i.d. floats have no neighbour context to use: any layout wins.
          if (how !== "none") {
            assert.ok(h.floats, `${compression} ${how} phase ${phase}: float-coded`);
            assert.equal(h.delta?.kind, "context");
          }
          assert.equal(h.keyId, seal?.keyId);
          const back = decodeRecord(cid, rec.bytes, {
            ...noBase,
            dataKey: () => dataKey,
            baseRange: (_b, offset, length) => base.subarray(offset, offset + length),
          });
          assert.ok(Buffer.from(back).equals(Buffer.from(plain)), `${compression} ${how} ${phase}`);
        }
      }
    }
  });

  it("a header with the float coder and byte planes, or as a float delta, is refused", () => {
    const plain = floatBytes(48, 2000);
    const base = perturbed(plain, 49, 0.01);
    const cid = cidFor(rawCode, plain);
    const ref = { bases: [cidFor(rawCode, base)], offset: 0, baseDepth: 0 };
    const rec = encodeRecord({
      cid,
      plaintext: plain,
      phase: 0,
      compression: "zstd",
      context: { ref, baseBytes: base },
    });
    assert.ok(parseRecordHeader(rec.bytes).floats);
    for (const [flags, why] of [
      [64 | 1, /no byte planes/],
      [64 | 8, /no dictionary|no byte planes/],
      [64 | 2, /as context, not as a float delta/],
    ] as const) {
      const bad = rec.bytes.slice();
      bad[5] = flags;
      assert.throws(() => parseRecordHeader(bad), why);
    }
  });
});
