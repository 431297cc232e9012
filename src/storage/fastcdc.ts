// FastCDC content-defined chunking: cut points depend on the bytes themselves, so an insertion or
// a change in one place moves only the nearby cut points and the remaining chunks deduplicate.
// Gear hash (one shift and one add per byte, much cheaper than Rabin), sub-minimum skipping, and
// normalized chunking (a harder mask before the average size, an easier one after) that narrows
// the chunk-size distribution around the average.
// Reference: Xia et al., "FastCDC: a Fast and Efficient Content-Defined Chunking Approach for Data
// Deduplication", USENIX ATC 2016; and its 2020 TPDS extension (normalization level 2).
//
// Guarantees: every chunk is within [min, max] except the last (which may be shorter than min);
// the chunks concatenate to the input; the same bytes always give the same cut points (the gear
// table comes from a fixed seed, so it is part of the on-disk format: changing it breaks dedup
// with existing stores, not correctness).

import { invariant } from "../common/assert.ts";
import { Prng } from "../common/prng.ts";
import { chunkBytesAvgMin, chunkBytesMax, chunkSizeSpread } from "./constants.ts";
import { StorageError } from "./errors.ts";

/** Seed of the gear table. Part of the chunking format: do not change. */
const gearSeed = 0x6765_6172;
/** Normalization level of FastCDC: the small/large masks have ±this many bits around log2(avg). */
const normalizationBits = 2;

const gear: Uint32Array = (() => {
  const prng = new Prng(gearSeed);
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) table[i] = prng.nextU32();
  return table;
})();

export interface ChunkSizes {
  readonly minBytes: number;
  readonly avgBytes: number;
  readonly maxBytes: number;
}

/** min = avg / 4, max = avg · 4 (the config's `chunk_size` is the average). */
export function chunkSizesFromAverage(avgBytes: number): ChunkSizes {
  if (
    !Number.isInteger(avgBytes) ||
    avgBytes < chunkBytesAvgMin ||
    avgBytes * chunkSizeSpread > chunkBytesMax
  ) {
    throw new StorageError(
      "bad-input",
      `checkpoint_strategy.deduplication.chunk_size: expected an average chunk size between ${chunkBytesAvgMin} B and ${chunkBytesMax / chunkSizeSpread} B; got ${avgBytes} B`,
    );
  }
  return {
    minBytes: Math.floor(avgBytes / chunkSizeSpread),
    avgBytes,
    maxBytes: avgBytes * chunkSizeSpread,
  };
}

/** A mask of `bits` ones in the top bits of a 32-bit word: the gear hash's top bits see the most bytes. */
function topMask(bits: number): number {
  invariant(bits >= 1 && bits <= 31, () => `mask bits ${bits} out of range`);
  return ((0xffff_ffff << (32 - bits)) >>> 0) as number;
}

export class FastCdc {
  readonly sizes: ChunkSizes;
  readonly #maskSmall: number;
  readonly #maskLarge: number;

  constructor(sizes: ChunkSizes) {
    invariant(sizes.minBytes >= 1 && sizes.minBytes <= sizes.avgBytes, "min ≤ avg");
    invariant(
      sizes.avgBytes <= sizes.maxBytes && sizes.maxBytes <= chunkBytesMax,
      "avg ≤ max ≤ limit",
    );
    this.sizes = sizes;
    const bits = Math.round(Math.log2(sizes.avgBytes));
    this.#maskSmall = topMask(Math.min(31, bits + normalizationBits));
    this.#maskLarge = topMask(Math.max(1, bits - normalizationBits));
  }

  /** Length of the next chunk of `data` starting at `start` (FastCDC's cut-point search). */
  nextCut(data: Uint8Array, start: number): number {
    const remaining = data.length - start;
    const { minBytes, avgBytes, maxBytes } = this.sizes;
    if (remaining <= minBytes) return remaining;
    const normal = start + Math.min(avgBytes, remaining);
    const end = start + Math.min(maxBytes, remaining);
    const maskS = this.#maskSmall;
    const maskL = this.#maskLarge;
    const g = gear;
    let fp = 0;
    let i = start + minBytes;
    for (; i < normal; i++) {
      fp = ((fp << 1) + (g[data[i] as number] as number)) | 0;
      if ((fp & maskS) === 0) return i + 1 - start;
    }
    for (; i < end; i++) {
      fp = ((fp << 1) + (g[data[i] as number] as number)) | 0;
      if ((fp & maskL) === 0) return i + 1 - start;
    }
    return end - start;
  }

  /** Cut offsets of `data`: chunk k is data[cuts[k-1] ?? 0, cuts[k]); the last cut is data.length. */
  cuts(data: Uint8Array): number[] {
    const cuts: number[] = [];
    let offset = 0;
    while (offset < data.length) {
      const length = this.nextCut(data, offset);
      invariant(length >= 1 && length <= this.sizes.maxBytes, () => `chunk length ${length}`);
      offset += length;
      cuts.push(offset);
    }
    return cuts;
  }
}
