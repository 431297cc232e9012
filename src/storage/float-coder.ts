// A lossless float32 coder for successive training checkpoints: each float is coded given the
// same weight in the previous checkpoint (the "base"), in the order fpzip codes floats —
// sign + exponent first, through an adaptive context model, then the mantissa — with the
// predictable part modelled and the noise stored as raw bits:
//   1. sign + exponent (9 bits): one adaptive binary flag "same as the base's" (true for most
//      weights and for Adam's second moment, whose binade rarely changes in 100 steps); otherwise
//      the 9 bits through a bit tree whose context is the base's sign + exponent;
//   2. same sign and exponent: the mantissa's integer difference from the base's, zigzagged; its
//      magnitude class (number of significant bits, 0–24, as FPC / Gorilla / fpzip) is coded
//      through a bit tree with the base's sign + exponent and the previous float's class as
//      context, the two bits below the leading one are modelled (their density falls within a
//      class) and the rest go raw — they are noise (measured 7.9+ bits/byte);
//      otherwise: the 3 top mantissa bits are modelled (a float that left its base's binade
//      upwards sits low in its new binade, and vice versa) and the 20 others go raw.
//   Zero and subnormal floats code their mantissa's class instead (exact zeros cost a fraction
//   of a bit, not 23).
// Without a base (a checkpoint's first save, or Adam's first moment, which forgets its base in ~10
// steps: the caller keeps the smaller) step 1 uses the previous float's sign and exponent as
// context and the 23 mantissa bits go raw. Probabilities adapt with a count (range-coder.ts,
// stateInit): that alone took 1% of raw off every tensor kind against LZMA's fixed rate.
// Why not the XOR / integer delta + byte planes + zstd of earlier versions: a weight that moved by
// about its own size changes its exponent, and XOR or integer deltas then spill noise into every
// byte; coding the exponent given the base's keeps the cost at what the move really carries.
// Measured on the lr 3e-3 series of bench/checkpoint-model-series.ts (bench/checkpoint-
// encodings.ts prints it beside the older encodings), per tensor, checkpoints 2..5: 0.788× of raw
// for weights, 0.826× for Adam's m, 0.778× for v, where the best byte-plane coders reached 0.796×,
// 0.825× and 0.780× (and a per-byte model given the base's byte is bounded at 0.792× on weights).
// In the warm tier (256 KiB chunks): weights 0.811× → 0.788×, weights + moments 0.809× → 0.796×.
// References: P. Lindstrom, M. Isenburg, "Fast and Efficient Compression of Floating-Point Data",
// IEEE TVCG 2006 (fpzip); M. Burtscher, P. Ratanaworabhan, "FPC", IEEE TC 2009; T. Pelkonen et
// al., "Gorilla", VLDB 2015; the binary range coder is LZMA's (range-coder.ts).
//
// Untrusted input: decoding does exactly `count` floats of work, reads only the given bytes, and
// rejects a class above 24, a short or long raw-bit stream and a range-coded stream that does not
// end cleanly (RangeCoderError); the caller checks the decoded block against its CID.

import { invariant } from "../common/assert.ts";
import { BinaryDecoder, BinaryEncoder, RangeCoderError, stateInit } from "./range-coder.ts";

/** Sign + exponent bits of a float32. */
const seBits = 9;
const seCount = 1 << seBits;
/** Bits of a zigzagged mantissa difference (24: the difference of two 23-bit mantissas, signed). */
const mantissaBits = 23;
const classBits = 5;
const classMax = 24;
/** Top mantissa bits modelled when the exponent moved; the rest go raw. */
const topBits = 3;
const lowBits = mantissaBits - topBits;
/** Bits just below the leading one of a mantissa class that are modelled (their density falls). */
const belowBits = 2;
const belowCount = belowBits + 1;
/** Buckets of the previous float's state used as context (see prevBucket). */
const bucketCount = 8;

/** Bucket of the previous float: 0 when its exponent moved, 1–7 by its mantissa class. */
function prevBucket(same: boolean, cls: number): number {
  return same ? 1 + Math.min(6, cls >>> 2) : 0;
}

function classOf(z: number): number {
  return z === 0 ? 0 : 32 - Math.clz32(z);
}

/** Appends little-endian bit fields of up to 24 bits. */
class BitWriter {
  #buf: Uint8Array;
  #len = 0;
  #acc = 0;
  #n = 0;
  constructor(bitsMax: number) {
    this.#buf = new Uint8Array(Math.ceil(bitsMax / 8) + 4);
  }
  write(v: number, bits: number): void {
    this.#acc = (this.#acc | (v << this.#n)) >>> 0;
    this.#n += bits;
    while (this.#n >= 8) {
      this.#buf[this.#len++] = this.#acc & 0xff;
      this.#acc >>>= 8;
      this.#n -= 8;
    }
  }
  bytes(): Uint8Array {
    if (this.#n > 0) this.#buf[this.#len++] = this.#acc & 0xff;
    return this.#buf.subarray(0, this.#len);
  }
}

class BitReader {
  readonly #buf: Uint8Array;
  #at = 0;
  #acc = 0;
  #n = 0;
  constructor(buf: Uint8Array) {
    this.#buf = buf;
  }
  read(bits: number): number {
    while (this.#n < bits) {
      if (this.#at >= this.#buf.length)
        throw new RangeCoderError("raw mantissa bits end before the last float");
      this.#acc = (this.#acc | ((this.#buf[this.#at++] as number) << this.#n)) >>> 0;
      this.#n += 8;
    }
    const v = bits === 32 ? this.#acc : this.#acc & ((1 << bits) - 1);
    this.#acc = bits === 32 ? 0 : this.#acc >>> bits;
    this.#n -= bits;
    return v;
  }
  /** Throws unless every byte was read and the padding bits are zero. */
  finish(): void {
    if (this.#at !== this.#buf.length || this.#acc !== 0)
      throw new RangeCoderError("raw mantissa bits do not end with the last float");
  }
}

/** The adaptive models of one block (fresh per block: each record decodes on its own). */
class Models {
  /** P(sign + exponent equals the base's), context: base's sign+exponent × previous bucket. */
  readonly same = new Uint32Array(seCount * bucketCount);
  /** 9-bit trees, context: the base's (or, without one, the previous float's) sign + exponent. */
  readonly se: (Uint32Array | undefined)[] = new Array(seCount);
  /** Mantissa class trees (32 nodes), context: base's sign+exponent × previous bucket. */
  readonly cls = new Uint32Array(seCount * bucketCount * (1 << classBits));
  /** Top mantissa bits when the exponent moved: context up / down / sign changed. */
  readonly top = new Uint32Array(3 * (1 << topBits));
  /** A moved sign + exponent (encodeMoved): sign flipped, direction, steps, escapes. */
  readonly flip = new Uint32Array(seCount).fill(stateInit);
  readonly up = new Uint32Array(seCount).fill(stateInit);
  readonly step = new Uint32Array(seCount * 2 * (1 << stepBits)).fill(stateInit);
  readonly far = new Uint32Array(1 << 8).fill(stateInit);
  /** 8-bit exponent trees after a sign flip, context: the base's sign + exponent (made lazily). */
  readonly flipped: (Uint32Array | undefined)[] = new Array(seCount);
  /** Mantissa class of zero and subnormal floats. */
  readonly tiny = new Uint32Array(1 << classBits).fill(stateInit);
  /** The bits just below a class's leading one, context: the class. */
  readonly below = new Uint32Array((classMax + 1) * belowCount * (1 << belowBits));
  constructor() {
    this.same.fill(stateInit);
    this.cls.fill(stateInit);
    this.top.fill(stateInit);
    this.below.fill(stateInit);
  }
  flippedTree(c: number): Uint32Array {
    let t = this.flipped[c];
    if (t === undefined) {
      t = new Uint32Array(1 << 8).fill(stateInit);
      this.flipped[c] = t;
    }
    return t;
  }
  seTree(c: number): Uint32Array {
    let t = this.se[c];
    if (t === undefined) {
      t = new Uint32Array(seCount).fill(stateInit);
      this.se[c] = t;
    }
    return t;
  }
}

const headBytes = 4;

/**
 * The mantissa of a zero or subnormal float (exponent field 0): its class, then the bits below
 * the leading one raw. Exact zeros (Adam's moments of embedding rows no batch touched, 2% of the
 * optimizer state here) then cost a fraction of a bit instead of 23.
 */
function encodeTiny(rc: BinaryEncoder, raw: BitWriter, m: Models, mant: number): void {
  const k = classOf(mant);
  rc.encodeTree(m.tiny, 0, classBits, k);
  if (k > 1) raw.write(mant & ((1 << (k - 1)) - 1), k - 1);
}

function decodeTiny(rc: BinaryDecoder, raw: BitReader, m: Models): number {
  const k = rc.decodeTree(m.tiny, 0, classBits);
  if (k > mantissaBits) throw new RangeCoderError(`subnormal mantissa class ${k} above 23`);
  return k === 0 ? 0 : (1 << (k - 1)) | (k > 1 ? raw.read(k - 1) : 0);
}

/** Exponent steps coded through the step tree; a larger move escapes to the whole exponent. */
const stepBits = 3;
const stepEscape = (1 << stepBits) - 1;

/**
 * A sign + exponent that differs from the base's, as a few binary decisions instead of a 9-bit
 * tree (fewer decisions: a faster restore; measured equal size): the sign flipped? then, same
 * sign: up or down, and by how many binades (1..7, or an escape to the 8 exponent bits);
 * flipped: the 8 exponent bits given the base's sign + exponent.
 */
function encodeMoved(rc: BinaryEncoder, m: Models, xse: number, bse: number): void {
  const flip = (xse ^ bse) >>> 8;
  rc.encode(m.flip, bse, flip);
  const xe = xse & 0xff;
  const be = bse & 0xff;
  if (flip === 1) {
    rc.encodeTree(m.flippedTree(bse), 0, 8, xe);
    return;
  }
  const up = xe > be ? 1 : 0;
  rc.encode(m.up, bse, up);
  const step = Math.min(up === 1 ? xe - be - 1 : be - xe - 1, stepEscape);
  rc.encodeTree(m.step, ((bse << 1) | up) << stepBits, stepBits, step);
  if (step === stepEscape) rc.encodeTree(m.far, 0, 8, xe);
}

function decodeMoved(rc: BinaryDecoder, m: Models, bse: number): number {
  const flip = rc.decode(m.flip, bse);
  const be = bse & 0xff;
  if (flip === 1) return ((bse ^ 0x100) & 0x100) | rc.decodeTree(m.flippedTree(bse), 0, 8);
  const up = rc.decode(m.up, bse);
  const step = rc.decodeTree(m.step, ((bse << 1) | up) << stepBits, stepBits);
  const xe =
    step === stepEscape ? rc.decodeTree(m.far, 0, 8) : up === 1 ? be + step + 1 : be - step - 1;
  if (xe < 0 || xe > 0xff || xe === be || (up === 1) !== xe > be)
    throw new RangeCoderError(`exponent step ${step} ${up === 1 ? "up" : "down"} from ${be}`);
  return (bse & 0x100) | xe;
}

function relation(xse: number, bse: number): number {
  if (xse >>> 8 !== bse >>> 8) return 2;
  return (xse & 0xff) > (bse & 0xff) ? 0 : 1;
}

/**
 * Codes `x` given `base` (same length) or, without a base, given each float's predecessor.
 * Layout: u32 range-coded length, the range-coded models, then the raw bits.
 */
export function encodeFloats(x: Uint32Array, base: Uint32Array | undefined): Uint8Array {
  invariant(base === undefined || base.length >= x.length, "a base float per float");
  const m = new Models();
  const rc = new BinaryEncoder();
  const raw = new BitWriter(x.length * mantissaBits);
  let prevSe = 0;
  let bucket = 0;
  for (let i = 0; i < x.length; i++) {
    const xi = x[i] as number;
    const xse = xi >>> 23;
    if (base === undefined) {
      rc.encodeTree(m.seTree(prevSe), 0, seBits, xse);
      if ((xse & 0xff) === 0) encodeTiny(rc, raw, m, xi & 0x7f_ffff);
      else raw.write(xi & 0x7f_ffff, mantissaBits);
      prevSe = xse;
      continue;
    }
    const bi = base[i] as number;
    const bse = bi >>> 23;
    const ctx = bse * bucketCount + bucket;
    if (xse === bse) {
      rc.encode(m.same, ctx, 0);
      const d = ((xi & 0x7f_ffff) - (bi & 0x7f_ffff)) | 0;
      const z = ((d << 1) ^ (d >> 31)) >>> 0;
      const k = classOf(z);
      rc.encodeTree(m.cls, ctx << classBits, classBits, k);
      if (k > 1) {
        const under = Math.min(k - 1, belowBits);
        const rest = k - 1 - under;
        const bits = (z >>> rest) & ((1 << under) - 1);
        rc.encodeTree(m.below, (k * belowCount + under) << belowBits, under, bits);
        if (rest > 0) raw.write(z & ((1 << rest) - 1), rest);
      }
      bucket = prevBucket(true, k);
    } else {
      rc.encode(m.same, ctx, 1);
      encodeMoved(rc, m, xse, bse);
      if ((xse & 0xff) === 0) encodeTiny(rc, raw, m, xi & 0x7f_ffff);
      else {
        const r = relation(xse, bse);
        if (topBits > 0) rc.encodeTree(m.top, r << topBits, topBits, (xi & 0x7f_ffff) >>> lowBits);
        raw.write(xi & ((1 << lowBits) - 1), lowBits);
      }
      bucket = 0;
    }
    prevSe = xse;
  }
  const coded = rc.finish();
  const bits = raw.bytes();
  const out = new Uint8Array(headBytes + coded.length + bits.length);
  new DataView(out.buffer).setUint32(0, coded.length, true);
  out.set(coded, headBytes);
  out.set(bits, headBytes + coded.length);
  return out;
}

/** Inverse of encodeFloats: exactly `count` floats, with the same `base`. */
export function decodeFloats(
  payload: Uint8Array,
  count: number,
  base: Uint32Array | undefined,
): Uint32Array {
  invariant(base === undefined || base.length >= count, "a base float per float");
  if (payload.length < headBytes)
    throw new RangeCoderError("float payload shorter than its header");
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const codedLen = dv.getUint32(0, true);
  if (headBytes + codedLen > payload.length)
    throw new RangeCoderError("range-coded floats run past the payload");
  const rc = new BinaryDecoder(payload.subarray(headBytes, headBytes + codedLen));
  const raw = new BitReader(payload.subarray(headBytes + codedLen));
  const m = new Models();
  const out = new Uint32Array(count);
  let prevSe = 0;
  let bucket = 0;
  for (let i = 0; i < count; i++) {
    if (base === undefined) {
      const xse = rc.decodeTree(m.seTree(prevSe), 0, seBits);
      const mant = (xse & 0xff) === 0 ? decodeTiny(rc, raw, m) : raw.read(mantissaBits);
      out[i] = ((xse << 23) | mant) >>> 0;
      prevSe = xse;
      continue;
    }
    const bi = base[i] as number;
    const bse = bi >>> 23;
    const ctx = bse * bucketCount + bucket;
    let xse: number;
    if (rc.decode(m.same, ctx) === 0) {
      xse = bse;
      const k = rc.decodeTree(m.cls, ctx << classBits, classBits);
      if (k > classMax) throw new RangeCoderError(`mantissa class ${k} above ${classMax}`);
      let z = k === 0 ? 0 : 1;
      if (k > 1) {
        const under = Math.min(k - 1, belowBits);
        const rest = k - 1 - under;
        z = (z << under) | rc.decodeTree(m.below, (k * belowCount + under) << belowBits, under);
        if (rest > 0) z = (z << rest) | raw.read(rest);
      }
      const d = (z >>> 1) ^ -(z & 1);
      const mant = (bi & 0x7f_ffff) + d;
      if (mant < 0 || mant > 0x7f_ffff)
        throw new RangeCoderError("mantissa difference leaves the base's binade");
      out[i] = ((xse << 23) | mant) >>> 0;
      bucket = prevBucket(true, k);
    } else {
      xse = decodeMoved(rc, m, bse);
      if (xse === bse) throw new RangeCoderError("a moved exponent equal to its base's");
      if ((xse & 0xff) === 0) out[i] = ((xse << 23) | decodeTiny(rc, raw, m)) >>> 0;
      else {
        const r = relation(xse, bse);
        const top = topBits > 0 ? rc.decodeTree(m.top, r << topBits, topBits) : 0;
        out[i] = ((xse << 23) | (top << lowBits) | raw.read(lowBits)) >>> 0;
      }
      bucket = 0;
    }
    prevSe = xse;
  }
  rc.finish();
  raw.finish();
  return out;
}

/**
 * Blocks shorter than this are stored by the byte-plane coders: the models' tables (~0.6 MB to
 * set up) and their learning cost dominate a small block.
 */
export const floatBlockBytesMin = 4096;
/** Floats coded both ways (with and without the base) to choose before the real pass. */
const modeProbeFloats = 8192;

/** Whole float32 words of a block of `length` bytes whose first byte sits at `phase`: [first, end). */
function wordSpan(length: number, phase: number): [number, number] {
  const first = Math.min(length, (4 - phase) & 3);
  const words = Math.max(0, Math.floor((length - first) / 4));
  return [first, first + words * 4];
}

/** The block coder reads and writes float32 words in host order; the store's format is little-endian. */
const hostLittleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function wordsOf(bytes: Uint8Array, first: number, end: number): Uint32Array {
  invariant(hostLittleEndian, "a little-endian host");
  const out = new Uint32Array((end - first) / 4);
  if ((bytes.byteOffset + first) % 4 === 0)
    out.set(new Uint32Array(bytes.buffer, bytes.byteOffset + first, out.length));
  else {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let j = 0; j < out.length; j++) out[j] = dv.getUint32(first + 4 * j, true);
  }
  return out;
}

/**
 * A block's bytes as a float-coded payload: the partial words at its edges raw (their lengths
 * follow from the length and phase), then encodeFloats of the whole words — given the base's
 * words when `base` (the same region of the previous checkpoint) is given and a probe of the
 * first floats finds that smaller than coding them alone. `usedBase`: the payload needs it.
 */
export function encodeFloatBlock(
  bytes: Uint8Array,
  phase: number,
  base: Uint8Array | undefined,
): { bytes: Uint8Array; usedBase: boolean } {
  invariant(base === undefined || base.length >= bytes.length, "base range covers the block");
  const [first, end] = wordSpan(bytes.length, phase);
  const x = wordsOf(bytes, first, end);
  let b = base === undefined ? undefined : wordsOf(base, first, end);
  if (b !== undefined && x.length > modeProbeFloats) {
    const probe = x.subarray(0, modeProbeFloats);
    const withBase = encodeFloats(probe, b.subarray(0, modeProbeFloats)).length;
    if (encodeFloats(probe, undefined).length < withBase) b = undefined;
  }
  let coded = encodeFloats(x, b);
  if (b !== undefined && x.length <= modeProbeFloats) {
    const alone = encodeFloats(x, undefined);
    if (alone.length < coded.length) {
      coded = alone;
      b = undefined;
    }
  }
  const out = new Uint8Array(first + (bytes.length - end) + coded.length);
  out.set(bytes.subarray(0, first), 0);
  out.set(bytes.subarray(end), first);
  out.set(coded, first + bytes.length - end);
  return { bytes: out, usedBase: b !== undefined };
}

/** Inverse of encodeFloatBlock: `length` bytes; `base` exactly when the encoder used it. */
export function decodeFloatBlock(
  payload: Uint8Array,
  length: number,
  phase: number,
  base: Uint8Array | undefined,
): Uint8Array {
  invariant(base === undefined || base.length >= length, "base range covers the block");
  const [first, end] = wordSpan(length, phase);
  const edges = first + (length - end);
  if (payload.length < edges) throw new RangeCoderError("float payload shorter than its edges");
  const out = new Uint8Array(length);
  out.set(payload.subarray(0, first), 0);
  out.set(payload.subarray(first, edges), end);
  const x = decodeFloats(
    payload.subarray(edges),
    (end - first) / 4,
    base === undefined ? undefined : wordsOf(base, first, end),
  );
  out.set(new Uint8Array(x.buffer, 0, x.byteLength), first);
  return out;
}
