// Near-duplicate chunk detection by MinHash super-features: a chunk that differs from an earlier
// one by a small edit (a changed config value, rows inserted in a table, a patched tensor) does
// not deduplicate exactly, but shares most of its content. Each chunk gets `featureCount` MinHash
// features — for each of several random linear permutations of a rolling hash, the maximum over
// content-sampled positions — and features are grouped into super-features (hash of a group).
// Chunks sharing a super-feature are candidates; the fraction of equal features estimates their
// Jaccard resemblance, and a candidate at or above `similarity_threshold` becomes the base of a
// zstd delta (the base chunk is the compression dictionary).
// References: Broder, "On the resemblance and containment of documents" (1997); Shilane et al.,
// "WAN optimized replication of backup datasets using stream-informed delta compression" (FAST '12);
// Zhang et al., "Finesse: fine-grained feature locality based fast resemblance detection" (FAST '19).

import { Prng } from "../common/prng.ts";

export const featureCount = 12;
export const featuresPerSuperFeature = 4;
/** Sampled positions per chunk aimed at (the sampling mask is chosen from the chunk's length). */
const samplesTarget = 512;
/** Rolling-hash window, bytes: features describe 32-byte substrings. */
const windowShift = 1;
const featureSeed = 0x6d696e68; // "minh": part of the format, do not change

const permutations = (() => {
  const prng = new Prng(featureSeed);
  const gear = new Uint32Array(256);
  for (let i = 0; i < 256; i++) gear[i] = prng.nextU32();
  const a = new Uint32Array(featureCount);
  const b = new Uint32Array(featureCount);
  for (let i = 0; i < featureCount; i++) {
    a[i] = prng.nextU32() | 1;
    b[i] = prng.nextU32();
  }
  return { gear, a, b };
})();

/** The MinHash features of a chunk (all zero for chunks too short to sample). */
export function chunkFeatures(bytes: Uint8Array): Uint32Array {
  const features = new Uint32Array(featureCount);
  const { gear, a, b } = permutations;
  // Sample where the rolling hash's low bits are zero: content-defined, so an edit elsewhere does
  // not shift which substrings are sampled.
  let maskBits = 0;
  while (maskBits < 20 && bytes.length >> (maskBits + 1) >= samplesTarget) maskBits++;
  const mask = (1 << maskBits) - 1;
  let h = 0;
  for (let i = 0; i < bytes.length; i++) {
    h = ((h << windowShift) + (gear[bytes[i] as number] as number)) | 0;
    if (i < 32 || (h & mask) !== 0) continue;
    for (let k = 0; k < featureCount; k++) {
      const v = (Math.imul(a[k] as number, h) + (b[k] as number)) >>> 0;
      if (v > (features[k] as number)) features[k] = v;
    }
  }
  return features;
}

/** Super-features: one 32-bit hash per group of `featuresPerSuperFeature` features. */
export function superFeatures(features: Uint32Array): number[] {
  const out: number[] = [];
  for (let g = 0; g < featureCount; g += featuresPerSuperFeature) {
    let h = 0x811c9dc5 ^ g;
    for (let k = g; k < g + featuresPerSuperFeature; k++)
      h = Math.imul(h ^ (features[k] as number), 0x01000193) >>> 0;
    out.push(h >>> 0);
  }
  return out;
}

/** Estimated resemblance: the fraction of equal features (0 when either chunk has none). */
export function featureResemblance(x: Uint32Array, y: Uint32Array): number {
  let same = 0;
  let nonZero = false;
  for (let k = 0; k < featureCount; k++) {
    if (x[k] !== 0 || y[k] !== 0) nonZero = true;
    if (x[k] === y[k]) same++;
  }
  return nonZero ? same / featureCount : 0;
}

export function encodeFeatures(f: Uint32Array): string {
  return Array.from(f, (v) => v.toString(16).padStart(8, "0")).join("");
}

export function decodeFeatures(text: string): Uint32Array | undefined {
  if (!/^[0-9a-f]+$/.test(text) || text.length !== featureCount * 8) return undefined;
  const f = new Uint32Array(featureCount);
  for (let k = 0; k < featureCount; k++) f[k] = Number.parseInt(text.slice(k * 8, k * 8 + 8), 16);
  return f;
}
