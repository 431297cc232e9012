// The last N samples of a measurement, for percentiles over a recent window. A fixed ring: a
// record costs O(1) (an array `shift()` per record moved the whole window, which the consensus
// replica did for every committed request, five windows at a time).

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

  /** The samples held, oldest first. */
  values(): number[] {
    const start = this.#count < this.capacity ? 0 : this.#next;
    return Array.from(
      { length: this.#count },
      (_, i) => this.#buf[(start + i) % this.capacity] as number,
    );
  }
}
