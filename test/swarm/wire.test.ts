import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { frameBytesMax } from "../../src/swarm/constants.ts";
import { FrameDecodeError, WireErrorCode } from "../../src/swarm/errors.ts";
import { decodeFrame, encodeFrame, FrameKind, Op } from "../../src/swarm/frame.ts";
import { FrameReader } from "../../src/swarm/frame-stream.ts";

const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

function sample() {
  return encodeFrame({
    kind: FrameKind.request,
    op: Op.backward,
    requestId: 0xdeadbeef,
    budgetMs: 1234,
    region: "AMS",
    traceparent,
    text: "héllo",
    ids: [
      { layer: 2, expert: 7 },
      { layer: 65535, expert: 0 },
    ],
    scalars: [1.5, -0, Number.NaN, 1e300],
    tensors: [
      { dims: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, -6.25]) },
      { dims: [2, 3], data: Float32Array.from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) },
    ],
  });
}

describe("wire frames", () => {
  it("round-trips every field, tensor bytes exactly", () => {
    const buf = sample();
    assert.equal(buf.readUInt32LE(0), buf.length - 4);
    const f = decodeFrame(buf.subarray(4));
    assert.equal(f.kind, FrameKind.request);
    assert.equal(f.op, Op.backward);
    assert.equal(f.requestId, 0xdeadbeef);
    assert.equal(f.budgetMs, 1234);
    assert.equal(f.region, "AMS");
    assert.equal(f.traceparent, traceparent);
    assert.equal(f.text, "héllo");
    assert.deepEqual(f.ids, [
      { layer: 2, expert: 7 },
      { layer: 65535, expert: 0 },
    ]);
    assert.equal(f.scalars[0], 1.5);
    assert.ok(Object.is(f.scalars[1], -0));
    assert.ok(Number.isNaN(f.scalars[2]));
    assert.deepEqual(f.tensors[0]?.dims, [2, 3]);
    assert.deepEqual([...(f.tensors[0]?.data ?? [])], [1, 2, 3, 4, 5, -6.25]);
    assert.deepEqual(f.tensors[1]?.data, Float32Array.from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]));
  });

  it("tensor data is raw little-endian float32 after the descriptor (no JSON)", () => {
    const buf = encodeFrame({
      kind: FrameKind.response,
      op: Op.forward,
      requestId: 1,
      tensors: [{ dims: [1], data: Float32Array.from([1]) }],
    });
    // last 4 bytes are 1.0f little-endian: 00 00 80 3f
    assert.deepEqual([...buf.subarray(buf.length - 4)], [0x00, 0x00, 0x80, 0x3f]);
  });

  it("rejects every truncation with a FrameDecodeError", () => {
    const body = sample().subarray(4);
    for (let n = 0; n < body.length; n++) {
      assert.throws(() => decodeFrame(body.subarray(0, n)), FrameDecodeError, `prefix ${n}`);
    }
  });

  it("names the problem: bad version, trailing bytes, oversized shape", () => {
    const body = Buffer.from(sample().subarray(4));
    const v = Buffer.from(body);
    v[4] = 9;
    assert.throws(
      () => decodeFrame(v),
      (e: FrameDecodeError) =>
        e.code === WireErrorCode.unsupportedVersion && e.requestId === 0xdeadbeef,
    );
    assert.throws(() => decodeFrame(Buffer.concat([body, Buffer.from([0])])), /trailing bytes/);
    const big = encodeFrame({
      kind: FrameKind.request,
      op: Op.forward,
      requestId: 5,
      tensors: [{ dims: [1, 1], data: Float32Array.from([1]) }],
    });
    // set dims to [0xffffffff, 0xffffffff]: must be refused before any allocation
    big.writeUInt32LE(0xffffffff, big.length - 12);
    big.writeUInt32LE(0xffffffff, big.length - 8);
    assert.throws(() => decodeFrame(big.subarray(4)), /larger than the frame/);
  });

  it("fuzz: 3000 mutated and random frames decode or fail with FrameDecodeError only", () => {
    const rng = new Prng(20261125);
    const base = sample().subarray(4);
    let decoded = 0;
    for (let i = 0; i < 3000; i++) {
      let body: Buffer;
      if (i % 3 === 0) {
        body = Buffer.alloc(rng.int(200));
        for (let j = 0; j < body.length; j++) body[j] = rng.int(256);
      } else {
        body = Buffer.from(base);
        const flips = 1 + rng.int(4);
        for (let j = 0; j < flips; j++) body[rng.int(body.length)] = rng.int(256);
        if (i % 3 === 2) body = body.subarray(0, rng.int(body.length + 1));
      }
      try {
        decodeFrame(body);
        decoded++;
      } catch (e) {
        assert.ok(e instanceof FrameDecodeError, `iteration ${i}: ${String(e)}`);
      }
    }
    assert.ok(decoded > 0, "some single-byte mutations (tensor data) still decode");
  });

  it("the stream reader yields the same frames however the bytes are split", () => {
    const a = sample();
    const b = encodeFrame({ kind: FrameKind.request, op: Op.ping, requestId: 2 });
    const stream = Buffer.concat([a, b, a]);
    for (const step of [1, 3, 7, 64, stream.length]) {
      const reader = new FrameReader();
      const got: Buffer[] = [];
      for (let o = 0; o < stream.length; o += step)
        got.push(...reader.push(stream.subarray(o, o + step)));
      assert.equal(got.length, 3, `step ${step}`);
      assert.equal(decodeFrame(got[1] as Buffer).op, Op.ping);
      assert.equal(reader.buffered, 0);
    }
  });

  it("the stream reader refuses a length above frameBytesMax before buffering it", () => {
    const reader = new FrameReader();
    const head = Buffer.alloc(4);
    head.writeUInt32LE(frameBytesMax + 1);
    assert.throws(
      () => reader.push(head),
      (e: FrameDecodeError) => e.code === WireErrorCode.frameTooLarge,
    );
  });

  it("refuses to encode what a peer would refuse", () => {
    assert.throws(
      () =>
        encodeFrame({
          kind: FrameKind.request,
          op: Op.forward,
          requestId: 1,
          tensors: [{ dims: [2, 2], data: new Float32Array(3) }],
        }),
      /holds 4 values/,
    );
    assert.throws(
      () => encodeFrame({ kind: FrameKind.request, op: Op.ping, requestId: 1, region: "ams" }),
      /three-letter/,
    );
  });
});

describe("stop sequences", () => {
  it("cut before the first stop string, even one split across pieces, and never emit any of it", async () => {
    const { StopSequenceFilter } = await import("../../src/swarm/text-generator.ts");
    const run = (pieces: string[], stops: string[]) => {
      const f = new StopSequenceFilter(stops);
      let out = "";
      for (const p of pieces) {
        out += f.push(p);
        if (f.stopped) return { out, stopped: true };
      }
      return { out: out + f.flush(), stopped: false };
    };
    assert.deepEqual(run(["l", "#", "l", "#"], ["#l"]), { out: "l", stopped: true });
    assert.deepEqual(run(["ab", "cd", "ef"], ["cde", "zz"]), { out: "ab", stopped: true });
    assert.deepEqual(run(["ab", "c"], ["cd"]), { out: "abc", stopped: false });
    assert.deepEqual(run(["hello world"], []), { out: "hello world", stopped: false });
    assert.deepEqual(run(["x", "END"], ["END", "ND"]), { out: "x", stopped: true });
  });
});
