// Picks the zstd binding for the warm tier: level-9 compression and decompression throughput of
// `zstd-napi` (native, compiled at install) and `@bokuweb/zstd-wasm` (WASM) on float32 weights.
// Run: npx tsx bench/storage-zstd.ts

import { init, compress as wasmCompress, decompress as wasmDecompress } from "@bokuweb/zstd-wasm";
import * as napi from "zstd-napi";
import { Prng } from "../src/common/prng.ts";

const sizeBytes = 16 * 1024 * 1024;
const prng = new Prng(7);
const floats = new Float32Array(sizeBytes / 4);
for (let i = 0; i < floats.length; i++) floats[i] = prng.normal() * 0.02;
const data = new Uint8Array(floats.buffer);

function time(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

await init();
const mb = sizeBytes / 1e6;
let napiOut: Uint8Array = new Uint8Array(0);
const napiC = time(() => {
  napiOut = napi.compress(data, { compressionLevel: 9 });
});
const napiD = time(() => napi.decompress(napiOut));
let wasmOut: Uint8Array = new Uint8Array(0);
const wasmC = time(() => {
  wasmOut = wasmCompress(data, 9);
});
const wasmD = time(() => wasmDecompress(wasmOut));
console.log(`data: ${mb.toFixed(1)} MB of float32 N(0, 0.02)`);
console.log(
  `zstd-napi  level 9: compress ${(mb / napiC).toFixed(1)} MB/s, decompress ${(mb / napiD).toFixed(1)} MB/s, ratio ${(napiOut.length / sizeBytes).toFixed(3)}`,
);
console.log(
  `zstd-wasm  level 9: compress ${(mb / wasmC).toFixed(1)} MB/s, decompress ${(mb / wasmD).toFixed(1)} MB/s, ratio ${(wasmOut.length / sizeBytes).toFixed(3)}`,
);
console.log(`napi / wasm compress throughput: ${(wasmC / napiC).toFixed(2)}x`);
