// Peers for the storage benchmarks, run on the same data in the same process: restic (Debian
// package; content-defined chunking, dedup, its own compression) backing up a folder into a local
// repository, and plain zstd level 9 per file. Not a benchmark itself: imported by the others.

import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import * as zstd from "zstd-napi";

export function resticVersion(): string | undefined {
  const r = spawnSync("restic", ["version"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

const env = { ...process.env, RESTIC_PASSWORD: "bench-only-password", RESTIC_CACHE_DIR: "" };

export function resticInit(repo: string): void {
  const r = spawnSync("restic", ["init", "--repo", repo], { encoding: "utf8", env });
  if (r.status !== 0) throw new Error(`restic init failed: ${r.stderr}`);
}

/** Backs `dir` up into `repo`; returns wall seconds. */
export function resticBackup(repo: string, dir: string): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync("restic", ["backup", "--repo", repo, "--no-cache", "--quiet", "."], {
    cwd: dir,
    encoding: "utf8",
    env,
  });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`restic backup failed: ${r.stderr}`);
  return seconds;
}

export function duBytes(path: string): number {
  const st = statSync(path);
  if (!st.isDirectory()) return st.size;
  return readdirSync(path).reduce((s, n) => s + duBytes(join(path, n)), 0);
}

export function zstdPerFileBytes(
  dir: string,
  transform: (b: Uint8Array) => Uint8Array = (b) => b,
): number {
  let total = 0;
  for (const name of readdirSync(dir)) {
    const bytes = new Uint8Array(readFileSync(join(dir, name)));
    total += zstd.compress(transform(bytes), { compressionLevel: 9 }).length;
  }
  return total;
}
