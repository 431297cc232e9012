// Figure: every float encoding we tried for successive training checkpoints, measured on the same
// series in the same run, per tensor kind (weights w, AdamW first moment m, second moment v), as
// bytes / raw over checkpoints 2..N (checkpoint 1 has no predecessor and is the same for all):
//   predictors (integer residual of the monotone integer order of the float bits, zigzag, as fpzip):
//     none · xor (bits XOR the previous checkpoint) · d1 (minus the previous checkpoint) ·
//     lin (minus the linear extrapolation 2·p1 − p2 of the two previous checkpoints; on v, which
//     is positive, the integer order is a log scale, so this is the log-domain / ratio predictor)
//   layouts and coders: byte planes + zstd-9 per plane (raw when smaller) · bit planes (Blosc /
//     HDF5 bitshuffle) + zstd-9 · fpzip-style leading-bit class + zstd-9 with the low bits raw ·
//     byte planes with the best of raw / zstd-9 / range coder / range coder with the previous
//     checkpoint's same byte as context (what the store does, src/storage/block-record.ts)
//   bounds: order-0 entropy of each byte plane, and of each plane given the previous checkpoint's
//     byte at the same position (256 contexts) — what a per-byte model can reach at best;
//   the float coder (src/storage/float-coder.ts, what the warm tier uses where it is smaller):
//     sign + exponent given the previous checkpoint's, mantissa difference by magnitude class,
//     noise bits raw — per tensor the smaller of with and without the previous checkpoint, with
//     its encode and decode throughput (CPU time of this process).
// Run alone on a dumped series: npx tsx bench/checkpoint-encodings.ts <dir with c0/ c1/ ...>
// (checkpoint-model-series.ts calls it on the series it trains).

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import * as zstd from "zstd-napi";
import type { Shard } from "../src/storage/checkpoint-store.ts";
import { decodeFloats, encodeFloats } from "../src/storage/float-coder.ts";
import { rangeEncodeBytes } from "../src/storage/range-coder.ts";

const zstd9 = (b: Uint8Array) => zstd.compress(b, { compressionLevel: 9 }).length;
/** The monotone integer order of float32 bits (negative floats reversed below positive ones). */
const order = (u: number) => (u & 0x8000_0000 ? ~u : u | 0x8000_0000) >>> 0;
const zigzag = (d: number) => ((d << 1) ^ (d >> 31)) >>> 0;

interface Tensor {
  readonly kind: "w" | "m" | "v";
  readonly words: Uint32Array;
}

/** The float32 tensors of a safetensors file, as 32-bit words. */
function tensorsOf(shard: Shard): Tensor[] {
  const b = shard.bytes;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const headerBytes = Number(dv.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + headerBytes))) as Record<
    string,
    { dtype?: string; data_offsets?: [number, number] }
  >;
  const out: Tensor[] = [];
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__" || t.dtype !== "F32" || t.data_offsets === undefined) continue;
    const [start, end] = t.data_offsets;
    const words = new Uint32Array((end - start) / 4);
    const at = 8 + headerBytes + start;
    for (let i = 0; i < words.length; i++) words[i] = dv.getUint32(at + 4 * i, true);
    const kind = !shard.name.startsWith("optimizer") ? "w" : name.endsWith(".m") ? "m" : "v";
    out.push({ kind, words });
  }
  return out;
}

type Predictor = "none" | "xor" | "d1" | "lin";

function residual(cur: Uint32Array, p1: Uint32Array, p2: Uint32Array, how: Predictor) {
  const r = new Uint32Array(cur.length);
  for (let i = 0; i < cur.length; i++) {
    const x = cur[i] as number;
    if (how === "none") r[i] = x;
    else if (how === "xor") r[i] = (x ^ (p1[i] as number)) >>> 0;
    else {
      const a = order(p1[i] as number);
      const pred =
        how === "d1" ? a : Math.min(0xffff_ffff, Math.max(0, 2 * a - order(p2[i] as number)));
      r[i] = zigzag((order(x) - pred) | 0);
    }
  }
  return r;
}

function plane(words: Uint32Array, k: number): Uint8Array {
  const out = new Uint8Array(words.length);
  for (let i = 0; i < words.length; i++) out[i] = ((words[i] as number) >>> (8 * k)) & 0xff;
  return out;
}

function bytePlanesZstd(r: Uint32Array): number {
  let s = 0;
  for (let k = 0; k < 4; k++) s += Math.min(r.length, zstd9(plane(r, k)));
  return s;
}

function bitShuffleZstd(r: Uint32Array): number {
  const rowBytes = Math.ceil(r.length / 8);
  const out = new Uint8Array(rowBytes * 32);
  for (let b = 0; b < 32; b++) {
    const row = b * rowBytes;
    for (let i = 0; i < r.length; i++)
      if (((r[i] as number) >>> b) & 1) {
        const at = row + (i >> 3);
        out[at] = (out[at] as number) | (1 << (i & 7));
      }
  }
  return zstd9(out);
}

function leadingClassZstd(r: Uint32Array): number {
  const classes = new Uint8Array(r.length);
  let rawBits = 0;
  for (let i = 0; i < r.length; i++) {
    const v = r[i] as number;
    const k = v === 0 ? 0 : 32 - Math.clz32(v);
    classes[i] = k;
    rawBits += k > 1 ? k - 1 : 0;
  }
  return zstd9(classes) + Math.ceil(rawBits / 8);
}

/** Per plane the best of raw, zstd-9, range coder, range coder with the base plane as context. */
function bytePlanesBest(r: Uint32Array, base: Uint32Array | undefined): number {
  let s = 0;
  for (let k = 0; k < 4; k++) {
    const p = plane(r, k);
    let best = Math.min(p.length, zstd9(p));
    if (k >= 2) {
      best = Math.min(best, rangeEncodeBytes(p).length);
      if (base !== undefined) best = Math.min(best, rangeEncodeBytes(p, plane(base, k)).length);
    }
    s += best;
  }
  return s;
}

/**
 * Symbol counts of each byte plane, per context (the base plane's byte, or one context), pooled
 * over every tensor of a kind: per-tensor tables would be too sparse (65,536 cells against tensors
 * of a few thousand floats) and report an entropy far below what any coder can reach.
 */
function countPlanes(tables: Float64Array[], r: Uint32Array, base: Uint32Array | undefined): void {
  for (let k = 0; k < 4; k++) {
    const counts = tables[k] as Float64Array;
    for (let i = 0; i < r.length; i++) {
      const ctx = base === undefined ? 0 : ((base[i] as number) >>> (8 * k)) & 0xff;
      const at = ctx * 256 + (((r[i] as number) >>> (8 * k)) & 0xff);
      counts[at] = (counts[at] as number) + 1;
    }
  }
}

/** Bits per byte of each plane at its empirical (conditional) entropy, planes 0 (low) to 3. */
function entropyBitsPerPlane(tables: Float64Array[]): number[] {
  return tables.map((counts) => {
    let bits = 0;
    let total = 0;
    for (let c = 0; c < 256; c++) {
      let n = 0;
      for (let s = 0; s < 256; s++) n += counts[c * 256 + s] as number;
      total += n;
      for (let s = 0; s < 256; s++) {
        const x = counts[c * 256 + s] as number;
        if (x > 0) bits -= x * Math.log2(x / n);
      }
    }
    return total === 0 ? 0 : bits / total;
  });
}

/** Bytes at the empirical (conditional) entropy of pooled plane counts. */
function entropyBytes(tables: Float64Array[]): number {
  let bits = 0;
  for (const counts of tables) {
    for (let c = 0; c < 256; c++) {
      let n = 0;
      for (let s = 0; s < 256; s++) n += counts[c * 256 + s] as number;
      for (let s = 0; s < 256; s++) {
        const x = counts[c * 256 + s] as number;
        if (x > 0) bits -= x * Math.log2(x / n);
      }
    }
  }
  return bits / 8;
}

/** Prints every variant, per tensor kind, over checkpoints 2..N of `series`. */
export function printEncodingVariants(series: readonly Shard[][]): void {
  const totals = new Map<string, number>();
  const add = (key: string, v: number) => totals.set(key, (totals.get(key) ?? 0) + v);
  const pooled = new Map<string, Float64Array[]>();
  const tables = (key: string) => {
    let t = pooled.get(key);
    if (t === undefined) {
      t = [0, 1, 2, 3].map(() => new Float64Array(256 * 256));
      pooled.set(key, t);
      add(key, 0); // keeps the printing order
    }
    return t;
  };
  const cpuMs = () => process.cpuUsage().user / 1000;
  let coderBytes = 0;
  let encodeMs = 0;
  let decodeMs = 0;
  for (let c = 1; c < series.length; c++) {
    for (const shard of series[c] ?? []) {
      if (!shard.name.endsWith(".safetensors")) continue;
      const prev = (n: number) => series[c - n]?.find((s) => s.name === shard.name);
      const cur = tensorsOf(shard);
      const p1 = tensorsOf(prev(1) as Shard);
      const p2 = c >= 2 ? tensorsOf(prev(2) as Shard) : p1;
      cur.forEach((t, i) => {
        const a = (p1[i] as Tensor).words;
        const b = (p2[i] as Tensor).words;
        add(`${t.kind} raw`, t.words.length * 4);
        const t0 = cpuMs();
        const withBase = encodeFloats(t.words, a);
        const alone = encodeFloats(t.words, undefined);
        const t1 = cpuMs();
        const back = decodeFloats(withBase, t.words.length, a);
        decodeMs += cpuMs() - t1;
        encodeMs += t1 - t0;
        coderBytes += t.words.length * 4;
        if (!back.every((w, j) => w === t.words[j])) throw new Error("float coder round trip");
        add(
          `${t.kind} float coder | previous checkpoint (min with alone)`,
          Math.min(withBase.length, alone.length),
        );
        for (const how of ["none", "xor", "d1", "lin"] as const) {
          const r = residual(t.words, a, b, how);
          add(`${t.kind} ${how.padEnd(4)} byte planes + zstd-9`, bytePlanesZstd(r));
          add(`${t.kind} ${how.padEnd(4)} bit planes (bitshuffle) + zstd-9`, bitShuffleZstd(r));
          add(
            `${t.kind} ${how.padEnd(4)} leading-bit class + zstd-9, low bits raw`,
            leadingClassZstd(r),
          );
          add(`${t.kind} ${how.padEnd(4)} byte planes, best coder per plane`, bytePlanesBest(r, a));
          countPlanes(
            tables(`${t.kind} ${how.padEnd(4)} bound: plane entropy, order 0`),
            r,
            undefined,
          );
          countPlanes(tables(`${t.kind} ${how.padEnd(4)} bound: plane entropy | base byte`), r, a);
        }
      });
    }
  }
  for (const [key, t] of pooled) totals.set(key, entropyBytes(t));
  console.log(
    `  float coder: encode ${(coderBytes / 1e3 / encodeMs).toFixed(1)} MB/s (both ways, as a record tries), ` +
      `decode ${(coderBytes / 1e3 / decodeMs).toFixed(1)} MB/s (CPU time, one thread)`,
  );
  for (const kind of ["w", "m", "v"]) {
    const raw = totals.get(`${kind} raw`);
    if (raw === undefined) continue;
    console.log(`  ${kind} (${(raw / 1e6).toFixed(1)} MB over checkpoints 2..${series.length}):`);
    for (const [key, v] of [...totals].filter(
      ([k]) => k.startsWith(`${kind} `) && k !== `${kind} raw`,
    ))
      console.log(
        `    ${key.slice(2).padEnd(56)} ${(v / raw).toFixed(3)}×` +
          (pooled.has(key)
            ? `  (bits/byte of planes 0–3: ${entropyBitsPerPlane(pooled.get(key) ?? [])
                .map((x) => x.toFixed(2))
                .join(", ")})`
            : ""),
      );
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2];
  if (dir === undefined) throw new Error("usage: checkpoint-encodings.ts <dir with c0/ c1/ ...>");
  const series = readdirSync(dir)
    .sort()
    .map((c) =>
      readdirSync(join(dir, c)).map((name) => ({
        name,
        bytes: new Uint8Array(readFileSync(join(dir, c, name))),
      })),
    );
  printEncodingVariants(series);
}
