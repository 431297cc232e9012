// Typed errors of the swarm data plane. Expected failures — a malformed frame, a node that went
// away, a missed deadline — are values with a code that callers branch on (the dispatcher fails
// over on them); broken invariants are `InvariantError` from common/assert.ts instead.

/** Error codes carried in error frames (u16 in scalars[0]). */
export const WireErrorCode = {
  malformedFrame: 1,
  frameTooLarge: 2,
  unsupportedVersion: 3,
  unknownOp: 4,
  unknownExpert: 5,
  badShape: 6,
  deadlineExceeded: 7,
  overloaded: 8,
  hostFailure: 9,
  shuttingDown: 10,
} as const;
export type WireErrorCode = (typeof WireErrorCode)[keyof typeof WireErrorCode];

const codeNames = new Map<number, string>(Object.entries(WireErrorCode).map(([k, v]) => [v, k]));

export function wireErrorName(code: number): string {
  return codeNames.get(code) ?? `code${code}`;
}

/** A frame that cannot be decoded. `requestId` is 0 when the header was unreadable. */
export class FrameDecodeError extends Error {
  constructor(
    readonly code: WireErrorCode,
    message: string,
    readonly requestId: number,
  ) {
    super(message);
    this.name = "FrameDecodeError";
  }
}

/** A node answered a request with an error frame. */
export class RemoteCallError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly nodeId: string,
  ) {
    super(`node ${nodeId}: ${wireErrorName(code)}: ${message}`);
    this.name = "RemoteCallError";
  }
}

/** The connection to a node failed or closed with the request in flight. */
export class NodeUnavailableError extends Error {
  constructor(
    readonly nodeId: string,
    reason: string,
  ) {
    super(`node ${nodeId} unavailable: ${reason}`);
    this.name = "NodeUnavailableError";
  }
}

/** No answer within the attempt's deadline. */
export class DeadlineError extends Error {
  constructor(
    readonly nodeId: string,
    readonly deadlineMs: number,
  ) {
    super(`node ${nodeId} did not answer within ${deadlineMs.toFixed(0)} ms`);
    this.name = "DeadlineError";
  }
}

/** Every replica of an expert failed or none is placed. */
export class NoReplicaError extends Error {
  constructor(
    readonly expert: string,
    readonly attempts: readonly string[],
  ) {
    super(
      `expert ${expert}: no replica answered (${attempts.length} attempts: ${attempts.join("; ") || "none placed"}); check that its nodes are running and in the placement`,
    );
    this.name = "NoReplicaError";
  }
}
