// General matrix multiply in plain TypeScript: C (+)= op(A) · op(B), row-major, float32 or float64.
// It is the reference for the native path (onnxruntime, see onnx-expert.ts) and the kernel for the
// small shapes of the trunk, where a native call's fixed overhead costs more than the arithmetic.
//
// One kernel does the work: the non-transposed product, register-blocked 4 rows of A at a time so
// that each loaded row of B feeds four accumulating rows of C (4× fewer loads of B), in k-blocks
// that keep a panel of B in L1/L2. Transposed operands are materialised first (O(mk) extra work
// against O(mnk)). Measured in bench/tensor-gemm.ts.

import { invariant } from "../common/assert.ts";
import { alloc, type Buf, dtypeOf } from "./tensor.ts";

/** k-block of the blocked loop: 4 rows × kBlockRows × n floats of B stay hot in cache. */
const kBlockRows = 64;

/** out[c, r] = m[r, c] for a rows × cols matrix. */
export function transpose(m: Buf, rows: number, cols: number, out?: Buf): Buf {
  invariant(m.length === rows * cols, "transpose: size mismatch");
  const t = out ?? alloc(rows * cols, dtypeOf(m));
  const tileSize = 32;
  for (let r0 = 0; r0 < rows; r0 += tileSize) {
    const r1 = Math.min(rows, r0 + tileSize);
    for (let c0 = 0; c0 < cols; c0 += tileSize) {
      const c1 = Math.min(cols, c0 + tileSize);
      for (let r = r0; r < r1; r++) {
        const src = r * cols;
        for (let c = c0; c < c1; c++) t[c * rows + r] = m[src + c] as number;
      }
    }
  }
  return t;
}

/**
 * C[M,N] = (accumulate ? C : 0) + op(A)[M,K] · op(B)[K,N], where op(A) = Aᵀ when `transA` (A is
 * then stored [K,M]) and op(B) = Bᵀ when `transB` (B stored [N,K]).
 */
export function gemm(
  A: Buf,
  B: Buf,
  C: Buf,
  M: number,
  N: number,
  K: number,
  transA = false,
  transB = false,
  accumulate = false,
): void {
  invariant(A.length === M * K, () => `gemm: A has ${A.length} elements, expected ${M}×${K}`);
  invariant(B.length === K * N, () => `gemm: B has ${B.length} elements, expected ${K}×${N}`);
  invariant(C.length === M * N, () => `gemm: C has ${C.length} elements, expected ${M}×${N}`);
  const a = transA ? transpose(A, K, M) : A;
  const b = transB ? transpose(B, N, K) : B;
  if (!accumulate) C.fill(0);
  gemmNN(a, b, C, M, N, K);
}

function gemmNN(A: Buf, B: Buf, C: Buf, M: number, N: number, K: number): void {
  for (let k0 = 0; k0 < K; k0 += kBlockRows) {
    const k1 = Math.min(K, k0 + kBlockRows);
    let i = 0;
    for (; i + 4 <= M; i += 4) {
      const c0 = i * N;
      const c1 = c0 + N;
      const c2 = c1 + N;
      const c3 = c2 + N;
      for (let k = k0; k < k1; k++) {
        const a0 = A[i * K + k] as number;
        const a1 = A[(i + 1) * K + k] as number;
        const a2 = A[(i + 2) * K + k] as number;
        const a3 = A[(i + 3) * K + k] as number;
        const bRow = k * N;
        for (let j = 0; j < N; j++) {
          const bv = B[bRow + j] as number;
          C[c0 + j] = (C[c0 + j] as number) + a0 * bv;
          C[c1 + j] = (C[c1 + j] as number) + a1 * bv;
          C[c2 + j] = (C[c2 + j] as number) + a2 * bv;
          C[c3 + j] = (C[c3 + j] as number) + a3 * bv;
        }
      }
    }
    for (; i < M; i++) {
      const c0 = i * N;
      for (let k = k0; k < k1; k++) {
        const a0 = A[i * K + k] as number;
        if (a0 === 0) continue;
        const bRow = k * N;
        for (let j = 0; j < N; j++)
          C[c0 + j] = (C[c0 + j] as number) + a0 * (B[bRow + j] as number);
      }
    }
  }
}
