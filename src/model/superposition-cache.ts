// The spec's `superposition_cache`: an LRU cache of routing decisions keyed by a hash of the
// token's hidden state, quantised so that (nearly) equal states share an entry. On a hit the MoE
// layer reuses the stored experts and gate weights and skips the router for that token — e.g.
// when generation re-reads a prefix it has already routed. Used only when no gradient is being
// recorded; any weight update must `clear()` it, since routing depends on the weights.
//
// Key: each coordinate is scaled by the row's max |h| and rounded to a signed `bits`-bit integer
// (max-abs quantisation, as in LLM.int8()); the integers are hashed with 64-bit FNV-1a, and the
// quantised vector is stored with the entry, so a hash collision is detected, never served.

import { invariant } from "../common/assert.ts";
import type { Buf } from "../tensor/tensor.ts";

export interface CachedRoute {
  readonly experts: Int32Array;
  readonly gates: Float32Array;
}

interface Entry {
  readonly q: Int16Array;
  readonly route: CachedRoute;
}

const fnvOffset = 0xcbf29ce484222325n;
const fnvPrime = 0x100000001b3n;

export class SuperpositionCache {
  readonly capacityEntries: number;
  readonly bits: number;
  readonly #map = new Map<string, Entry>();
  hits = 0;
  misses = 0;

  constructor(capacityEntries: number, bits: number) {
    invariant(Number.isInteger(capacityEntries) && capacityEntries >= 0, "cache entries ≥ 0");
    invariant(Number.isInteger(bits) && bits >= 1 && bits <= 16, "cache bits in [1, 16]");
    this.capacityEntries = capacityEntries;
    this.bits = bits;
  }

  get size(): number {
    return this.#map.size;
  }

  get hitRate(): number {
    const n = this.hits + this.misses;
    return n === 0 ? 0 : this.hits / n;
  }

  quantise(h: Buf, off: number, d: number): Int16Array {
    let max = 0;
    for (let j = 0; j < d; j++) max = Math.max(max, Math.abs(h[off + j] as number));
    const levels = this.bits === 1 ? 1 : 2 ** (this.bits - 1) - 1;
    const q = new Int16Array(d);
    if (max === 0) return q;
    const s = levels / max;
    for (let j = 0; j < d; j++)
      q[j] =
        this.bits === 1
          ? (h[off + j] as number) >= 0
            ? 1
            : -1
          : Math.round((h[off + j] as number) * s);
    return q;
  }

  static keyOf(q: Int16Array): string {
    let hsh = fnvOffset;
    for (let j = 0; j < q.length; j++) {
      const v = q[j] as number;
      hsh = BigInt.asUintN(64, (hsh ^ BigInt(v & 0xff)) * fnvPrime);
      hsh = BigInt.asUintN(64, (hsh ^ BigInt((v >> 8) & 0xff)) * fnvPrime);
    }
    return hsh.toString(36);
  }

  /** The cached route of a quantised state, refreshed as most recently used; counts the lookup. */
  get(q: Int16Array): CachedRoute | undefined {
    if (this.capacityEntries === 0) {
      this.misses++;
      return undefined;
    }
    const key = SuperpositionCache.keyOf(q);
    const e = this.#map.get(key);
    if (e === undefined || !sameVector(e.q, q)) {
      this.misses++;
      return undefined;
    }
    this.#map.delete(key);
    this.#map.set(key, e);
    this.hits++;
    return e.route;
  }

  set(q: Int16Array, route: CachedRoute): void {
    if (this.capacityEntries === 0) return;
    const key = SuperpositionCache.keyOf(q);
    this.#map.delete(key);
    this.#map.set(key, { q, route });
    while (this.#map.size > this.capacityEntries) {
      const oldest = this.#map.keys().next().value as string;
      this.#map.delete(oldest);
    }
  }

  clear(): void {
    this.#map.clear();
  }

  resetCounters(): void {
    this.hits = 0;
    this.misses = 0;
  }
}

function sameVector(a: Int16Array, b: Int16Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
