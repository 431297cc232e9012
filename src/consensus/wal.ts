// The file-backed write-ahead log of a coordinator (CometBFT keeps one per consensus node for the
// same reason): `append` writes checksummed records and fsyncs before returning, so the replica
// sends a vote only after its safety state is on disk. Snapshots are written to a temporary file,
// fsynced and renamed over the old one (atomic on POSIX), then the log is replaced by the records
// after the snapshot the same way: truncation never loses a record the snapshot does not cover.
// Recovery stops at the first torn or corrupt record (a crash in mid-write) and cuts it off.

import { createHash } from "node:crypto";
import {
  closeSync,
  existsSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { decodeJsonUnchecked, encodeJson } from "./codec.ts";
import type { Recovered, ReplicaStorage, Snapshot, WalRecord } from "./storage.ts";

const recordHeaderBytes = 4 + 8;
/** A record larger than this is corruption, not data. */
export const walRecordBytesMax = 64 * 1024 * 1024;

export class WalError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WalError";
  }
}

function checksum(payload: Uint8Array): Buffer {
  return createHash("sha256").update(payload).digest().subarray(0, 8);
}

function frame(record: WalRecord): Buffer {
  const payload = encodeJson(record);
  const out = Buffer.alloc(recordHeaderBytes + payload.length);
  out.writeUInt32BE(payload.length, 0);
  checksum(payload).copy(out, 4);
  out.set(payload, recordHeaderBytes);
  return out;
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export class FileWal implements ReplicaStorage {
  readonly #dir: string;
  readonly #walPath: string;
  readonly #snapPath: string;
  #fd: number;
  /** Number of fsyncs, for the status API and benchmarks. */
  fsyncs = 0;
  /** Wall ms spent in the appends' write + fsync (the part a vote waits for), for the same. */
  appendMsTotal = 0;

  constructor(dir: string) {
    mkdirSync(dir, { recursive: true });
    this.#dir = dir;
    this.#walPath = join(dir, "wal.log");
    this.#snapPath = join(dir, "snapshot.json");
    this.#fd = openSync(this.#walPath, "a+");
  }

  append(records: readonly WalRecord[]): void {
    if (records.length === 0) return;
    const buf = Buffer.concat(records.map(frame));
    const t0 = performance.now();
    let off = 0;
    while (off < buf.length) off += writeSync(this.#fd, buf, off, buf.length - off);
    fsyncSync(this.#fd);
    this.appendMsTotal += performance.now() - t0;
    this.fsyncs += 1;
  }

  saveSnapshot(snapshot: Snapshot, keep: readonly WalRecord[]): void {
    const tmpSnap = `${this.#snapPath}.tmp`;
    const fd = openSync(tmpSnap, "w");
    try {
      const bytes = encodeJson(snapshot);
      let off = 0;
      while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmpSnap, this.#snapPath);
    const tmpWal = `${this.#walPath}.tmp`;
    const wfd = openSync(tmpWal, "w");
    try {
      const buf = Buffer.concat(keep.map(frame));
      let off = 0;
      while (off < buf.length) off += writeSync(wfd, buf, off, buf.length - off);
      fsyncSync(wfd);
    } finally {
      closeSync(wfd);
    }
    renameSync(tmpWal, this.#walPath);
    fsyncDir(this.#dir);
    closeSync(this.#fd);
    this.#fd = openSync(this.#walPath, "a+");
    this.fsyncs += 3;
  }

  load(): Recovered {
    let snapshot: Snapshot | undefined;
    if (existsSync(this.#snapPath)) {
      try {
        snapshot = decodeJsonUnchecked(readFileSync(this.#snapPath)) as Snapshot;
      } catch (err) {
        throw new WalError(
          `snapshot ${this.#snapPath} is unreadable (${(err as Error).message}); restore it from a peer or remove the data directory`,
        );
      }
    }
    const buf = readFileSync(this.#walPath);
    const records: WalRecord[] = [];
    let off = 0;
    while (off + recordHeaderBytes <= buf.length) {
      const len = buf.readUInt32BE(off);
      if (len > walRecordBytesMax || off + recordHeaderBytes + len > buf.length) break;
      const payload = buf.subarray(off + recordHeaderBytes, off + recordHeaderBytes + len);
      if (!checksum(payload).equals(buf.subarray(off + 4, off + recordHeaderBytes))) break;
      try {
        records.push(decodeJsonUnchecked(payload) as WalRecord);
      } catch {
        break;
      }
      off += recordHeaderBytes + len;
    }
    if (off < buf.length) {
      // A torn tail from a crash mid-append: nothing after it was ever acknowledged.
      ftruncateSync(this.#fd, off);
      fsyncSync(this.#fd);
    }
    return snapshot ? { snapshot, records } : { records };
  }

  close(): void {
    closeSync(this.#fd);
  }
}
