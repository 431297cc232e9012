// Crash injection for the write and GC paths. Production code calls `crash(point)` at every step
// where a real process could die; the default hook does nothing. Tests pass a hook that throws
// `SimulatedCrash` at a chosen point, then reopen the store as a restarted process would and check
// that no block of a live checkpoint was lost.

export type CrashHook = (point: string) => void;

export const noCrash: CrashHook = () => {};

export class SimulatedCrash extends Error {
  readonly point: string;
  constructor(point: string) {
    super(`simulated crash at ${point}`);
    this.name = "SimulatedCrash";
    this.point = point;
  }
}
