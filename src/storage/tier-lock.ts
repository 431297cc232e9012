// Cross-process exclusion of GC and writes on one tier. A GC that sweeps while another process
// saves into the same tier could remove a block the new checkpoint deduplicates against (its
// manifest is not written yet, so nothing marks the block). Within one process TierCopier's lock
// word excludes them; across processes (`moe-swarm checkpoint gc` while `train` writes) this file
// protocol does, in `<tier>/locks/`:
// - a writer (every save, copy and import into the tier) first creates its own lease file
//   `writer-<pid>-<nonce>.json`, then looks at `gc.lock`: while a live GC holds it, it waits
//   (bounded; then a typed "busy" error that names the GC's process), and removes its lease when
//   the write is done (or fails);
// - a GC first takes `gc.lock` (exclusive create; a stale one is taken over), then looks for
//   live writer leases: while any exists it expires manifests but skips the sweep, and says so.
// Each side publishes itself before looking at the other (Dekker's order), so with a local file
// system at least one of them sees the other: never both proceed.
// Liveness is not `kill -0 pid`, which a reused pid fools: a lock records its process's identity,
// the boot id and the process start time (field 22 of /proc/<pid>/stat, proc(5)), and a holder is
// live only while the process with that pid has that identity. Without /proc (not Linux) it falls
// back to `kill -0`. A crashed holder's files are stale and ignored (and removed by the next GC).

import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "./atomic.ts";
import { StorageError } from "./errors.ts";

/** How long a writer waits for a running GC of its tier before giving up. */
export const gcWaitSecondsMax = 600;
/** Poll period of that wait. */
const gcPollMs = 50;
/** A lock file larger than this is not a lock. */
const lockBytesMax = 1024;

const holderSchema = z.strictObject({
  pid: z.number().int().positive(),
  /** Boot id and start time of the process, or undefined where /proc is not available. */
  identity: z.string().max(200).optional(),
  sinceMs: z.number().finite(),
});
export type LockHolder = z.infer<typeof holderSchema>;

let nonceCounter = 0;

function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/**
 * `<boot id>/<start time in clock ticks>` of process `pid`, or undefined when it does not exist or
 * /proc cannot tell. The start time follows the command field, which may hold spaces and ')'.
 */
export function processIdentity(pid: number): string | undefined {
  const boot = readProc("/proc/sys/kernel/random/boot_id")?.trim();
  const stat = readProc(`/proc/${pid}/stat`);
  if (boot === undefined || stat === undefined) return undefined;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const start = fields[19]; // field 22 overall; fields[0] is field 3 (state)
  return start === undefined || !/^\d+$/.test(start) ? undefined : `${boot}/${start}`;
}

/** Whether `pid` exists (EPERM: it exists but is not ours). */
function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** This process as a lock holder. */
export function selfHolder(): LockHolder {
  const identity = processIdentity(process.pid);
  return { pid: process.pid, ...(identity !== undefined ? { identity } : {}), sinceMs: Date.now() };
}

/**
 * Whether the process that wrote `h` still runs: the same pid with the same boot id and start
 * time (a reused pid has another start time). Holders written without an identity, or read where
 * /proc is missing, fall back to the pid alone.
 */
export function holderAlive(h: Pick<LockHolder, "pid" | "identity">): boolean {
  if (h.identity !== undefined) {
    const now = processIdentity(h.pid);
    if (now !== undefined || existsSync("/proc/self/stat")) return now === h.identity;
  }
  return pidExists(h.pid);
}

function readHolder(path: string): LockHolder | undefined {
  try {
    const bytes = readFileSync(path);
    if (bytes.length > lockBytesMax) return undefined;
    return holderSchema.parse(JSON.parse(bytes.toString("utf8")));
  } catch {
    return undefined; // gone, torn or foreign: not a live holder
  }
}

function encodeHolder(h: LockHolder): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(h)}\n`);
}

export function locksDir(tierDir: string): string {
  return join(tierDir, "locks");
}

function gcLockPath(tierDir: string): string {
  return join(locksDir(tierDir), "gc.lock");
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));
function sleepMs(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}

/** The live GC holding the tier's gc.lock, if any. */
export function liveGc(tierDir: string): LockHolder | undefined {
  const h = readHolder(gcLockPath(tierDir));
  return h !== undefined && holderAlive(h) ? h : undefined;
}

/** Live writers of the tier (their leases), and the paths of stale leases. */
export function writerLeases(tierDir: string): { live: LockHolder[]; stale: string[] } {
  const dir = locksDir(tierDir);
  const live: LockHolder[] = [];
  const stale: string[] = [];
  if (!existsSync(dir)) return { live, stale };
  for (const name of readdirSync(dir)) {
    if (!name.startsWith("writer-") || !name.endsWith(".json")) continue;
    const h = readHolder(join(dir, name));
    if (h !== undefined && holderAlive(h)) live.push(h);
    else if (h !== undefined) stale.push(join(dir, name));
  }
  return { live, stale };
}

/**
 * Takes a writer's lease on a tier, waiting while a live GC of it runs (at most
 * `waitSecondsMax`, then StorageError "busy"). Call `release` when the write is done.
 */
export function acquireWriterLease(
  tierDir: string,
  tierName: string,
  waitSecondsMax = gcWaitSecondsMax,
): { release: () => void } {
  const path = join(
    locksDir(tierDir),
    `writer-${process.pid}-${Date.now()}-${nonceCounter++}.json`,
  );
  writeFileAtomic(path, encodeHolder(selfHolder()));
  const release = () => rmSync(path, { force: true });
  const deadline = Date.now() + waitSecondsMax * 1000;
  for (;;) {
    const gc = liveGc(tierDir);
    if (gc === undefined || gc.pid === process.pid) return { release };
    if (Date.now() >= deadline) {
      release();
      throw new StorageError(
        "busy",
        `a gc of the ${tierName} tier is running in process ${gc.pid}; retry when it is done`,
        { file: gcLockPath(tierDir) },
      );
    }
    sleepMs(gcPollMs);
  }
}

/**
 * Takes a tier's gc.lock, or returns the live process that holds it. A stale lock (its process
 * is gone, or its pid now belongs to another process) is taken over.
 */
export function acquireGcLock(
  tierDir: string,
): { release: () => void; heldBy?: undefined } | { heldBy: LockHolder } {
  const path = gcLockPath(tierDir);
  mkdirSync(locksDir(tierDir), { recursive: true });
  const me = selfHolder();
  const bytes = encodeHolder(me);
  const release = () => {
    const h = readHolder(path);
    if (h !== undefined && h.pid === me.pid && h.sinceMs === me.sinceMs)
      rmSync(path, { force: true });
  };
  try {
    const fd = openSync(path, "wx");
    try {
      writeSync(fd, bytes);
    } finally {
      closeSync(fd);
    }
    return { release };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const holder = readHolder(path);
  if (holder !== undefined && holderAlive(holder)) return { heldBy: holder };
  writeFileAtomic(path, bytes); // a stale (or torn) lock: take it over, then check we hold it
  const now = readHolder(path);
  if (now === undefined || now.pid !== me.pid || now.sinceMs !== me.sinceMs)
    return { heldBy: now ?? holder ?? me };
  return { release };
}
