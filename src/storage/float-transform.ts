// Float-aware transforms that make float32 tensors compressible before a general-purpose
// compressor sees them:
// - byte-plane grouping: the 4 bytes of each float32 go to 4 separate planes (all low mantissa
//   bytes, then ..., then all sign/exponent bytes), so the slowly varying exponent bytes form long
//   repetitive runs (the "byte shuffle" of Blosc / HDF5 shuffle filter);
// - float delta: each float32's bit pattern minus the same weight's in an earlier checkpoint, as
//   a zigzag-coded 32-bit integer; where a weight moved a little, the difference is a small
//   number whose three high bytes are zero (for finite floats of one sign, the bit pattern is
//   monotone in the value). Measured on AdamW checkpoints it beats XOR of the bit patterns
//   (0.813 vs 0.829 of raw on weights, with byte planes and zstd-9); partial words at a chunk's
//   edges are XORed.
// `phase` is the position of the chunk's first byte within its float32 (shard offset mod 4), so
// planes line up with real floats even though content-defined chunks start anywhere.
// Both transforms are exact bijections on bytes: nothing is lost whatever the data is.

import { invariant } from "../common/assert.ts";

export function planeLengths(length: number, phase: number): [number, number, number, number] {
  const full = Math.floor(length / 4);
  const counts: [number, number, number, number] = [full, full, full, full];
  for (let i = full * 4; i < length; i++) {
    const k = (i + phase) & 3;
    counts[k as 0 | 1 | 2 | 3] += 1;
  }
  return counts;
}

export function toBytePlanes(data: Uint8Array, phase: number): Uint8Array {
  invariant(phase >= 0 && phase < 4, "phase in 0..3");
  const n = data.length;
  const counts = planeLengths(n, phase);
  const out = new Uint8Array(n);
  const starts = [0, counts[0], counts[0] + counts[1], counts[0] + counts[1] + counts[2]];
  const pos = [0, 0, 0, 0];
  // Bytes i with (i + phase) & 3 === k, in order, go to plane k.
  for (let k = 0; k < 4; k++) {
    const first = (k - phase + 4) & 3;
    let w = starts[k] as number;
    for (let i = first; i < n; i += 4) out[w++] = data[i] as number;
    pos[k] = w;
  }
  invariant(pos[3] === n, "planes fill the output");
  return out;
}

export function fromBytePlanes(planes: Uint8Array, phase: number): Uint8Array {
  invariant(phase >= 0 && phase < 4, "phase in 0..3");
  const n = planes.length;
  const counts = planeLengths(n, phase);
  const out = new Uint8Array(n);
  let r = 0;
  for (let k = 0; k < 4; k++) {
    const first = (k - phase + 4) & 3;
    for (let i = first; i < n; i += 4) out[i] = planes[r++] as number;
    invariant(r === counts.slice(0, k + 1).reduce((a, b) => a + b, 0), "plane length");
  }
  return out;
}

/** a XOR b over a's length; bytes of b past its end count as zero. */
export function xorBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length);
  const m = Math.min(a.length, b.length);
  // 32-bit lanes where both are 4-byte aligned views of whole buffers.
  let i = 0;
  if (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    const words = m >>> 2;
    const a32 = new Uint32Array(a.buffer, a.byteOffset, words);
    const b32 = new Uint32Array(b.buffer, b.byteOffset, words);
    const o32 = new Uint32Array(out.buffer, 0, words);
    for (let w = 0; w < words; w++) o32[w] = (a32[w] as number) ^ (b32[w] as number);
    i = words * 4;
  }
  for (; i < m; i++) out[i] = (a[i] as number) ^ (b[i] as number);
  for (; i < a.length; i++) out[i] = a[i] as number;
  return out;
}

/**
 * Similarity of a chunk and its candidate base (the same tensor region in an earlier checkpoint):
 * the fraction of sampled float32 positions where both words have the same sign and exponents at
 * most one binade apart — "this weight moved a little". Near 1 for weights a few hundred AdamW
 * steps apart, low for unrelated bytes and for fast-moving state (Adam's first moment). An evenly
 * spaced sample of at most `sampleWordsMax` positions keeps the cost independent of chunk size.
 */
export function float32Resemblance(
  chunk: Uint8Array,
  base: Uint8Array,
  phase: number,
  sampleWordsMax: number,
): number {
  const n = Math.min(chunk.length, base.length);
  // Word starts within the chunk: byte index i with (i + phase) & 3 === 0.
  const first = (4 - phase) & 3;
  const words = Math.floor((n - first) / 4);
  if (words <= 0) return 0;
  const step = Math.max(1, Math.floor(words / sampleWordsMax));
  let close = 0;
  let seen = 0;
  for (let w = 0; w < words; w += step) {
    const i = first + w * 4;
    // Little-endian float32: byte i+3 = sign and exponent bits 7..1, byte i+2 bit 7 = exponent bit 0.
    const a = ((chunk[i + 3] as number) << 8) | (chunk[i + 2] as number);
    const b = ((base[i + 3] as number) << 8) | (base[i + 2] as number);
    if (a >>> 15 === b >>> 15 && Math.abs(((a >>> 7) & 0xff) - ((b >>> 7) & 0xff)) <= 1) close++;
    seen++;
  }
  return close / seen;
}

/** Little-endian 32-bit word at i. */
function word(b: Uint8Array, i: number): number {
  return (
    ((b[i] as number) |
      ((b[i + 1] as number) << 8) |
      ((b[i + 2] as number) << 16) |
      ((b[i + 3] as number) << 24)) >>>
    0
  );
}

function putWord(b: Uint8Array, i: number, v: number): void {
  b[i] = v & 0xff;
  b[i + 1] = (v >>> 8) & 0xff;
  b[i + 2] = (v >>> 16) & 0xff;
  b[i + 3] = (v >>> 24) & 0xff;
}

/** Whole float32 words of a chunk of `length` bytes starting at `phase`: [first, end). */
function wordSpan(length: number, phase: number): [number, number] {
  const first = (4 - phase) & 3;
  const words = Math.max(0, Math.floor((length - first) / 4));
  return [first, first + words * 4];
}

/** Float delta of `chunk` against `base` (same length; `base` past its end counts as zero). */
export function floatDelta(chunk: Uint8Array, base: Uint8Array, phase: number): Uint8Array {
  invariant(base.length >= chunk.length, "base range covers the chunk");
  const out = xorBytes(chunk, base); // edges stay XORed
  const [first, end] = wordSpan(chunk.length, phase);
  for (let i = first; i < end; i += 4) {
    const d = (word(chunk, i) - word(base, i)) | 0;
    putWord(out, i, ((d << 1) ^ (d >> 31)) >>> 0);
  }
  return out;
}

/** Inverse of floatDelta. */
export function floatUndelta(delta: Uint8Array, base: Uint8Array, phase: number): Uint8Array {
  invariant(base.length >= delta.length, "base range covers the chunk");
  const out = xorBytes(delta, base);
  const [first, end] = wordSpan(delta.length, phase);
  for (let i = first; i < end; i += 4) {
    const z = word(delta, i);
    const d = (z >>> 1) ^ -(z & 1);
    putWord(out, i, (word(base, i) + d) >>> 0);
  }
  return out;
}
