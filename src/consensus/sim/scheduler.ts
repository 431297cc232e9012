// The simulator's clock and event queue: a binary heap ordered by (time, insertion number), so two
// runs with the same seed execute the same events in the same order. Nothing here reads real time.

export class EventQueue {
  #heap: { at: number; seq: number; run: () => void }[] = [];
  #seq = 0;
  #now = 0;

  get nowMs(): number {
    return this.#now;
  }

  get size(): number {
    return this.#heap.length;
  }

  at(timeMs: number, run: () => void): void {
    const item = { at: Math.max(timeMs, this.#now), seq: this.#seq++, run };
    const h = this.#heap;
    h.push(item);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i] as typeof item, h[p] as typeof item)) break;
      [h[i], h[p]] = [h[p] as typeof item, h[i] as typeof item];
      i = p;
    }
  }

  /** Runs events until the queue is empty or the next one is after `untilMs`; returns events run. */
  runUntil(untilMs: number, stop?: () => boolean): number {
    let n = 0;
    const h = this.#heap;
    while (h.length > 0 && (h[0] as { at: number }).at <= untilMs) {
      const top = h[0] as (typeof h)[number];
      const last = h.pop() as (typeof h)[number];
      if (h.length > 0) {
        h[0] = last;
        let i = 0;
        for (;;) {
          const l = 2 * i + 1;
          const r = l + 1;
          let m = i;
          if (l < h.length && before(h[l] as typeof top, h[m] as typeof top)) m = l;
          if (r < h.length && before(h[r] as typeof top, h[m] as typeof top)) m = r;
          if (m === i) break;
          [h[i], h[m]] = [h[m] as typeof top, h[i] as typeof top];
          i = m;
        }
      }
      this.#now = top.at;
      top.run();
      n += 1;
      if (stop?.()) break;
    }
    if (h.length === 0 || (h[0] as { at: number }).at > untilMs)
      this.#now = Math.max(this.#now, untilMs);
    return n;
  }
}

function before(a: { at: number; seq: number }, b: { at: number; seq: number }): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}
