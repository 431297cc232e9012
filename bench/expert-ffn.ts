// MoE expert FFN, T=512 tokens, d=512, d_ff=2048, float32: forward and forward+backward, in ms and
// GFLOP/s, at 1 and 2 threads, for our paths and for the peer (PyTorch with OpenBLAS, run from
// bench/expert_ffn_peer.py in the same invocation), with the throughput ratio ours/peer.
//   forward      = 2 GEMMs (2·2·T·d·h = 2.15 GFLOP)
//   fwd+bwd      = forward + backward; nominal 3× the forward's FLOPs (6.44 GFLOP). Our backward
//                  recomputes the hidden pre-activation (the stateless ExpertHost contract), one
//                  GEMM more than PyTorch's autograd, which keeps it: we pay that in the figure.
// Ours and the peer alternate in rounds so that load from other processes hits both alike.
// Usage: npx tsx bench/expert-ffn.ts [rounds=3] [--js]   (--js adds the plain-TypeScript kernel)

import { spawnSync } from "node:child_process";
import { Prng } from "../src/common/prng.ts";
import { type ExpertParams, ffnBackwardJs, ffnForwardJs } from "../src/model/expert-ffn.ts";
import { type FfnWeights, OnnxFfn } from "../src/tensor/onnx-ffn.ts";

const T = 512;
const D = 512;
const H = 2048;
const rounds = Number(process.argv[2] ?? 3);
const withJs = process.argv.includes("--js");
const fwdGflop = (2 * 2 * T * D * H) / 1e9;
const fwdBwdGflop = 3 * fwdGflop;
const python = "/usr/bin/python3";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

async function medianMs(fn: () => Promise<unknown> | unknown, minMs: number): Promise<number> {
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

const rng = new Prng(1);
const rand = (n: number, s: number) => Float32Array.from({ length: n }, () => rng.normal() * s);
const w: FfnWeights = {
  w1: rand(D * H, 0.02),
  b1: rand(H, 0.02),
  w2: rand(H * D, 0.02),
  b2: rand(D, 0.02),
};
const x = rand(T * D, 1);
const dy = rand(T * D, 1);

interface Peer {
  torch: string;
  libblas: string;
  openblas_coretype: string;
  fwd_ms: number;
  fwdbwd_ms: number;
}

function peer(threads: number): Peer | null {
  const r = spawnSync(
    python,
    ["bench/expert_ffn_peer.py", String(threads), String(T), String(D), String(H), "1.0"],
    {
      encoding: "utf8",
      env: {
        ...process.env,
        OMP_NUM_THREADS: String(threads),
        OPENBLAS_NUM_THREADS: String(threads),
      },
    },
  );
  if (r.status !== 0) {
    console.log(`peer failed (${python}): ${r.stderr.split("\n").slice(-3).join(" ")}`);
    return null;
  }
  return JSON.parse(r.stdout.trim().split("\n").pop() as string) as Peer;
}

const fmt = (ms: number, gflop: number) =>
  `${ms.toFixed(1).padStart(7)} ms ${(gflop / (ms / 1000)).toFixed(1).padStart(6)} GFLOP/s`;

console.log(
  `expert FFN T=${T} d=${D} d_ff=${H} float32; forward ${fwdGflop.toFixed(2)} GFLOP, fwd+bwd ${fwdBwdGflop.toFixed(2)} GFLOP (nominal)`,
);
for (const threads of [1, 2]) {
  const ffn = await OnnxFfn.create(D, H, threads);
  const ours = { fwd: [] as number[], fb: [] as number[] };
  const theirs = { fwd: [] as number[], fb: [] as number[] };
  let info: Peer | null = null;
  for (let r = 0; r < rounds; r++) {
    ours.fwd.push(await medianMs(() => ffn.forward(x, T, w), 1000));
    ours.fb.push(
      await medianMs(async () => {
        await ffn.forward(x, T, w);
        await ffn.backward(x, dy, T, w);
      }, 1000),
    );
    const p = peer(threads);
    if (p) {
      info = p;
      theirs.fwd.push(p.fwd_ms);
      theirs.fb.push(p.fwdbwd_ms);
    }
  }
  await ffn.release();
  const of = median(ours.fwd);
  const ob = median(ours.fb);
  console.log(`\n${threads} thread(s), median of ${rounds} interleaved rounds`);
  console.log(
    `  onnxruntime-node (MLAS)   fwd ${fmt(of, fwdGflop)} | fwd+bwd ${fmt(ob, fwdBwdGflop)}`,
  );
  if (info) {
    const pf = median(theirs.fwd);
    const pb = median(theirs.fb);
    console.log(
      `  PyTorch ${info.torch} + OpenBLAS fwd ${fmt(pf, fwdGflop)} | fwd+bwd ${fmt(pb, fwdBwdGflop)}`,
    );
    console.log(
      `    (libblas.so.3 → ${info.libblas}; OPENBLAS_CORETYPE ${info.openblas_coretype})`,
    );
    console.log(
      `  ratio ours/peer throughput: fwd ${(pf / of).toFixed(2)}×, fwd+bwd ${(pb / ob).toFixed(2)}× (goal ≥ 0.5×)`,
    );
  }
}
if (withJs) {
  const p: ExpertParams = { d: D, h: H, ...w };
  const jf = await medianMs(() => ffnForwardJs(p, x, T), 2000);
  const jb = await medianMs(() => {
    ffnForwardJs(p, x, T);
    ffnBackwardJs(p, x, dy, T);
  }, 2000);
  console.log(
    `\nplain TypeScript kernel (reference/fallback), 1 thread: fwd ${fmt(jf, fwdGflop)} | fwd+bwd ${fmt(jb, fwdBwdGflop)}`,
  );
}
