// Peers for the storage benchmarks, run on the same data in the same process: restic (Debian
// package; content-defined chunking, dedup, its own compression) backing up a folder into a local
// repository, and plain zstd level 9 per file. Not a benchmark itself: imported by the others.

import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as zstd from "zstd-napi";
import type { Shard } from "../src/storage/checkpoint-store.ts";
import { toBytePlanes, xorBytes } from "../src/storage/float-transform.ts";

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

/** Bytes of the files under `paths`, each inode counted once (hard links shared by tiers). */
export function uniqueDiskBytes(paths: readonly string[]): number {
  const seen = new Map<string, number>();
  const walk = (path: string) => {
    const st = statSync(path);
    if (st.isDirectory()) for (const n of readdirSync(path)) walk(join(path, n));
    else seen.set(`${st.dev}:${st.ino}`, st.size);
  };
  for (const p of paths) walk(p);
  return [...seen.values()].reduce((a, b) => a + b, 0);
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

export interface PeerFigures {
  readonly raw: number;
  readonly restic: number | undefined;
  readonly zstd: number;
  readonly planes: number;
  readonly xorOracle: number;
}

/**
 * Bytes the peers store for a series of checkpoints: restic (one snapshot per checkpoint into
 * one repository), zstd-9 per file, zstd-9 after byte-plane grouping, and whole-file XOR against
 * the previous checkpoint + planes + zstd-9 (an oracle that knows which files pair up).
 */
export function seriesPeers(series: readonly Shard[][], workDir: string): PeerFigures {
  const raw = series.flat().reduce((s, x) => s + x.bytes.length, 0);
  const dirs = series.map((shards, c) => {
    const dir = join(workDir, `ckpt-${c}`);
    mkdirSync(dir, { recursive: true });
    for (const s of shards) writeFileSync(join(dir, s.name), s.bytes);
    return dir;
  });
  let resticBytes: number | undefined;
  if (resticVersion() !== undefined) {
    const repo = join(workDir, "restic");
    resticInit(repo);
    for (const dir of dirs) resticBackup(repo, dir);
    resticBytes = duBytes(repo);
  }
  const zstdPlain = dirs.reduce((s, dir) => s + zstdPerFileBytes(dir), 0);
  const grouped = (b: Uint8Array) => (b.length % 4 === 0 ? toBytePlanes(b, 0) : b);
  const zstdPlanes = dirs.reduce((s, dir) => s + zstdPerFileBytes(dir, grouped), 0);
  let xorOracle = 0;
  series.forEach((shards, c) => {
    for (const s of shards) {
      const prev = c > 0 ? series[c - 1]?.find((p) => p.name === s.name) : undefined;
      const body =
        prev !== undefined && s.bytes.length % 4 === 0
          ? toBytePlanes(xorBytes(s.bytes, prev.bytes), 0)
          : s.bytes;
      xorOracle += zstd.compress(body, { compressionLevel: 9 }).length;
    }
  });
  return { raw, restic: resticBytes, zstd: zstdPlain, planes: zstdPlanes, xorOracle };
}

export function printPeers(label: string, f: PeerFigures): void {
  const fr = (b: number) => (b / f.raw).toFixed(3);
  console.log(
    `${label}: raw ${(f.raw / 1e6).toFixed(2)} MB; bytes stored as a fraction of raw (lossless):`,
  );
  const restic = resticVersion();
  if (f.restic !== undefined)
    console.log(
      `  ${restic?.split(" compiled")[0]} (one snapshot per checkpoint): ${fr(f.restic)}×`,
    );
  else console.log("  restic not installed: no restic figure");
  console.log(`  zstd-9 per file: ${fr(f.zstd)}×`);
  console.log(`  zstd-9 after byte-plane grouping: ${fr(f.planes)}×`);
  console.log(`  whole-file XOR vs previous + planes + zstd-9 (oracle): ${fr(f.xorOracle)}×`);
}
