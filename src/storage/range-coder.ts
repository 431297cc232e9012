// An adaptive binary range coder (the one of LZMA: 11-bit probabilities, shift-5 adaptation,
// carry propagation through a cached byte) coding bytes through a 256-leaf bit tree per context.
// Why: zstd and brotli model a byte stream order-0 within a block (Huffman / FSE plus matches), so
// a float32 byte plane whose byte is predictable from the *previous checkpoint's* byte at the same
// position (the sign/exponent plane: measured 1.6–1.7 bits/float given the base's byte, against
// 2.6 bits/float for zstd-9 on the same plane of a 4.3M-parameter AdamW run) costs them 0.5–1 bit
// per float more than the conditional entropy. Coding each byte with the base's byte as context
// (fpzip and CM coders do this) closes that gap. The coder is exact: decode(encode(x)) === x.
// Reference: Igor Pavlov, LZMA SDK (rc: RangeEnc_EncodeBit / RangeDec_DecodeBit), and
// P. Lindstrom, M. Isenburg, "Fast and Efficient Compression of Floating-Point Data", IEEE TVCG 2006.
//
// Untrusted input: decoding reads at most the given bytes and does exactly `length` symbols of work.
// The encoder flushes `low` whole, so a clean stream ends with the decoder's code at exactly 0
// having read every byte; anything else (a flipped byte, even in the flush, a cut or an extended
// payload) throws RangeCoderError, and a flip that still ends cleanly changes the decoded bytes,
// which the caller's CID check rejects.

import { invariant } from "../common/assert.ts";

const probBits = 11;
const probOne = 1 << probBits;
const probInit = probOne >>> 1;
const moveBits = 5;
const topValue = 2 ** 24;
const two32 = 2 ** 32;
/** Contexts: one byte of context selects a 256-node bit tree (allocated when first used, so
 * that a small plane does not pay for 256 trees). */
const contextCount = 256;

function newTree(): Uint16Array {
  return new Uint16Array(256).fill(probInit);
}

export class RangeCoderError extends Error {}

/** Growable output for the encoder. */
class ByteSink {
  #buf = new Uint8Array(1024);
  #len = 0;
  push(b: number): void {
    if (this.#len === this.#buf.length) {
      const next = new Uint8Array(this.#buf.length * 2);
      next.set(this.#buf);
      this.#buf = next;
    }
    this.#buf[this.#len++] = b;
  }
  bytes(): Uint8Array {
    return this.#buf.slice(0, this.#len);
  }
}

/**
 * Codes `data` byte by byte; byte i is modelled in the context `context[i]` (one probability tree
 * per context value), or in one context when `context` is undefined.
 */
export function rangeEncodeBytes(data: Uint8Array, context?: Uint8Array): Uint8Array {
  invariant(context === undefined || context.length >= data.length, "a context byte per byte");
  const trees: (Uint16Array | undefined)[] = new Array(contextCount);
  const out = new ByteSink();
  let low = 0;
  let range = 0xffff_ffff;
  let cache = 0;
  let cacheSize = 1;
  const shiftLow = () => {
    if (low < 0xff00_0000 || low >= two32) {
      const carry = low >= two32 ? 1 : 0;
      let temp = cache;
      do {
        out.push((temp + carry) & 0xff);
        temp = 0xff;
      } while (--cacheSize !== 0);
      cache = Math.floor(low / topValue) & 0xff;
    }
    cacheSize++;
    low = (low % topValue) * 256;
  };
  for (let i = 0; i < data.length; i++) {
    const c = context === undefined ? 0 : (context[i] as number);
    let probs = trees[c];
    if (probs === undefined) {
      probs = newTree();
      trees[c] = probs;
    }
    const byte = data[i] as number;
    let node = 1;
    for (let bit = 7; bit >= 0; bit--) {
      const b = (byte >>> bit) & 1;
      const at = node;
      const p = probs[at] as number;
      const bound = (range >>> probBits) * p;
      if (b === 0) {
        range = bound;
        probs[at] = p + ((probOne - p) >>> moveBits);
      } else {
        low += bound;
        range -= bound;
        probs[at] = p - (p >>> moveBits);
      }
      while (range < topValue) {
        range = (range * 256) >>> 0;
        shiftLow();
      }
      node = (node << 1) | b;
    }
  }
  for (let k = 0; k < 5; k++) shiftLow();
  return out.bytes();
}

/** Inverse of rangeEncodeBytes: exactly `length` bytes, with the same `context`. */
export function rangeDecodeBytes(
  payload: Uint8Array,
  length: number,
  context?: Uint8Array,
): Uint8Array {
  invariant(context === undefined || context.length >= length, "a context byte per byte");
  const trees: (Uint16Array | undefined)[] = new Array(contextCount);
  const out = new Uint8Array(length);
  let at = 0;
  const end = payload.length;
  const next = () => {
    if (at >= payload.length)
      throw new RangeCoderError(`range-coded payload of ${payload.length} B ends early`);
    return payload[at++] as number;
  };
  let range = 0xffff_ffff;
  let code = 0;
  // The encoder's first byte is always 0 (its cache starts empty) and falls outside the 32-bit code.
  if (next() !== 0) throw new RangeCoderError("range-coded payload does not start with 0");
  for (let k = 0; k < 4; k++) code = code * 256 + next();
  for (let i = 0; i < length; i++) {
    const c = context === undefined ? 0 : (context[i] as number);
    let probs = trees[c];
    if (probs === undefined) {
      probs = newTree();
      trees[c] = probs;
    }
    let node = 1;
    for (let bit = 0; bit < 8; bit++) {
      const idx = node;
      const p = probs[idx] as number;
      const bound = (range >>> probBits) * p;
      let b: number;
      if (code < bound) {
        range = bound;
        probs[idx] = p + ((probOne - p) >>> moveBits);
        b = 0;
      } else {
        code -= bound;
        range -= bound;
        probs[idx] = p - (p >>> moveBits);
        b = 1;
      }
      while (range < topValue) {
        // code < range < 2^24 here, so code · 256 + byte stays below 2^32.
        if (at >= end) throw new RangeCoderError(`range-coded payload of ${end} B ends early`);
        range = (range * 256) >>> 0;
        code = code * 256 + (payload[at++] as number);
      }
      node = (node << 1) | b;
    }
    out[i] = node & 0xff;
  }
  if (code !== 0 || at !== payload.length)
    throw new RangeCoderError(
      `range-coded payload does not end cleanly (code ${code}, ${payload.length - at} B left)`,
    );
  return out;
}

/**
 * Adaptive probabilities with a count (the state-map update of lpaq / cmix): each slot of a
 * Uint32Array holds P(bit = 0) in 16 bits and, above them, how often it was used; the update
 * moves P by 1/(n + 1.5) of the error until n reaches `adaptCountMax`, then by a fixed rate —
 * fast to learn a context's first uses, steady after. Fill new model arrays with `stateInit`.
 */
export const stateInit = 0x8000;
/**
 * Uses after which the rate stops falling (1/61.5). Measured on the lr 3e-3 model series with the
 * float coder (weights / m / v as a fraction of raw): 30 → 0.791 / 0.822 / 0.776, 60 → 0.791 /
 * 0.821 / 0.777, 255 → 0.791 / 0.822 / 0.779; LZMA's fixed 1/32 → 0.798 / 0.827 / 0.782.
 */
const adaptCountMax = 60;
/** 1/(n + 1.5) in 15-bit fixed point: (error · rate) >> 15 stays within int32. */
const adaptRate = Int32Array.from({ length: adaptCountMax + 1 }, (_, n) =>
  Math.round(32768 / (n + 1.5)),
);
const codeBits = 12;

/** The 12-bit probability the coder uses (never 0: both symbols stay codable). */
function coded(v: number): number {
  const p = (v & 0xffff) >>> (16 - codeBits);
  return p === 0 ? 1 : p;
}

function adapted(v: number, bit: number): number {
  const p = v & 0xffff;
  const n = v >>> 16;
  const q = p + ((((bit === 0 ? 0xffff : 0) - p) * (adaptRate[n] as number)) >> 15);
  return (((n < adaptCountMax ? n + 1 : n) << 16) | q) >>> 0;
}

/**
 * The same binary coder for callers with their own models: `encode(probs, at, bit)` codes one
 * decision with the adaptive probability `probs[at]` (see stateInit); `encodeTree` codes `bits`
 * bits of a value, most significant first, through the bit tree at `probs[offset + 1 ..]`.
 */
export class BinaryEncoder {
  readonly #out = new ByteSink();
  #low = 0;
  #range = 0xffff_ffff;
  #cache = 0;
  #cacheSize = 1;

  #shiftLow(): void {
    const low = this.#low;
    if (low < 0xff00_0000 || low >= two32) {
      const carry = low >= two32 ? 1 : 0;
      let temp = this.#cache;
      do {
        this.#out.push((temp + carry) & 0xff);
        temp = 0xff;
      } while (--this.#cacheSize !== 0);
      this.#cache = Math.floor(low / topValue) & 0xff;
    }
    this.#cacheSize++;
    this.#low = (low % topValue) * 256;
  }

  encode(probs: Uint32Array, at: number, bit: number): void {
    const v = probs[at] as number;
    const bound = (this.#range >>> codeBits) * coded(v);
    if (bit === 0) this.#range = bound;
    else {
      this.#low += bound;
      this.#range -= bound;
    }
    probs[at] = adapted(v, bit);
    while (this.#range < topValue) {
      this.#range = (this.#range * 256) >>> 0;
      this.#shiftLow();
    }
  }

  encodeTree(probs: Uint32Array, offset: number, bits: number, value: number): void {
    let node = 1;
    for (let k = bits - 1; k >= 0; k--) {
      const b = (value >>> k) & 1;
      this.encode(probs, offset + node, b);
      node = (node << 1) | b;
    }
  }

  finish(): Uint8Array {
    for (let k = 0; k < 5; k++) this.#shiftLow();
    return this.#out.bytes();
  }
}

/** Inverse of BinaryEncoder, over an untrusted payload (see the header for what it rejects). */
export class BinaryDecoder {
  readonly #payload: Uint8Array;
  #at = 0;
  #range = 0xffff_ffff;
  #code = 0;

  constructor(payload: Uint8Array) {
    this.#payload = payload;
    if (payload.length < 5)
      throw new RangeCoderError(`range-coded payload of ${payload.length} B ends early`);
    if (payload[0] !== 0) throw new RangeCoderError("range-coded payload does not start with 0");
    for (let k = 1; k < 5; k++) this.#code = this.#code * 256 + (payload[k] as number);
    this.#at = 5;
  }

  decode(probs: Uint32Array, at: number): number {
    const v = probs[at] as number;
    const bound = (this.#range >>> codeBits) * coded(v);
    let b: number;
    if (this.#code < bound) {
      this.#range = bound;
      b = 0;
    } else {
      this.#code -= bound;
      this.#range -= bound;
      b = 1;
    }
    probs[at] = adapted(v, b);
    while (this.#range < topValue) {
      if (this.#at >= this.#payload.length)
        throw new RangeCoderError(`range-coded payload of ${this.#payload.length} B ends early`);
      this.#range = (this.#range * 256) >>> 0;
      this.#code = this.#code * 256 + (this.#payload[this.#at++] as number);
    }
    return b;
  }

  /** decode() over a bit tree, with the coder's state in locals (the hot loop of a restore). */
  decodeTree(probs: Uint32Array, offset: number, bits: number): number {
    const payload = this.#payload;
    let range = this.#range;
    let code = this.#code;
    let at = this.#at;
    let node = 1;
    for (let k = 0; k < bits; k++) {
      const i = offset + node;
      const v = probs[i] as number;
      const bound = (range >>> codeBits) * coded(v);
      let b = 0;
      if (code < bound) range = bound;
      else {
        code -= bound;
        range -= bound;
        b = 1;
      }
      probs[i] = adapted(v, b);
      while (range < topValue) {
        if (at >= payload.length)
          throw new RangeCoderError(`range-coded payload of ${payload.length} B ends early`);
        range = (range * 256) >>> 0;
        code = code * 256 + (payload[at++] as number);
      }
      node = (node << 1) | b;
    }
    this.#range = range;
    this.#code = code;
    this.#at = at;
    return node - (1 << bits);
  }

  /** Throws unless the stream ended cleanly: every byte read and the code back at 0. */
  finish(): void {
    if (this.#code !== 0 || this.#at !== this.#payload.length)
      throw new RangeCoderError(
        `range-coded payload does not end cleanly (code ${this.#code}, ${this.#payload.length - this.#at} B left)`,
      );
  }
}
