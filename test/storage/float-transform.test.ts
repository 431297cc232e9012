import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { decodeRecord, encodeRecord } from "../../src/storage/block-record.ts";
import { cidFor, rawCode } from "../../src/storage/cid.ts";
import {
  float32Resemblance,
  floatDelta,
  floatUndelta,
  fromBytePlanes,
  toBytePlanes,
} from "../../src/storage/float-transform.ts";
import { floatBytes, perturbed } from "./fixtures/store.ts";

function bytes(prng: Prng, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = prng.nextU32() & 0xff;
  return out;
}

describe("float-aware transforms", () => {
  it("byte planes and float deltas are exact inverses for any bytes, length and phase", () => {
    const prng = new Prng(5);
    for (let trial = 0; trial < 300; trial++) {
      const n = prng.int(70);
      const phase = prng.int(4);
      const a = bytes(prng, n);
      const base = bytes(prng, n + prng.int(5));
      assert.deepEqual(fromBytePlanes(toBytePlanes(a, phase), phase), a);
      assert.deepEqual(floatUndelta(floatDelta(a, base, phase), base, phase), a);
    }
  });

  it("a float delta of a slightly moved tensor has mostly zero high bytes", () => {
    const a = floatBytes(1, 4096);
    const b = perturbed(a, 2, 0.0002);
    const d = floatDelta(b, a, 0);
    let zeroTop = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] === 0) zeroTop++;
    assert.ok(zeroTop / 4096 > 0.95, `${zeroTop} of 4096 top bytes are zero`);
    assert.ok(float32Resemblance(b, a, 0, 4096) > 0.9);
    assert.ok(
      float32Resemblance(floatBytes(3, 4096), a, 0, 4096) < 0.7,
      "unrelated tensors are not similar",
    );
  });

  it("records round-trip for every compression, with and without delta, at every phase", () => {
    const base = floatBytes(7, 2000);
    const next = perturbed(base, 8, 0.0003);
    for (const compression of ["none", "zstd", "brotli"] as const) {
      for (const phase of [0, 1, 2, 3]) {
        const plain = next.subarray(phase, 6000 + phase);
        const baseBytes = base.subarray(phase, 6000 + phase);
        const cid = cidFor(rawCode, plain);
        const ref = { bases: [cidFor(rawCode, base)], offset: phase, baseDepth: 0 };
        const rec = encodeRecord({
          cid,
          plaintext: plain,
          phase: phase & 3,
          compression,
          delta: { ref, baseBytes },
        });
        if (compression !== "none")
          assert.ok(rec.bytes.length < plain.length, `${compression} phase ${phase} compresses`);
        const back = decodeRecord(cid, rec.bytes, {
          baseRange: (_b, offset, length) => base.subarray(offset, offset + length),
          dataKey: () => {
            throw new Error("no key");
          },
          block: () => {
            throw new Error("no dictionary");
          },
        });
        assert.deepEqual(Buffer.from(back), Buffer.from(plain), `${compression} phase ${phase}`);
      }
    }
  });
});
