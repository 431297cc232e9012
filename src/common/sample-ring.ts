// The last N samples of a measurement, for percentiles over a recent window (the dispatcher's
// per-node latencies, the consensus replica's commit latencies). A fixed ring: a record costs O(1),
// where trimming an array with `shift()` moves the whole window every time.

import { invariant } from "./assert.ts";

export class SampleRing {
  readonly #buf: Float64Array;
  #count = 0;
  #next = 0;

  constructor(readonly capacity: number) {
    invariant(Number.isInteger(capacity) && capacity > 0, `sample ring capacity ${capacity}`);
    this.#buf = new Float64Array(capacity);
  }

  /** Adds a sample, dropping the oldest once the ring is full. */
  push(x: number): void {
    this.#buf[this.#next] = x;
    this.#next = (this.#next + 1) % this.capacity;
    this.#count = Math.min(this.#count + 1, this.capacity);
  }

  get count(): number {
    return this.#count;
  }

  /** The samples held, ascending (a fresh copy). */
  sorted(): Float64Array {
    return this.#buf.slice(0, this.#count).sort();
  }
}
