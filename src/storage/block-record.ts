// The on-disk form of one block in a tier: a small header, then the block's bytes after the tier's
// transforms (optional XOR delta against base blocks, optional byte-plane grouping), compression
// (none, zstd level 9, brotli level 11) and, in the cold tier, AES-256-GCM under the checkpoint's
// data key. The block's identity stays the CID of its plaintext, so dedup works across encodings
// and a reader always checks the decoded bytes against the CID.
//
// Layout (integers little-endian):
//   0  "MSB1"                       magic
//   4  u8 compression               0 none · 1 zstd · 2 brotli
//   5  u8 flags                     bit0 byte planes · bit1 float delta · bit2 encrypted
//                                   bit3 dictionary delta (zstd with the base block as dictionary)
//                                   bit4 plane coders (the byte-plane table holds a coder per plane)
//                                   bit5 context base (with bit1: the bases are coding context
//                                   only; the planes hold the block itself, not a float delta)
//                                   bit6 float coder (float-coder.ts; the compression byte is
//                                   unused; with bit1 + bit5 the floats are coded given the base)
//   6  u8 delta depth               0 for a whole block; base depth + 1 for a delta
//   7  u8 phase                     shard offset of the first byte, mod 4
//   8  u32 plaintext length
//   [delta]  u16 n, n × (u16 len, CID bytes), u32 offset into the concatenated bases (either kind)
//   [encrypted] u8 len, key id (ASCII), 12-byte nonce
//   payload (encrypted: ciphertext ‖ tag; associated data = header ‖ CID bytes); with byte planes
//   it is u8 mask (bit k: plane k compressed), 4 × u32 stored plane lengths, then the 4 planes,
//   each compressed on its own (the planes differ too much to share one entropy model) or stored
//   raw when that is smaller (low mantissa bytes are close to random). With bit4 the mask byte is
//   a coder table, 2 bits per plane (plane k at bits 2k..2k+1): 0 raw · 1 the tier's compression ·
//   2 adaptive range coder (range-coder.ts) · 3 range coder with the base's byte at the same
//   position of the same plane as context — the smallest of them is kept for each plane.
// A compressed tier stores each block by the smallest of these layouts; the float coder
// (float-coder.ts) is tried beside them for blocks of at least floatBlockBytesMin bytes.
// Every field is validated on read; a malformed record is reported as a corrupt block.

import { brotliCompressSync, brotliDecompressSync, constants as zc } from "node:zlib";
import * as zstd from "zstd-napi";
import zstdBinding from "zstd-napi/binding.js";
import { invariant } from "../common/assert.ts";
import { nonceBytes, openBlock, sealBlock } from "../crypto/envelope.ts";
import { CID } from "./cid.ts";
import { chunkBytesMax, deltaBasesMax, deltaChainMax } from "./constants.ts";
import { decodeFloatBlock, encodeFloatBlock, floatBlockBytesMin } from "./float-coder.ts";
import {
  floatDelta,
  floatUndelta,
  fromBytePlanes,
  planeLengths,
  toBytePlanes,
} from "./float-transform.ts";
import { rangeDecodeBytes, rangeEncodeBytes } from "./range-coder.ts";

const magic = [0x4d, 0x53, 0x42, 0x31]; // "MSB1"
const headerBytes = 12;
const flagPlanes = 1;
const flagDelta = 2;
const flagEncrypted = 4;
const flagDict = 8;
const flagCoders = 16;
const flagContext = 32;
const flagFloats = 64;
/** Plane coders of a bit4 table. */
const coderRaw = 0;
const coderTier = 1;
const coderRange = 2;
const coderRangeBase = 3;
/**
 * Planes tried with the range coder: only plane 3 (sign + 7 exponent bits). Measured on the lr
 * 3e-3 series: coding plane 2 too saved 0.3% of raw (0.808× vs 0.811×) but cost 2–3× in warm
 * restore speed (the coder decodes 8 binary decisions per byte in JS); planes 0–1 (low mantissa)
 * are within 1% of 8 bits/byte under every coder.
 */
const rangeCodedPlanesMin = 3;
/**
 * The float coder decodes slower than the byte-plane layouts (it is JS, they are mostly zstd): it
 * is kept only where it saves at least this fraction of the best other layout. Measured on the
 * lr 3e-3 model series (training state, warm tier, restore CPU time with a cold cache): 0 →
 * 0.794× of raw, 27.1 MB/s; 0.005 → 0.795×, 32.2 MB/s; 0.01 → 0.797×, 36.0 MB/s; without the
 * float coder 0.808×, 46.3 MB/s.
 */
const floatGainMin = 0.005;
/** Bytes of a block compressed two ways (planes or not) to pick the layout before the real pass. */
const layoutProbeBytes = 64 * 1024;
/** zstd level of the layout probe (fast; only the ranking matters). */
const probeLevel = 3;

export type Compression = "none" | "zstd" | "brotli";
const compressionIds: Record<Compression, number> = { none: 0, zstd: 1, brotli: 2 };
const compressionNames: Compression[] = ["none", "zstd", "brotli"];

export const zstdLevel = 9;
export const brotliQuality = 11;

export interface DeltaRef {
  /** Base blocks whose concatenation, from `offset`, lines up with this block. */
  readonly bases: readonly CID[];
  readonly offset: number;
  /** Delta depth of the deepest base. */
  readonly baseDepth: number;
}

export interface RecordInit {
  readonly cid: CID;
  readonly plaintext: Uint8Array;
  readonly phase: number;
  readonly compression: Compression;
  /** The base range's bytes (already resolved) and where they come from. */
  readonly delta?: { readonly ref: DeltaRef; readonly baseBytes: Uint8Array };
  /** A base range used only as the range coder's context (no float delta against it). */
  readonly context?: { readonly ref: DeltaRef; readonly baseBytes: Uint8Array };
  /** A similar earlier block (found by super-features) to use as a zstd dictionary. */
  readonly dict?: { readonly ref: DeltaRef; readonly baseBytes: Uint8Array };
  readonly seal?: { readonly keyId: string; readonly dataKey: Uint8Array };
}

export interface RecordHeader {
  readonly compression: Compression;
  readonly planes: boolean;
  /** Whether the byte-plane table holds a coder per plane (bit4). */
  readonly coders: boolean;
  /** Whether the payload is float-coded (bit6). */
  readonly floats: boolean;
  readonly depth: number;
  readonly phase: number;
  readonly length: number;
  readonly delta:
    | {
        readonly kind: "float" | "dict" | "context";
        readonly bases: CID[];
        readonly offset: number;
      }
    | undefined;
  readonly keyId: string | undefined;
  readonly nonce: Uint8Array | undefined;
  readonly payloadOffset: number;
}

export class RecordFormatError extends Error {}

export function compress(kind: Compression, data: Uint8Array, level?: number): Uint8Array {
  switch (kind) {
    case "none":
      return data;
    case "zstd":
      return zstd.compress(data, { compressionLevel: level ?? zstdLevel });
    case "brotli":
      return brotliCompressSync(data, {
        params: {
          [zc.BROTLI_PARAM_QUALITY]: level ?? brotliQuality,
          [zc.BROTLI_PARAM_SIZE_HINT]: data.length,
          [zc.BROTLI_PARAM_MODE]: zc.BROTLI_MODE_GENERIC,
        },
      });
  }
}

function decompress(kind: Compression, data: Uint8Array, length: number): Uint8Array {
  switch (kind) {
    case "none":
      return data;
    case "zstd": {
      // A corrupt frame header could announce any size: check it before zstd allocates.
      const size = zstdBinding.getFrameContentSize(data);
      if (size !== length)
        throw new RecordFormatError(`zstd frame announces ${size} B, expected ${length}`);
      return zstd.decompress(data);
    }
    case "brotli":
      return brotliDecompressSync(data, { maxOutputLength: Math.max(1, length) });
  }
}

/**
 * Byte planes of `body`, each compressed on its own (or raw when that is smaller). With `coders`,
 * each plane is stored by the smallest of raw, the tier's compression and the range coder (with
 * the same plane of `context` — the base's bytes, grouped the same way — as context when given),
 * and the table byte holds a 2-bit coder per plane; `usedContext` says whether any plane needs it.
 */
function packPlanes(
  kind: Compression,
  body: Uint8Array,
  phase: number,
  level?: number,
  coders?: { readonly context: Uint8Array | undefined },
): { bytes: Uint8Array; usedContext: boolean } {
  const grouped = toBytePlanes(body, phase);
  const context = coders?.context === undefined ? undefined : toBytePlanes(coders.context, phase);
  const lengths = planeLengths(body.length, phase);
  const stored: Uint8Array[] = [];
  let mask = 0;
  let usedContext = false;
  let at = 0;
  for (let k = 0; k < 4; k++) {
    const plane = grouped.subarray(at, at + lengths[k as 0]);
    const planeContext = context?.subarray(at, at + plane.length);
    at += plane.length;
    let best = plane;
    let coder = coderRaw;
    const consider = (bytes: Uint8Array, id: number) => {
      if (bytes.length < best.length) {
        best = bytes;
        coder = id;
      }
    };
    if (plane.length > 0) consider(compress(kind, plane, level), coderTier);
    if (coders !== undefined && k >= rangeCodedPlanesMin && plane.length > 0) {
      consider(rangeEncodeBytes(plane), coderRange);
      if (planeContext !== undefined)
        consider(rangeEncodeBytes(plane, planeContext), coderRangeBase);
    }
    if (coders === undefined) mask |= coder === coderTier ? 1 << k : 0;
    else mask |= coder << (2 * k);
    if (coder === coderRangeBase) usedContext = true;
    stored.push(best);
  }
  const out = new Uint8Array(17 + stored.reduce((s, x) => s + x.length, 0));
  const dv = new DataView(out.buffer);
  out[0] = mask;
  let w = 17;
  stored.forEach((x, k) => {
    dv.setUint32(1 + 4 * k, x.length, true);
    out.set(x, w);
    w += x.length;
  });
  return { bytes: out, usedContext };
}

/**
 * Inverse of packPlanes. `coders`: the table is a 2-bit coder per plane; `context()` gives the
 * base's bytes (the caller resolves them only when a plane needs them).
 */
function unpackPlanes(
  kind: Compression,
  payload: Uint8Array,
  length: number,
  phase: number,
  coders?: { readonly context: () => Uint8Array },
): Uint8Array {
  if (payload.length < 17) throw new RecordFormatError("byte-plane payload shorter than its table");
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const mask = payload[0] as number;
  if (coders === undefined && mask > 15)
    throw new RecordFormatError(`byte-plane mask 0x${mask.toString(16)}`);
  const lengths = planeLengths(length, phase);
  const grouped = new Uint8Array(length);
  let context: Uint8Array | undefined;
  let r = 17;
  let w = 0;
  for (let k = 0; k < 4; k++) {
    const storedLen = dv.getUint32(1 + 4 * k, true);
    if (r + storedLen > payload.length)
      throw new RecordFormatError(`byte plane ${k} runs past the record`);
    const stored = payload.subarray(r, r + storedLen);
    r += storedLen;
    const want = lengths[k as 0];
    const coder = coders === undefined ? (mask >>> k) & 1 : (mask >>> (2 * k)) & 3;
    let plane: Uint8Array;
    if (coder === coderRaw) plane = stored;
    else if (coder === coderTier) plane = decompress(kind, stored, want);
    else if (coder === coderRange) plane = rangeDecodeBytes(stored, want);
    else {
      if (coders === undefined) throw new RecordFormatError("plane coder without a table");
      context ??= toBytePlanes(coders.context(), phase);
      plane = rangeDecodeBytes(stored, want, context.subarray(w, w + want));
    }
    if (plane.length !== want)
      throw new RecordFormatError(`byte plane ${k} holds ${plane.length} B, expected ${want}`);
    grouped.set(plane, w);
    w += want;
  }
  if (r !== payload.length) throw new RecordFormatError("bytes after the last byte plane");
  return fromBytePlanes(grouped, phase);
}

/** Compressed size of the layout probe (first 64 KiB) of `body`, with or without byte planes. */
function probeSize(body: Uint8Array, phase: number, planes: boolean): number {
  const probe = body.subarray(0, Math.min(layoutProbeBytes, body.length));
  return planes
    ? packPlanes("zstd", probe, phase, probeLevel).bytes.length
    : zstd.compress(probe, { compressionLevel: probeLevel }).length;
}

export interface EncodedRecord {
  readonly bytes: Uint8Array;
  /** Whether the record is a float delta (the probe found it smaller than the whole block). */
  readonly delta: boolean;
}

/**
 * Encodes a block. With compression, the layout is chosen by compressing a probe of each
 * candidate (whole or float delta, × plain or byte planes) at a fast zstd level; the smallest wins.
 */
export function encodeRecord(init: RecordInit): EncodedRecord {
  const { plaintext, phase } = init;
  invariant(plaintext.length <= chunkBytesMax, "block within chunkBytesMax");
  invariant(phase >= 0 && phase < 4, "phase in 0..3");
  let body = plaintext;
  let depth = 0;
  let compression = init.compression;
  let planes = false;
  let useDelta = false;
  if (compression !== "none" && plaintext.length >= 64) {
    const candidates: { delta: boolean; planes: boolean; body: Uint8Array }[] = [
      { delta: false, planes: false, body: plaintext },
      { delta: false, planes: true, body: plaintext },
    ];
    if (init.delta !== undefined) {
      const delta = floatDelta(plaintext, init.delta.baseBytes, phase);
      candidates.push(
        { delta: true, planes: false, body: delta },
        { delta: true, planes: true, body: delta },
      );
    }
    let best = candidates[0] as (typeof candidates)[number];
    let bestSize = Number.POSITIVE_INFINITY;
    for (const c of candidates) {
      const size = probeSize(c.body, phase, c.planes);
      if (size < bestSize) {
        best = c;
        bestSize = size;
      }
    }
    planes = best.planes;
    useDelta = best.delta;
    body = best.body;
  }
  if (useDelta && init.delta !== undefined) {
    invariant(
      init.delta.ref.bases.length >= 1 && init.delta.ref.bases.length <= deltaBasesMax,
      "delta bases count",
    );
    depth = init.delta.ref.baseDepth + 1;
    invariant(depth <= deltaChainMax, "delta chain within deltaChainMax");
  }
  let useContext = false;
  const contextBase = init.delta ?? init.context;
  if (compression !== "none") {
    let packed: Uint8Array;
    if (planes) {
      const p = packPlanes(compression, body, phase, undefined, {
        context: contextBase?.baseBytes,
      });
      packed = p.bytes;
      if (!useDelta && p.usedContext && contextBase !== undefined) {
        // The base serves as coding context only: the record still depends on it.
        useContext = true;
        depth = contextBase.ref.baseDepth + 1;
        invariant(depth <= deltaChainMax, "delta chain within deltaChainMax");
      }
    } else packed = compress(compression, body);
    if (packed.length < body.length) body = packed;
    else {
      compression = "none";
      planes = false;
      useContext = false;
      if (useDelta || depth > 0) {
        useDelta = false;
        depth = 0;
        body = plaintext;
      }
    }
  }
  let useDict = false;
  if (init.dict !== undefined && init.compression === "zstd" && !useDelta) {
    invariant(
      init.dict.ref.bases.length === 1 && init.dict.ref.offset === 0,
      "one whole dictionary base",
    );
    try {
      const c = new zstd.Compressor();
      c.setParameters({ compressionLevel: zstdLevel });
      c.loadDictionary(init.dict.baseBytes);
      const packed = c.compress(plaintext);
      if (packed.length < body.length && packed.length < plaintext.length) {
        body = packed;
        compression = "zstd";
        planes = false;
        useDict = true;
        depth = init.dict.ref.baseDepth + 1;
        invariant(depth <= deltaChainMax, "delta chain within deltaChainMax");
      }
    } catch {
      // A base zstd cannot take as a dictionary: store the block without it.
    }
  }
  let useFloats = false;
  if (init.compression !== "none" && plaintext.length >= floatBlockBytesMin) {
    const f = encodeFloatBlock(plaintext, phase, contextBase?.baseBytes);
    if (f.bytes.length < (1 - floatGainMin) * body.length) {
      body = f.bytes;
      useFloats = true;
      compression = init.compression;
      planes = false;
      useDelta = false;
      useDict = false;
      useContext = f.usedBase && contextBase !== undefined;
      depth = useContext && contextBase !== undefined ? contextBase.ref.baseDepth + 1 : 0;
      invariant(depth <= deltaChainMax, "delta chain within deltaChainMax");
    }
  }
  const parts: number[] = [...magic, compressionIds[compression], 0, depth, phase, 0, 0, 0, 0];
  let flags = planes ? flagPlanes | flagCoders : useFloats ? flagFloats : 0;
  const u16 = (v: number) => parts.push(v & 0xff, (v >>> 8) & 0xff);
  const u32 = (v: number) =>
    parts.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  parts[8] = plaintext.length & 0xff;
  parts[9] = (plaintext.length >>> 8) & 0xff;
  parts[10] = (plaintext.length >>> 16) & 0xff;
  parts[11] = (plaintext.length >>> 24) & 0xff;
  const ref = useDelta
    ? init.delta?.ref
    : useContext
      ? contextBase?.ref
      : useDict
        ? init.dict?.ref
        : undefined;
  if (ref !== undefined) {
    flags |= useDelta ? flagDelta : useContext ? flagDelta | flagContext : flagDict;
    u16(ref.bases.length);
    for (const base of ref.bases) {
      u16(base.bytes.length);
      parts.push(...base.bytes);
    }
    u32(ref.offset);
  }
  let nonce: Uint8Array | undefined;
  if (init.seal !== undefined) {
    flags |= flagEncrypted;
    const id = new TextEncoder().encode(init.seal.keyId);
    invariant(id.length >= 1 && id.length <= 255, "key id length");
    parts.push(id.length, ...id);
  }
  parts[5] = flags;
  let header: Uint8Array = Uint8Array.from(parts);
  if (init.seal !== undefined) {
    // The nonce is part of the header; the associated data is the header without it plus the CID.
    const sealed = sealBlock(init.seal.dataKey, body, associatedData(header, init.cid));
    nonce = sealed.nonce;
    body = sealed.ciphertext;
    header = concat(header, nonce);
  }
  return { bytes: concat(header, body), delta: useDelta || useDict || useContext };
}

function associatedData(headerWithoutNonce: Uint8Array, cid: CID): Uint8Array {
  return concat(headerWithoutNonce, cid.bytes);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** Parses and validates a record's header (no decompression); throws RecordFormatError. */
export function parseRecordHeader(bytes: Uint8Array): RecordHeader {
  const fail = (why: string): never => {
    throw new RecordFormatError(why);
  };
  if (bytes.length < headerBytes) fail(`record of ${bytes.length} B is shorter than its header`);
  for (let i = 0; i < 4; i++)
    if (bytes[i] !== magic[i]) fail("bad magic (not a moe-swarm block record)");
  const compression =
    compressionNames[bytes[4] as number] ?? fail(`unknown compression id ${bytes[4]}`);
  const flags = bytes[5] as number;
  if (
    flags &
    ~(flagPlanes | flagDelta | flagEncrypted | flagDict | flagCoders | flagContext | flagFloats)
  )
    fail(`unknown flags 0x${flags.toString(16)}`);
  if ((flags & flagCoders) !== 0 && (flags & flagPlanes) === 0) fail("plane coders without planes");
  const floats = (flags & flagFloats) !== 0;
  if (floats && (flags & (flagPlanes | flagDict)) !== 0)
    fail("a float-coded payload has no byte planes and no dictionary");
  if (floats && (flags & flagDelta) !== 0 && (flags & flagContext) === 0)
    fail("a float-coded payload takes its base as context, not as a float delta");
  if (
    (flags & flagContext) !== 0 &&
    ((flags & flagDelta) === 0 || (flags & (flagPlanes | flagFloats)) === 0)
  )
    fail("a context base needs byte planes or the float coder, and a base");
  const depth = bytes[6] as number;
  const phase = bytes[7] as number;
  if (phase > 3) fail(`phase ${phase} out of range`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = dv.getUint32(8, true);
  if (length > chunkBytesMax) fail(`plaintext length ${length} above ${chunkBytesMax}`);
  let at = headerBytes;
  const need = (n: number) => {
    if (at + n > bytes.length) fail("record truncated inside its header");
  };
  let delta: RecordHeader["delta"];
  if ((flags & flagDelta) !== 0 && (flags & flagDict) !== 0) fail("both delta kinds set");
  if ((flags & flagDict) !== 0 && (compression !== "zstd" || (flags & flagPlanes) !== 0)) {
    fail("a dictionary delta is a plain zstd payload");
  }
  if (flags & (flagDelta | flagDict)) {
    if (depth < 1 || depth > deltaChainMax) fail(`delta depth ${depth} out of range`);
    need(2);
    const n = dv.getUint16(at, true);
    at += 2;
    if (n < 1 || n > deltaBasesMax) fail(`delta with ${n} bases`);
    const bases: CID[] = [];
    for (let k = 0; k < n; k++) {
      need(2);
      const len = dv.getUint16(at, true);
      at += 2;
      need(len);
      try {
        bases.push(CID.decode(bytes.slice(at, at + len)));
      } catch {
        fail(`delta base ${k} is not a CID`);
      }
      at += len;
    }
    need(4);
    const offset = dv.getUint32(at, true);
    at += 4;
    delta = {
      kind: flags & flagDict ? "dict" : flags & flagContext ? "context" : "float",
      bases,
      offset,
    };
  } else if (depth !== 0) fail(`depth ${depth} on a whole block`);
  let keyId: string | undefined;
  let nonce: Uint8Array | undefined;
  if (flags & flagEncrypted) {
    need(1);
    const len = bytes[at] as number;
    at += 1;
    need(len);
    keyId = new TextDecoder().decode(bytes.subarray(at, at + len));
    if (!/^[A-Za-z0-9._-]+$/.test(keyId)) fail("bad key id");
    at += len;
    need(nonceBytes);
    nonce = bytes.slice(at, at + nonceBytes);
    at += nonceBytes;
  }
  return {
    compression,
    planes: (flags & flagPlanes) !== 0,
    coders: (flags & flagCoders) !== 0,
    floats,
    depth,
    phase,
    length,
    delta,
    keyId,
    nonce,
    payloadOffset: at,
  };
}

export interface RecordContext {
  /** Concatenated plaintext of `bases` from `offset`, `length` bytes (zero past the end). */
  readonly baseRange: (bases: readonly CID[], offset: number, length: number) => Uint8Array;
  readonly dataKey: (keyId: string) => Uint8Array;
  /** A whole block's plaintext (the dictionary of a dictionary delta). */
  readonly block: (cid: CID) => Uint8Array;
}

/** Decodes a record to the block's plaintext. The caller checks it against the CID. */
export function decodeRecord(cid: CID, bytes: Uint8Array, ctx: RecordContext): Uint8Array {
  const h = parseRecordHeader(bytes);
  let body = bytes.subarray(h.payloadOffset);
  if (h.keyId !== undefined && h.nonce !== undefined) {
    const aad = associatedData(bytes.subarray(0, h.payloadOffset - nonceBytes), cid);
    body = openBlock(ctx.dataKey(h.keyId), h.nonce, body, aad);
  }
  let plain: Uint8Array;
  if (h.delta?.kind === "dict") {
    const base = ctx.block(h.delta.bases[0] as CID);
    try {
      const size = zstdBinding.getFrameContentSize(body);
      if (size !== h.length)
        throw new RecordFormatError(`zstd frame announces ${size} B, expected ${h.length}`);
      const d = new zstd.Decompressor();
      d.loadDictionary(base);
      plain = d.decompress(body);
    } catch (err) {
      if (err instanceof RecordFormatError) throw err;
      throw new RecordFormatError(
        `dictionary-delta payload does not decompress: ${(err as Error).message}`,
      );
    }
    if (plain.length !== h.length)
      throw new RecordFormatError(`payload decodes to ${plain.length} B, header says ${h.length}`);
    return plain;
  }
  try {
    const ref = h.delta;
    const context = () => {
      if (ref === undefined) throw new RecordFormatError("a context-coded plane without a base");
      return ctx.baseRange(ref.bases, ref.offset, h.length);
    };
    plain = h.floats
      ? decodeFloatBlock(body, h.length, h.phase, ref === undefined ? undefined : context())
      : h.planes
        ? unpackPlanes(h.compression, body, h.length, h.phase, h.coders ? { context } : undefined)
        : decompress(h.compression, body, h.length);
  } catch (err) {
    if (err instanceof RecordFormatError) throw err;
    throw new RecordFormatError(
      `${h.compression} payload does not decompress: ${(err as Error).message}`,
    );
  }
  if (plain.length !== h.length)
    throw new RecordFormatError(`payload decodes to ${plain.length} B, header says ${h.length}`);
  if (h.delta?.kind === "float")
    plain = floatUndelta(plain, ctx.baseRange(h.delta.bases, h.delta.offset, h.length), h.phase);
  return plain;
}
