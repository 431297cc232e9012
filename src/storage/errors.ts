// Typed errors of the content-addressed store: expected failures (a corrupt or missing block, a bad
// CAR file, a wrong key, a bad name) each name what was wrong and where, so that `verify`,
// `import-car` and `restore` can report them and refuse; they never crash the process.

export type StorageErrorCode =
  | "corrupt-block"
  | "missing-block"
  | "bad-car"
  | "wrong-key"
  | "not-found"
  | "bad-input"
  | "exists"
  | "background"
  | "busy";

export class StorageError extends Error {
  readonly code: StorageErrorCode;
  /** The CID concerned, when there is one. */
  readonly cid: string | undefined;
  /** The file concerned, when there is one. */
  readonly file: string | undefined;

  constructor(
    code: StorageErrorCode,
    message: string,
    context: { cid?: string; file?: string } = {},
  ) {
    super(message);
    this.name = "StorageError";
    this.code = code;
    this.cid = context.cid;
    this.file = context.file;
  }
}

export function corruptBlock(cid: string, file: string, why: string): StorageError {
  return new StorageError("corrupt-block", `block ${cid} in ${file} is corrupt: ${why}`, {
    cid,
    file,
  });
}

export function missingBlock(cid: string, file: string): StorageError {
  return new StorageError("missing-block", `block ${cid} is missing (expected at ${file})`, {
    cid,
    file,
  });
}
