// Invariant assertions for production code (TigerBeetle style): a broken invariant is a bug, so it
// stops the operation with an InvariantError that is never caught and carried on. Expected
// failures (a peer is down, a frame is malformed) are typed errors of their own module instead.

export class InvariantError extends Error {
  constructor(message: string) {
    super(`invariant violated: ${message}`);
    this.name = "InvariantError";
  }
}

export function invariant(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new InvariantError(typeof message === "string" ? message : message());
}
