// The binary wire format between the gateway's dispatcher and expert nodes. Tensor data travels as
// raw little-endian float32 bytes after a (dtype, shape) descriptor — never as JSON — and every
// frame carries a protocol version, a request id, the caller's remaining time budget, the sender's
// region (for the emulated inter-region links) and an optional W3C traceparent
// (https://www.w3.org/TR/trace-context/#traceparent-header).
//
// Layout (after a u32 length prefix that counts the bytes below), all little-endian:
//   0  u32 magic "MOEW"      4 u8 version   5 u8 kind   6 u8 op   7 u8 flags (frame-spans.ts)
//   8  u32 request id       12 u32 budget ms (0 = none)
//  16  u8[3] sender region (ASCII A–Z, or zeros)   19 u8 traceparent bytes   20 u16 text bytes
//  22  u16 expert id count
//  24  traceparent (ASCII) · text (UTF-8, error messages) · ids (u16 layer, u16 expert)*
//      · u8 scalar count, f64* · u8 tensor count, then per tensor: u8 dtype (1 = f32), u8 ndim,
//        u32 dims[ndim], raw data (product(dims) × 4 bytes)
//      · when flags bit 1 is set: the span section (a node's trace spans of a sampled call; the
//        layout, limits and flag bits are in frame-spans.ts)
// A forward request names 1..forwardGroupExpertsMax experts with one [tokens, d] tensor each, and
// its answer holds one tensor and one weight version (scalar) per expert, in the same order.
// A decoder consumes exactly the frame or throws `FrameDecodeError`; it never reads past the frame
// and checks every count against the limits in constants.ts before allocating.

import { endianness } from "node:os";
import { invariant } from "../common/assert.ts";
import type { ExpertId } from "../model/expert.ts";
import {
  frameBytesMax,
  frameExpertIdsMax,
  frameHeaderBytes,
  frameScalarsMax,
  frameTensorsMax,
  frameTextBytesMax,
  tensorDimsMax,
  traceparentBytesMax,
  wireMagic,
  wireVersion,
} from "./constants.ts";
import { FrameDecodeError, WireErrorCode } from "./errors.ts";
import {
  frameFlagSpans,
  frameFlagSpansWanted,
  frameFlagsKnown,
  readSpanSection,
  spanSectionBytes,
  type WireSpan,
  writeSpanSection,
} from "./frame-spans.ts";

// Tensor bytes are copied straight into Float32Arrays, which use the host's byte order.
invariant(endianness() === "LE", "the wire format assumes a little-endian host");

export const FrameKind = { request: 1, response: 2, error: 3 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

export const Op = {
  forward: 1,
  backward: 2,
  gradSquaredNorm: 3,
  applyUpdate: 4,
  /** Liveness and load report. */
  ping: 5,
  /** The weights of one expert (checkpoints of a swarm-trained model). */
  getWeights: 6,
  /** Weights and optimizer moments of one expert (training checkpoints, replica resync). */
  exportState: 7,
  /** Replaces an expert's weights and moments (resume, resync of a stale replica). */
  importState: 8,
} as const;
export type Op = (typeof Op)[keyof typeof Op];

export const DType = { f32: 1 } as const;

export interface WireTensor {
  readonly dims: readonly number[];
  readonly data: Float32Array;
}

export interface Frame {
  readonly kind: FrameKind;
  readonly op: Op;
  readonly requestId: number;
  /** Remaining time budget of the caller in ms; 0 = none. Relative, so clocks need not agree. */
  readonly budgetMs: number;
  /** Sender's region code, "" when unknown. */
  readonly region: string;
  readonly traceparent: string;
  readonly text: string;
  readonly ids: readonly ExpertId[];
  readonly scalars: readonly number[];
  readonly tensors: readonly WireTensor[];
  /** Request: the caller wants the node's spans of this sampled call in the reply (flags bit 0). */
  readonly spansWanted: boolean;
  /** Finished trace spans of the sender (flags bit 1); empty for most frames. */
  readonly spans: readonly WireSpan[];
}

export type FrameInit = Partial<Omit<Frame, "kind" | "op" | "requestId">> &
  Pick<Frame, "kind" | "op" | "requestId">;

const opValues = new Set<number>(Object.values(Op));
const kindValues = new Set<number>(Object.values(FrameKind));
const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

function elementCount(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/** Encodes a frame including its u32 length prefix. Throws RangeError on a frame we must not send. */
export function encodeFrame(init: FrameInit): Buffer {
  const trace = Buffer.from(init.traceparent ?? "", "latin1");
  const text = utf8.encode(init.text ?? "");
  const ids = init.ids ?? [];
  const scalars = init.scalars ?? [];
  const tensors = init.tensors ?? [];
  const region = init.region ?? "";
  const spans = init.spans ?? [];
  if (trace.length > traceparentBytesMax)
    throw new RangeError(`traceparent: at most ${traceparentBytesMax} bytes; got ${trace.length}`);
  const textBytes = Math.min(text.length, frameTextBytesMax);
  if (ids.length > frameExpertIdsMax)
    throw new RangeError(`expert ids: at most ${frameExpertIdsMax}; got ${ids.length}`);
  if (scalars.length > frameScalarsMax)
    throw new RangeError(`scalars: at most ${frameScalarsMax}; got ${scalars.length}`);
  if (tensors.length > frameTensorsMax)
    throw new RangeError(`tensors: at most ${frameTensorsMax}; got ${tensors.length}`);
  if (region !== "" && !/^[A-Z]{3}$/.test(region))
    throw new RangeError(`region: expected a three-letter code like "ORD"; got "${region}"`);
  let size = frameHeaderBytes + trace.length + textBytes + ids.length * 4 + 1 + scalars.length * 8;
  size += 1;
  for (const t of tensors) {
    if (t.dims.length < 1 || t.dims.length > tensorDimsMax)
      throw new RangeError(`tensor dims: 1..${tensorDimsMax}; got ${t.dims.length}`);
    const n = elementCount(t.dims);
    if (n !== t.data.length)
      throw new RangeError(`tensor shape [${t.dims}] holds ${n} values; data has ${t.data.length}`);
    size += 2 + 4 * t.dims.length + 4 * n;
  }
  size += spanSectionBytes(spans);
  if (size > frameBytesMax)
    throw new RangeError(`frame of ${size} bytes exceeds frameBytesMax (${frameBytesMax})`);

  const buf = Buffer.allocUnsafe(4 + size);
  let o = 0;
  buf.writeUInt32LE(size, o);
  o += 4;
  buf.writeUInt32LE(wireMagic, o);
  buf.writeUInt8(wireVersion, o + 4);
  buf.writeUInt8(init.kind, o + 5);
  buf.writeUInt8(init.op, o + 6);
  buf.writeUInt8(
    (init.spansWanted ? frameFlagSpansWanted : 0) | (spans.length > 0 ? frameFlagSpans : 0),
    o + 7,
  );
  buf.writeUInt32LE(init.requestId >>> 0, o + 8);
  buf.writeUInt32LE(Math.max(0, Math.min(0xffffffff, Math.ceil(init.budgetMs ?? 0))), o + 12);
  for (let i = 0; i < 3; i++) buf.writeUInt8(region === "" ? 0 : region.charCodeAt(i), o + 16 + i);
  buf.writeUInt8(trace.length, o + 19);
  buf.writeUInt16LE(textBytes, o + 20);
  buf.writeUInt16LE(ids.length, o + 22);
  o += frameHeaderBytes;
  trace.copy(buf, o);
  o += trace.length;
  buf.set(text.subarray(0, textBytes), o);
  o += textBytes;
  for (const id of ids) {
    if (!isU16(id.layer) || !isU16(id.expert))
      throw new RangeError(
        `expert id: layer and expert must be 0..65535; got ${JSON.stringify(id)}`,
      );
    buf.writeUInt16LE(id.layer, o);
    buf.writeUInt16LE(id.expert, o + 2);
    o += 4;
  }
  buf.writeUInt8(scalars.length, o++);
  for (const s of scalars) {
    buf.writeDoubleLE(s, o);
    o += 8;
  }
  buf.writeUInt8(tensors.length, o++);
  for (const t of tensors) {
    buf.writeUInt8(DType.f32, o++);
    buf.writeUInt8(t.dims.length, o++);
    for (const d of t.dims) {
      if (!Number.isInteger(d) || d < 0 || d > 0xffffffff)
        throw new RangeError(`tensor dim: expected a u32; got ${d}`);
      buf.writeUInt32LE(d, o);
      o += 4;
    }
    buf.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), o);
    o += t.data.byteLength;
  }
  if (spans.length > 0) o = writeSpanSection(buf, o, spans);
  invariant(o === buf.length, () => `encoded ${o} bytes; allocated ${buf.length}`);
  return buf;
}

function isU16(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffff;
}

/** Best-effort request id of a frame body that may be malformed (0 when not even that is there). */
export function peekRequestId(body: Uint8Array): number {
  return body.length >= 12 ? Buffer.from(body.buffer, body.byteOffset, 12).readUInt32LE(8) : 0;
}

/** Decodes one frame body (the bytes after the length prefix). */
export function decodeFrame(body: Uint8Array): Frame {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const requestId = peekRequestId(body);
  const fail = (message: string, code: WireErrorCode = WireErrorCode.malformedFrame): never => {
    throw new FrameDecodeError(code, message, requestId);
  };
  if (buf.length > frameBytesMax)
    fail(`frame of ${buf.length} bytes exceeds ${frameBytesMax}`, WireErrorCode.frameTooLarge);
  if (buf.length < frameHeaderBytes) fail(`frame of ${buf.length} bytes is shorter than a header`);
  if (buf.readUInt32LE(0) !== wireMagic) fail("bad magic: not a moe-swarm frame");
  const version = buf.readUInt8(4);
  if (version !== wireVersion)
    fail(
      `protocol version ${version} is not supported; this node speaks ${wireVersion}`,
      WireErrorCode.unsupportedVersion,
    );
  const kind = buf.readUInt8(5);
  if (!kindValues.has(kind)) fail(`unknown frame kind ${kind}`);
  const op = buf.readUInt8(6);
  if (!opValues.has(op)) fail(`unknown op ${op}`, WireErrorCode.unknownOp);
  const flags = buf.readUInt8(7);
  if ((flags & ~frameFlagsKnown) !== 0)
    fail(`unknown flag bits 0x${(flags & ~frameFlagsKnown).toString(16)} in protocol version 1`);
  const budgetMs = buf.readUInt32LE(12);
  const r0 = buf.readUInt8(16);
  const r1 = buf.readUInt8(17);
  const r2 = buf.readUInt8(18);
  let region = "";
  if (r0 !== 0 || r1 !== 0 || r2 !== 0) {
    region = String.fromCharCode(r0, r1, r2);
    if (!/^[A-Z]{3}$/.test(region)) fail("sender region is not three letters A-Z");
  }
  const traceBytes = buf.readUInt8(19);
  const textBytes = buf.readUInt16LE(20);
  const idCount = buf.readUInt16LE(22);
  if (traceBytes > traceparentBytesMax) fail(`traceparent longer than ${traceparentBytesMax}`);
  if (textBytes > frameTextBytesMax) fail(`text longer than ${frameTextBytesMax} bytes`);
  if (idCount > frameExpertIdsMax) fail(`more than ${frameExpertIdsMax} expert ids`);
  let o = frameHeaderBytes;
  const need = (n: number, what: string) => {
    if (o + n > buf.length) fail(`truncated frame: ${what} needs ${n} bytes at offset ${o}`);
  };
  need(traceBytes + textBytes + idCount * 4, "traceparent, text and ids");
  const traceparent = buf.toString("latin1", o, o + traceBytes);
  if (!/^[\x21-\x7e]*$/.test(traceparent)) fail("traceparent is not printable ASCII");
  o += traceBytes;
  let text = "";
  try {
    text = utf8Strict.decode(buf.subarray(o, o + textBytes));
  } catch {
    fail("text is not valid UTF-8");
  }
  o += textBytes;
  const ids: ExpertId[] = [];
  for (let i = 0; i < idCount; i++) {
    ids.push({ layer: buf.readUInt16LE(o), expert: buf.readUInt16LE(o + 2) });
    o += 4;
  }
  need(1, "scalar count");
  const scalarCount = buf.readUInt8(o++);
  if (scalarCount > frameScalarsMax) fail(`more than ${frameScalarsMax} scalars`);
  need(scalarCount * 8, "scalars");
  const scalars: number[] = [];
  for (let i = 0; i < scalarCount; i++) {
    scalars.push(buf.readDoubleLE(o));
    o += 8;
  }
  need(1, "tensor count");
  const tensorCount = buf.readUInt8(o++);
  if (tensorCount > frameTensorsMax) fail(`more than ${frameTensorsMax} tensors`);
  const tensors: WireTensor[] = [];
  for (let t = 0; t < tensorCount; t++) {
    need(2, "tensor descriptor");
    const dtype = buf.readUInt8(o);
    const ndim = buf.readUInt8(o + 1);
    o += 2;
    if (dtype !== DType.f32) fail(`tensor ${t}: dtype ${dtype} is not supported (1 = float32)`);
    if (ndim < 1 || ndim > tensorDimsMax)
      fail(`tensor ${t}: ${ndim} dims; allowed 1..${tensorDimsMax}`);
    need(4 * ndim, "tensor dims");
    const dims: number[] = [];
    let bytes = 4;
    for (let d = 0; d < ndim; d++) {
      const dim = buf.readUInt32LE(o);
      o += 4;
      dims.push(dim);
      bytes *= dim;
      // Checked per dim so a product of huge dims cannot overflow past the check.
      if (bytes > buf.length - o) fail(`tensor ${t}: shape [${dims}] is larger than the frame`);
    }
    need(bytes, `tensor ${t} data`);
    const data = new Float32Array(bytes / 4);
    new Uint8Array(data.buffer).set(buf.subarray(o, o + bytes));
    o += bytes;
    tensors.push({ dims, data });
  }
  let spans: WireSpan[] = [];
  if ((flags & frameFlagSpans) !== 0) {
    try {
      spans = readSpanSection(buf, o, buf.length);
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      fail(err.message);
    }
    o = buf.length;
  }
  if (o !== buf.length) fail(`${buf.length - o} trailing bytes after the last tensor`);
  return {
    kind: kind as FrameKind,
    op: op as Op,
    requestId,
    budgetMs,
    region,
    traceparent,
    text,
    ids,
    scalars,
    tensors,
    spansWanted: (flags & frameFlagSpansWanted) !== 0,
    spans,
  };
}
