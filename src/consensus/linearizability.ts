// Linearizability checker for a history of concurrent client operations (Herlihy & Wing 1990),
// searched the way Knossos and Porcupine do (Wing & Gong's algorithm with Lowe's memoisation of
// (linearized set, model state)): find an order of the operations that respects real time — an
// operation that returned before another was called comes first — and in which a sequential model
// gives every completed operation the output the client saw. Operations that never returned may
// take effect at any point after their call, or not at all.
// References: https://github.com/anishathalye/porcupine, https://github.com/jepsen-io/knossos

export interface HistoryOp<I, O> {
  readonly clientId: string;
  readonly input: I;
  readonly callMs: number;
  /** Undefined while pending (never answered, e.g. the client gave up or the run ended). */
  readonly returnMs?: number;
  readonly output?: O;
}

export interface SequentialModel<S, I, O> {
  init(): S;
  /** Must not mutate `state`. */
  step(state: S, input: I): { state: S; output: O };
  equal(a: O, b: O): boolean;
  /** Equal states give equal strings (for memoisation). */
  key(state: S): string;
}

export type LinearizabilityResult =
  | { readonly ok: true; readonly order: readonly number[] }
  | { readonly ok: false; readonly reason: string }
  | { readonly ok: "unknown"; readonly reason: string };

export const linearizabilityStepsMax = 2_000_000;

export function checkLinearizable<S, I, O>(
  history: readonly HistoryOp<I, O>[],
  model: SequentialModel<S, I, O>,
  stepsMax = linearizabilityStepsMax,
): LinearizabilityResult {
  const n = history.length;
  const ret = history.map((h) => h.returnMs ?? Number.POSITIVE_INFINITY);
  const completed = history.reduce((c, h) => c + (h.returnMs === undefined ? 0 : 1), 0);
  const done = new Uint8Array(n);
  const seen = new Set<string>();
  // Explicit DFS stack: each frame is (state, candidate cursor, op chosen to reach it).
  type Frame = { state: S; cursor: number; via: number; completedDone: number };
  const stack: Frame[] = [{ state: model.init(), cursor: 0, via: -1, completedDone: 0 }];
  let steps = 0;
  while (stack.length > 0) {
    const top = stack[stack.length - 1] as Frame;
    if (top.completedDone === completed) {
      return { ok: true, order: stack.slice(1).map((f) => f.via) };
    }
    // The earliest return among operations not yet linearized bounds which may go next.
    let minRet = Number.POSITIVE_INFINITY;
    for (let i = 0; i < n; i++)
      if (!done[i] && (ret[i] as number) < minRet) minRet = ret[i] as number;
    let advanced = false;
    while (top.cursor < n) {
      const i = top.cursor++;
      const op = history[i] as HistoryOp<I, O>;
      if (done[i] || op.callMs > minRet) continue;
      if (++steps > stepsMax) return { ok: "unknown", reason: `search exceeded ${stepsMax} steps` };
      const next = model.step(top.state, op.input);
      if (op.returnMs !== undefined && !model.equal(next.output, op.output as O)) continue;
      done[i] = 1;
      const key = `${Array.prototype.join.call(done, "")}|${model.key(next.state)}`;
      if (seen.has(key)) {
        done[i] = 0;
        continue;
      }
      seen.add(key);
      stack.push({
        state: next.state,
        cursor: 0,
        via: i,
        completedDone: top.completedDone + (op.returnMs === undefined ? 0 : 1),
      });
      advanced = true;
      break;
    }
    if (!advanced) {
      const popped = stack.pop() as Frame;
      if (popped.via >= 0) done[popped.via] = 0;
    }
  }
  const firstBad = history.findIndex((h) => h.returnMs !== undefined);
  return {
    ok: false,
    reason: `no linearization exists for ${completed} completed operations (first completed op #${firstBad})`,
  };
}
