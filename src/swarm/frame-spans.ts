// The span section of a wire frame (frame.ts): the expert node's trace spans of a sampled call,
// carried back to the caller in the reply frame instead of a separate OTLP/HTTP JSON export.
// Issue #8 measured the OTLP path at ≈ 30 µs of CPU per node span (SDK span, JSON export, HTTP,
// zod validation at the receiver); a span record here is 56 bytes written with a few
// Buffer calls. The gateway turns the records into OpenTelemetry spans of the node's service
// (src/observe/tracing.ts recordRemoteSpans), so they reach the same ring buffer and OTLP export.
//
// Flags (header byte 7 of a frame):
//   bit 0  request: the caller collects this call's spans from the reply (it names a sampled
//          W3C traceparent); a node that records a span for it puts it in its reply.
//   bit 1  any frame: a span section follows the last tensor.
// Other bits must be zero.
//
// Section layout, little-endian (all times are integer nanoseconds, as OTLP's are):
//   u32 base seconds since the Unix epoch · u32 base nanoseconds (< 1e9) · u8 span count (1..max)
//   per span (spanRecordBytes = 56):
//     u8[16] trace id · u8[8] span id · u8[8] parent span id (all zero: none)
//     u8 name (WireSpanName) · u8 status (WireSpanStatus)
//     u32 start offset ns from the base · u32 duration ns low · u32 duration ns high (< 2^21)
//     u16 layer · u16 expert (the first expert of the frame) · u16 experts · u32 tokens
// The trace and span ids must not be all zero (W3C trace-context); a section that breaks any
// rule is a malformed frame (frame.ts turns the RangeError into FrameDecodeError).

import { invariant } from "../common/assert.ts";

/** Flag bit of a request: the caller wants the node's spans of this (sampled) call in the reply. */
export const frameFlagSpansWanted = 1;
/** Flag bit of any frame: a span section follows the tensors. */
export const frameFlagSpans = 2;
/** The flag bits this protocol version defines. */
export const frameFlagsKnown = frameFlagSpansWanted | frameFlagSpans;

/** Most span records in one frame (a node records one span per request frame). */
export const frameSpansMax = 16;
/** Bytes of one span record. */
export const spanRecordBytes = 56;
/** Bytes of the section header (base seconds, base nanoseconds, count). */
export const spanSectionHeaderBytes = 9;
/** Longest span duration a record holds: 2^53 ns (≈ 104 days; a record is refused past it). */
export const spanDurationNsMax = 2 ** 53 - 1;

/** The span names a record can carry (a byte on the wire, the OTel span name at the gateway). */
export const WireSpanName = {
  nodeForward: 1,
  nodeBackward: 2,
  nodeGradSquaredNorm: 3,
  nodeApplyUpdate: 4,
} as const;
export type WireSpanName = (typeof WireSpanName)[keyof typeof WireSpanName];

export const wireSpanNames: Readonly<Record<WireSpanName, string>> = {
  [WireSpanName.nodeForward]: "expert.node.forward",
  [WireSpanName.nodeBackward]: "expert.node.backward",
  [WireSpanName.nodeGradSquaredNorm]: "expert.node.grad_squared_norm",
  [WireSpanName.nodeApplyUpdate]: "expert.node.apply_update",
};

/** OpenTelemetry's status codes (unset, ok, error). */
export const WireSpanStatus = { unset: 0, ok: 1, error: 2 } as const;
export type WireSpanStatus = (typeof WireSpanStatus)[keyof typeof WireSpanStatus];

/** One finished span of a remote process, as carried in a frame. */
export interface WireSpan {
  /** 32 lowercase hex digits, not all zero. */
  readonly traceId: string;
  /** 16 lowercase hex digits, not all zero. */
  readonly spanId: string;
  /** 16 lowercase hex digits, or "" for a root span. */
  readonly parentSpanId: string;
  readonly name: WireSpanName;
  readonly status: WireSpanStatus;
  /** Start, Unix epoch: whole seconds and nanoseconds (< 1e9). */
  readonly startSeconds: number;
  readonly startNanos: number;
  readonly durationNs: number;
  readonly layer: number;
  readonly expert: number;
  readonly experts: number;
  readonly tokens: number;
}

const nameValues = new Set<number>(Object.values(WireSpanName));
const statusValues = new Set<number>(Object.values(WireSpanStatus));
const hexPattern = (digits: number) => new RegExp(`^[0-9a-f]{${digits}}$`);
const traceIdPattern = hexPattern(32);
const spanIdPattern = hexPattern(16);
const zeroTraceId = "0".repeat(32);
const zeroSpanId = "0".repeat(16);

function isU(n: number, max: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= max;
}

/** Bytes the section of these spans takes (0 for none). */
export function spanSectionBytes(spans: readonly WireSpan[]): number {
  return spans.length === 0 ? 0 : spanSectionHeaderBytes + spans.length * spanRecordBytes;
}

/**
 * Writes the section at `o`; returns the offset after it. The earliest start is the base and the
 * others are offsets from it. Throws RangeError on a span we must not send.
 */
export function writeSpanSection(buf: Buffer, o: number, spans: readonly WireSpan[]): number {
  if (spans.length < 1 || spans.length > frameSpansMax)
    throw new RangeError(`spans: 1..${frameSpansMax} per frame; got ${spans.length}`);
  let base = spans[0] as WireSpan;
  for (const s of spans)
    if (
      s.startSeconds < base.startSeconds ||
      (s.startSeconds === base.startSeconds && s.startNanos < base.startNanos)
    )
      base = s;
  if (!isU(base.startSeconds, 0xffffffff) || !isU(base.startNanos, 999_999_999))
    throw new RangeError(`span start ${base.startSeconds} s ${base.startNanos} ns is out of range`);
  buf.writeUInt32LE(base.startSeconds, o);
  buf.writeUInt32LE(base.startNanos, o + 4);
  buf.writeUInt8(spans.length, o + 8);
  o += spanSectionHeaderBytes;
  for (const s of spans) {
    if (!traceIdPattern.test(s.traceId) || s.traceId === zeroTraceId)
      throw new RangeError(
        `span trace id: 32 lowercase hex digits, not all zero; got ${s.traceId}`,
      );
    if (!spanIdPattern.test(s.spanId) || s.spanId === zeroSpanId)
      throw new RangeError(`span id: 16 lowercase hex digits, not all zero; got ${s.spanId}`);
    if (
      s.parentSpanId !== "" &&
      (!spanIdPattern.test(s.parentSpanId) || s.parentSpanId === zeroSpanId)
    )
      throw new RangeError(`parent span id: 16 lowercase hex digits or ""; got ${s.parentSpanId}`);
    if (!nameValues.has(s.name)) throw new RangeError(`span name id ${s.name} is not defined`);
    if (!statusValues.has(s.status)) throw new RangeError(`span status ${s.status} is not defined`);
    const offsetNs =
      (s.startSeconds - base.startSeconds) * 1_000_000_000 + (s.startNanos - base.startNanos);
    if (!isU(offsetNs, 0xffffffff) || !isU(s.durationNs, spanDurationNsMax))
      throw new RangeError(
        `span start offset ${offsetNs} ns or duration ${s.durationNs} ns out of range`,
      );
    if (!isU(s.layer, 0xffff) || !isU(s.expert, 0xffff) || !isU(s.experts, 0xffff))
      throw new RangeError("span layer, expert and experts: 0..65535");
    if (!isU(s.tokens, 0xffffffff)) throw new RangeError(`span tokens: a u32; got ${s.tokens}`);
    buf.write(s.traceId, o, 16, "hex");
    buf.write(s.spanId, o + 16, 8, "hex");
    if (s.parentSpanId === "") buf.fill(0, o + 24, o + 32);
    else buf.write(s.parentSpanId, o + 24, 8, "hex");
    buf.writeUInt8(s.name, o + 32);
    buf.writeUInt8(s.status, o + 33);
    buf.writeUInt32LE(offsetNs, o + 34);
    buf.writeUInt32LE(s.durationNs % 0x1_0000_0000, o + 38);
    buf.writeUInt32LE(Math.floor(s.durationNs / 0x1_0000_0000), o + 42);
    buf.writeUInt16LE(s.layer, o + 46);
    buf.writeUInt16LE(s.expert, o + 48);
    buf.writeUInt16LE(s.experts, o + 50);
    buf.writeUInt32LE(s.tokens, o + 52);
    o += spanRecordBytes;
  }
  return o;
}

/**
 * Reads a section that must end exactly at `end` (the frame's last byte). Throws RangeError with
 * the reason on anything malformed; never reads outside [o, end).
 */
export function readSpanSection(buf: Buffer, o: number, end: number): WireSpan[] {
  if (end - o < spanSectionHeaderBytes)
    throw new RangeError(`span section: ${end - o} bytes is shorter than its header`);
  const baseSeconds = buf.readUInt32LE(o);
  const baseNanos = buf.readUInt32LE(o + 4);
  const count = buf.readUInt8(o + 8);
  if (baseNanos > 999_999_999) throw new RangeError("span section: base nanoseconds ≥ 1e9");
  if (count < 1 || count > frameSpansMax)
    throw new RangeError(`span section: 1..${frameSpansMax} spans; got ${count}`);
  o += spanSectionHeaderBytes;
  if (end - o !== count * spanRecordBytes)
    throw new RangeError(
      `span section: ${count} spans need ${count * spanRecordBytes} bytes; the frame has ${end - o}`,
    );
  const spans: WireSpan[] = [];
  for (let i = 0; i < count; i++, o += spanRecordBytes) {
    const traceId = buf.toString("hex", o, o + 16);
    const spanId = buf.toString("hex", o + 16, o + 24);
    const parent = buf.toString("hex", o + 24, o + 32);
    if (traceId === zeroTraceId || spanId === zeroSpanId)
      throw new RangeError(`span ${i}: trace id and span id must not be all zero`);
    const name = buf.readUInt8(o + 32);
    const status = buf.readUInt8(o + 33);
    if (!nameValues.has(name)) throw new RangeError(`span ${i}: name id ${name} is not defined`);
    if (!statusValues.has(status))
      throw new RangeError(`span ${i}: status ${status} is not defined`);
    const high = buf.readUInt32LE(o + 42);
    if (high > 0x1f_ffff) throw new RangeError(`span ${i}: duration above 2^53 ns`);
    const nanos = baseNanos + buf.readUInt32LE(o + 34);
    const startSeconds = baseSeconds + Math.floor(nanos / 1_000_000_000);
    if (startSeconds > 0xffffffff) throw new RangeError(`span ${i}: start past 2106`);
    spans.push({
      traceId,
      spanId,
      parentSpanId: parent === zeroSpanId ? "" : parent,
      name: name as WireSpanName,
      status: status as WireSpanStatus,
      startSeconds,
      startNanos: nanos % 1_000_000_000,
      durationNs: high * 0x1_0000_0000 + buf.readUInt32LE(o + 38),
      layer: buf.readUInt16LE(o + 46),
      expert: buf.readUInt16LE(o + 48),
      experts: buf.readUInt16LE(o + 50),
      tokens: buf.readUInt32LE(o + 52),
    });
  }
  invariant(o === end, "span section ends at the frame's end");
  return spans;
}
