// The span section of wire frames (src/swarm/frame-spans.ts): round trip, the flag bits, every
// validation rule, and a fuzz run over mutated span-carrying frames (decode or FrameDecodeError,
// nothing else).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { FrameDecodeError } from "../../src/swarm/errors.ts";
import { decodeFrame, encodeFrame, FrameKind, Op } from "../../src/swarm/frame.ts";
import {
  frameSpansMax,
  spanRecordBytes,
  spanSectionHeaderBytes,
  type WireSpan,
  WireSpanName,
  WireSpanStatus,
} from "../../src/swarm/frame-spans.ts";

const span: WireSpan = {
  traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
  spanId: "00f067aa0ba902b7",
  parentSpanId: "b7ad6b7169203331",
  name: WireSpanName.nodeForward,
  status: WireSpanStatus.ok,
  startSeconds: 1_764_000_000,
  startNanos: 999_999_990,
  durationNs: 2 ** 40 + 12_345,
  layer: 3,
  expert: 65535,
  experts: 16,
  tokens: 70_000,
};

function reply(spans: readonly WireSpan[]): Buffer {
  return encodeFrame({
    kind: FrameKind.response,
    op: Op.forward,
    requestId: 9,
    region: "AMS",
    scalars: [1],
    tensors: [{ dims: [1, 2], data: Float32Array.from([1, 2]) }],
    spans,
  });
}

function decodes(body: Buffer): boolean {
  try {
    decodeFrame(body);
    return true;
  } catch (e) {
    assert.ok(e instanceof FrameDecodeError, String(e));
    return false;
  }
}

describe("span section of wire frames", () => {
  it("round-trips spans after the tensors, with flag bit 1; none adds no byte and no flag", () => {
    const second: WireSpan = {
      ...span,
      spanId: "1111111111111111",
      parentSpanId: "",
      name: WireSpanName.nodeBackward,
      status: WireSpanStatus.error,
      startSeconds: span.startSeconds + 1,
      startNanos: 20,
      durationNs: 0,
    };
    const plain = reply([]);
    const buf = reply([span, second]);
    assert.equal(plain.readUInt8(4 + 7), 0);
    assert.equal(buf.readUInt8(4 + 7), 2);
    assert.equal(buf.length - plain.length, spanSectionHeaderBytes + 2 * spanRecordBytes);
    const f = decodeFrame(buf.subarray(4));
    assert.deepEqual(f.spans, [span, second]);
    assert.equal(f.spansWanted, false);
    assert.deepEqual([...(f.tensors[0]?.data ?? [])], [1, 2]);
    assert.deepEqual(decodeFrame(plain.subarray(4)).spans, []);
  });

  it("a request's spansWanted is flag bit 0", () => {
    const req = encodeFrame({
      kind: FrameKind.request,
      op: Op.ping,
      requestId: 1,
      spansWanted: true,
    });
    assert.equal(req.readUInt8(4 + 7), 1);
    assert.equal(decodeFrame(req.subarray(4)).spansWanted, true);
  });

  it("the encoder refuses spans it must not send", () => {
    const bad: Partial<WireSpan>[] = [
      { traceId: "0".repeat(32) },
      { traceId: "ABCDEF".padEnd(32, "0") },
      { spanId: "0".repeat(16) },
      { parentSpanId: "123" },
      { name: 9 as WireSpanName },
      { status: 3 as WireSpanStatus },
      { durationNs: 2 ** 53 },
      { durationNs: -1 },
      { startNanos: 1e9 },
      { tokens: 2 ** 32 },
      { experts: 65536 },
    ];
    for (const b of bad)
      assert.throws(() => reply([{ ...span, ...b }]), RangeError, JSON.stringify(b));
    assert.throws(() => reply(Array.from({ length: frameSpansMax + 1 }, () => span)), RangeError);
    // Starts more than 2^32 ns apart cannot share one base.
    assert.throws(
      () => reply([span, { ...span, startSeconds: span.startSeconds + 5 }]),
      RangeError,
    );
  });

  it("the decoder refuses unknown flags, a bad count, a bad length, zero ids, unknown names", () => {
    const good = reply([span]).subarray(4);
    const at = good.length - spanRecordBytes - spanSectionHeaderBytes;
    const mutate = (f: (b: Buffer) => Buffer | undefined) => {
      const b = Buffer.from(good);
      return f(b) ?? b;
    };
    const cases: [string, Buffer][] = [
      ["unknown flag", mutate((b) => void b.writeUInt8(2 | 4, 7))],
      ["flag without section", mutate((b) => b.subarray(0, at))],
      ["section without flag", mutate((b) => void b.writeUInt8(0, 7))],
      ["count 0", mutate((b) => void b.writeUInt8(0, at + 8))],
      ["count 2, one record", mutate((b) => void b.writeUInt8(2, at + 8))],
      ["count above max", mutate((b) => void b.writeUInt8(frameSpansMax + 1, at + 8))],
      ["base ns ≥ 1e9", mutate((b) => void b.writeUInt32LE(1e9, at + 4))],
      ["truncated record", mutate((b) => b.subarray(0, b.length - 1))],
      ["extra byte", Buffer.concat([good, Buffer.from([0])])],
      ["zero trace id", mutate((b) => void b.fill(0, at + 9, at + 25))],
      ["zero span id", mutate((b) => void b.fill(0, at + 25, at + 33))],
      ["unknown name", mutate((b) => void b.writeUInt8(0, at + 9 + 32))],
      ["unknown status", mutate((b) => void b.writeUInt8(7, at + 9 + 33))],
      ["duration ≥ 2^53", mutate((b) => void b.writeUInt32LE(0x20_0000, at + 9 + 42))],
    ];
    assert.equal(decodes(good), true);
    for (const [what, body] of cases) assert.equal(decodes(body), false, what);
  });

  it("fuzz: 3000 mutated and truncated span-carrying frames decode or fail with FrameDecodeError only", () => {
    const rng = new Prng(8_2026_11_25);
    const base = reply([span, { ...span, spanId: "2222222222222222" }]).subarray(4);
    const sectionAt = base.length - 2 * spanRecordBytes - spanSectionHeaderBytes;
    let decoded = 0;
    for (let i = 0; i < 3000; i++) {
      let body = Buffer.from(base);
      const flips = 1 + rng.int(4);
      for (let j = 0; j < flips; j++) {
        // Most mutations land in the span section, some in the header's flags.
        const o = i % 5 === 0 ? 7 : sectionAt + rng.int(body.length - sectionAt);
        body[o] = rng.int(256);
      }
      if (i % 3 === 2) body = body.subarray(0, rng.int(body.length + 1));
      if (decodes(body)) decoded++;
    }
    assert.ok(decoded > 0, "mutations of a span's times or attributes still decode");
  });
});
