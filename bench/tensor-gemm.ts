// The plain-TypeScript GEMM (src/tensor/gemm.ts) at the trunk's shapes and at the expert FFN's
// benchmark shape, in GFLOP/s, with onnxruntime's MatMul (MLAS) on the same shapes for the ratio,
// including onnxruntime's per-call overhead (InferenceSession.run is async). Usage:
//   npx tsx bench/tensor-gemm.ts [threads=1]

import ort from "onnxruntime-node";
import { gemm } from "../src/tensor/gemm.ts";
import { encodeOnnxModel, onnxFloat } from "../src/tensor/onnx-proto.ts";

const threads = Number(process.argv[2] ?? 1);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

async function time(fn: () => unknown | Promise<unknown>, minMs = 300): Promise<number> {
  await fn();
  const samples: number[] = [];
  const start = performance.now();
  while (performance.now() - start < minMs || samples.length < 5) {
    const t0 = performance.now();
    await fn();
    samples.push(performance.now() - t0);
  }
  return median(samples);
}

const matmulGraph = encodeOnnxModel({
  name: "matmul",
  opset: 20,
  inputs: [
    { name: "a", elemType: onnxFloat, dims: ["M", "K"] },
    { name: "b", elemType: onnxFloat, dims: ["K", "N"] },
  ],
  outputs: [{ name: "c", elemType: onnxFloat, dims: ["M", "N"] }],
  nodes: [{ op: "MatMul", inputs: ["a", "b"], outputs: ["c"] }],
});
const session = await ort.InferenceSession.create(matmulGraph, {
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
});

console.log(`GEMM C[M,N] = A[M,K]·B[K,N], float32, onnxruntime with ${threads} thread(s)`);
console.log("   M     N     K |   JS ms  JS GFLOP/s |  ORT ms ORT GFLOP/s | JS/ORT throughput");
for (const [M, N, K] of [
  [8, 64, 64],
  [64, 64, 64],
  [1024, 64, 64],
  [1024, 258, 64],
  [128, 128, 16],
  [256, 128, 64],
  [512, 2048, 512],
] as const) {
  const A = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i));
  const B = Float32Array.from({ length: K * N }, (_, i) => Math.cos(i));
  const C = new Float32Array(M * N);
  const flop = 2 * M * N * K;
  const js = await time(() => gemm(A, B, C, M, N, K));
  const feeds = {
    a: new ort.Tensor("float32", A, [M, K]),
    b: new ort.Tensor("float32", B, [K, N]),
  };
  const onnx = await time(() => session.run(feeds));
  const g = (ms: number) => (flop / ms / 1e6).toFixed(2).padStart(10);
  console.log(
    `${String(M).padStart(4)} ${String(N).padStart(5)} ${String(K).padStart(5)} | ${js.toFixed(3).padStart(7)} ${g(js)} | ${onnx.toFixed(3).padStart(7)} ${g(onnx)} | ${(onnx / js).toFixed(2)}×`,
  );
}
await session.release();
