// A byte-bounded LRU cache (the "hot cache" of a block store): recently read blocks stay in memory
// until their total size passes the bound, least recently used first out. Map keeps insertion
// order, so a hit re-inserts the entry at the young end.

import { invariant } from "../common/assert.ts";

export class ByteLru {
  readonly #entries = new Map<string, Uint8Array>();
  readonly #bytesMax: number;
  #bytes = 0;
  hits = 0;
  misses = 0;

  constructor(bytesMax: number) {
    invariant(Number.isInteger(bytesMax) && bytesMax >= 0, "cache bound is a byte count");
    this.#bytesMax = bytesMax;
  }

  get bytes(): number {
    return this.#bytes;
  }

  get(key: string): Uint8Array | undefined {
    const value = this.#entries.get(key);
    if (value === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.#entries.delete(key);
    this.#entries.set(key, value);
    return value;
  }

  set(key: string, value: Uint8Array): void {
    if (value.length > this.#bytesMax) return;
    this.delete(key);
    this.#entries.set(key, value);
    this.#bytes += value.length;
    for (const [old, v] of this.#entries) {
      if (this.#bytes <= this.#bytesMax) break;
      this.#entries.delete(old);
      this.#bytes -= v.length;
    }
    invariant(this.#bytes <= this.#bytesMax, "cache within its bound");
  }

  delete(key: string): void {
    const v = this.#entries.get(key);
    if (v !== undefined) {
      this.#entries.delete(key);
      this.#bytes -= v.length;
    }
  }
}
