// The differentiable ops a decoder-only transformer needs, each with its hand-derived backward:
// matmul, batched matmul, bias, add, scale, GELU, softmax, layer norm, embedding, fused causal
// multi-head attention, cross-entropy, and the row gather / scatter-add that dispatch tokens to
// experts. Every op's backward is checked against central finite differences in float64
// (test/tensor/ops.test.ts). Shapes are asserted on entry; they come from model code, not users.

import { invariant } from "../common/assert.ts";
import { geluBackward, geluForward } from "./gelu.ts";
import { gemm } from "./gemm.ts";
import { alloc, type Buf, Tensor } from "./tensor.ts";

function rowsCols(t: Tensor, what: string): [number, number] {
  invariant(t.shape.length === 2, () => `${what}: expected a 2-D tensor; got [${t.shape}]`);
  return [t.shape[0] as number, t.shape[1] as number];
}

/** [M,K] · [K,N] → [M,N]. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  const [M, K] = rowsCols(a, "matmul a");
  const [K2, N] = rowsCols(b, "matmul b");
  invariant(K === K2, () => `matmul: [${a.shape}] · [${b.shape}]`);
  const out = alloc(M * N, a.dtype);
  gemm(a.data, b.data, out, M, N, K);
  return Tensor.fromOp(
    out,
    [M, N],
    [a, b],
    (g) => {
      if (a.requiresGrad) gemm(g, b.data, a.gradBuffer(), M, K, N, false, true, true);
      if (b.requiresGrad) gemm(a.data, g, b.gradBuffer(), K, N, M, true, false, true);
    },
    "matmul",
  );
}

/** [B,M,K] · [B,K,N] → [B,M,N]. */
export function bmm(a: Tensor, b: Tensor): Tensor {
  invariant(a.shape.length === 3 && b.shape.length === 3, "bmm: expected 3-D tensors");
  const [B, M, K] = a.shape as [number, number, number];
  const [B2, K2, N] = b.shape as [number, number, number];
  invariant(B === B2 && K === K2, () => `bmm: [${a.shape}] · [${b.shape}]`);
  const out = alloc(B * M * N, a.dtype);
  for (let i = 0; i < B; i++) {
    gemm(
      a.data.subarray(i * M * K, (i + 1) * M * K),
      b.data.subarray(i * K * N, (i + 1) * K * N),
      out.subarray(i * M * N, (i + 1) * M * N),
      M,
      N,
      K,
    );
  }
  return Tensor.fromOp(
    out,
    [B, M, N],
    [a, b],
    (g) => {
      for (let i = 0; i < B; i++) {
        const gi = g.subarray(i * M * N, (i + 1) * M * N);
        if (a.requiresGrad) {
          const ga = a.gradBuffer().subarray(i * M * K, (i + 1) * M * K);
          gemm(gi, b.data.subarray(i * K * N, (i + 1) * K * N), ga, M, K, N, false, true, true);
        }
        if (b.requiresGrad) {
          const gb = b.gradBuffer().subarray(i * K * N, (i + 1) * K * N);
          gemm(a.data.subarray(i * M * K, (i + 1) * M * K), gi, gb, K, N, M, true, false, true);
        }
      }
    },
    "bmm",
  );
}

/** x[N,D] + bias[D] broadcast over rows. */
export function addBias(x: Tensor, bias: Tensor): Tensor {
  const [N, D] = rowsCols(x, "addBias");
  invariant(bias.size === D, () => `addBias: bias [${bias.shape}] for rows of ${D}`);
  const out = alloc(N * D, x.dtype);
  for (let i = 0; i < N; i++)
    for (let j = 0; j < D; j++)
      out[i * D + j] = (x.data[i * D + j] as number) + (bias.data[j] as number);
  return Tensor.fromOp(
    out,
    x.shape,
    [x, bias],
    (g) => {
      x.accumulateGrad(g);
      if (bias.requiresGrad) {
        const gb = bias.gradBuffer();
        for (let i = 0; i < N; i++)
          for (let j = 0; j < D; j++) gb[j] = (gb[j] as number) + (g[i * D + j] as number);
      }
    },
    "addBias",
  );
}

/** x @ W + b, the affine map of a dense layer. */
export function linear(x: Tensor, w: Tensor, b?: Tensor): Tensor {
  const y = matmul(x, w);
  return b === undefined ? y : addBias(y, b);
}

/** Elementwise a + b (same shape). */
export function add(a: Tensor, b: Tensor): Tensor {
  invariant(a.size === b.size, () => `add: [${a.shape}] + [${b.shape}]`);
  const out = alloc(a.size, a.dtype);
  for (let i = 0; i < out.length; i++) out[i] = (a.data[i] as number) + (b.data[i] as number);
  return Tensor.fromOp(
    out,
    a.shape,
    [a, b],
    (g) => {
      a.accumulateGrad(g);
      b.accumulateGrad(g);
    },
    "add",
  );
}

/** Elementwise s · x. */
export function scale(x: Tensor, s: number): Tensor {
  const out = alloc(x.size, x.dtype);
  for (let i = 0; i < out.length; i++) out[i] = (x.data[i] as number) * s;
  return Tensor.fromOp(
    out,
    x.shape,
    [x],
    (g) => {
      const gx = x.gradBuffer();
      for (let i = 0; i < gx.length; i++) gx[i] = (gx[i] as number) + (g[i] as number) * s;
    },
    "scale",
  );
}

/** Σ_i w_i · t_i of scalars (the total loss from its terms). */
export function weightedSum(terms: readonly Tensor[], weights: readonly number[]): Tensor {
  invariant(terms.length === weights.length && terms.length > 0, "weightedSum: bad arguments");
  const first = terms[0] as Tensor;
  const out = alloc(1, first.dtype);
  let s = 0;
  terms.forEach((t, i) => {
    invariant(t.size === 1, "weightedSum: terms must be scalars");
    s += (weights[i] as number) * t.item();
  });
  out[0] = s;
  return Tensor.fromOp(
    out,
    [1],
    terms,
    (g) => {
      terms.forEach((t, i) => {
        if (t.requiresGrad)
          t.gradBuffer()[0] = (t.grad?.[0] as number) + (g[0] as number) * (weights[i] as number);
      });
    },
    "weightedSum",
  );
}

export function gelu(x: Tensor): Tensor {
  const out = alloc(x.size, x.dtype);
  geluForward(x.data, out);
  return Tensor.fromOp(
    out,
    x.shape,
    [x],
    (g) => {
      const dx = alloc(x.size, x.dtype);
      geluBackward(x.data, g, dx);
      x.accumulateGrad(dx);
    },
    "gelu",
  );
}

/** Row-wise softmax of a [N,D] tensor. */
export function softmax(x: Tensor): Tensor {
  const [N, D] = rowsCols(x, "softmax");
  const out = alloc(N * D, x.dtype);
  for (let i = 0; i < N; i++) softmaxRow(x.data, out, i * D, D);
  return Tensor.fromOp(
    out,
    x.shape,
    [x],
    (g) => {
      const gx = x.gradBuffer();
      for (let i = 0; i < N; i++) {
        let dot = 0;
        for (let j = 0; j < D; j++) dot += (g[i * D + j] as number) * (out[i * D + j] as number);
        for (let j = 0; j < D; j++) {
          const p = out[i * D + j] as number;
          gx[i * D + j] = (gx[i * D + j] as number) + p * ((g[i * D + j] as number) - dot);
        }
      }
    },
    "softmax",
  );
}

function softmaxRow(x: Buf, out: Buf, off: number, n: number): void {
  let max = Number.NEGATIVE_INFINITY;
  for (let j = 0; j < n; j++) max = Math.max(max, x[off + j] as number);
  let sum = 0;
  for (let j = 0; j < n; j++) {
    const e = Math.exp((x[off + j] as number) - max);
    out[off + j] = e;
    sum += e;
  }
  const inv = 1 / sum;
  for (let j = 0; j < n; j++) out[off + j] = (out[off + j] as number) * inv;
}

export const layerNormEpsilon = 1e-5;

/** Layer normalisation over the last axis of [N,D] with gain γ and bias β (Ba et al. 2016). */
export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor): Tensor {
  const [N, D] = rowsCols(x, "layerNorm");
  invariant(gamma.size === D && beta.size === D, "layerNorm: γ/β size");
  const out = alloc(N * D, x.dtype);
  const xhat = alloc(N * D, x.dtype);
  const rstd = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    let mean = 0;
    for (let j = 0; j < D; j++) mean += x.data[i * D + j] as number;
    mean /= D;
    let v = 0;
    for (let j = 0; j < D; j++) {
      const d = (x.data[i * D + j] as number) - mean;
      v += d * d;
    }
    const r = 1 / Math.sqrt(v / D + layerNormEpsilon);
    rstd[i] = r;
    for (let j = 0; j < D; j++) {
      const h = ((x.data[i * D + j] as number) - mean) * r;
      xhat[i * D + j] = h;
      out[i * D + j] = h * (gamma.data[j] as number) + (beta.data[j] as number);
    }
  }
  return Tensor.fromOp(
    out,
    x.shape,
    [x, gamma, beta],
    (g) => {
      const gg = gamma.requiresGrad ? gamma.gradBuffer() : null;
      const gb = beta.requiresGrad ? beta.gradBuffer() : null;
      const gx = x.requiresGrad ? x.gradBuffer() : null;
      for (let i = 0; i < N; i++) {
        let sumG = 0;
        let sumGX = 0;
        for (let j = 0; j < D; j++) {
          const gy = g[i * D + j] as number;
          const h = xhat[i * D + j] as number;
          if (gg) gg[j] = (gg[j] as number) + gy * h;
          if (gb) gb[j] = (gb[j] as number) + gy;
          const gxh = gy * (gamma.data[j] as number);
          sumG += gxh;
          sumGX += gxh * h;
        }
        if (gx) {
          const r = rstd[i] as number;
          for (let j = 0; j < D; j++) {
            const gxh = (g[i * D + j] as number) * (gamma.data[j] as number);
            const h = xhat[i * D + j] as number;
            gx[i * D + j] = (gx[i * D + j] as number) + (r * (D * gxh - sumG - h * sumGX)) / D;
          }
        }
      }
    },
    "layerNorm",
  );
}

/** Rows of `table` [V,D] at `ids` → [ids.length, D]; the backward scatter-adds into the table. */
export function embedding(table: Tensor, ids: Int32Array): Tensor {
  const [V, D] = rowsCols(table, "embedding");
  const out = alloc(ids.length * D, table.dtype);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i] as number;
    invariant(id >= 0 && id < V, () => `embedding: id ${id} outside [0, ${V})`);
    out.set(table.data.subarray(id * D, (id + 1) * D), i * D);
  }
  return Tensor.fromOp(
    out,
    [ids.length, D],
    [table],
    (g) => {
      const gt = table.gradBuffer();
      for (let i = 0; i < ids.length; i++) {
        const base = (ids[i] as number) * D;
        for (let j = 0; j < D; j++)
          gt[base + j] = (gt[base + j] as number) + (g[i * D + j] as number);
      }
    },
    "embedding",
  );
}

/** Rows of x [N,D] at `rows` → [rows.length, D] (token dispatch). */
export function gatherRows(x: Tensor, rows: Int32Array): Tensor {
  return embedding(x, rows);
}

/** out[N,D] with out[rows[i]] += x[i] (token combine); the backward gathers. */
export function scatterAddRows(x: Tensor, rows: Int32Array, N: number): Tensor {
  const [n, D] = rowsCols(x, "scatterAddRows");
  invariant(rows.length === n, "scatterAddRows: one target row per input row");
  const out = alloc(N * D, x.dtype);
  for (let i = 0; i < n; i++) {
    const r = rows[i] as number;
    invariant(r >= 0 && r < N, () => `scatterAddRows: row ${r} outside [0, ${N})`);
    for (let j = 0; j < D; j++)
      out[r * D + j] = (out[r * D + j] as number) + (x.data[i * D + j] as number);
  }
  return Tensor.fromOp(
    out,
    [N, D],
    [x],
    (g) => {
      const gx = x.gradBuffer();
      for (let i = 0; i < n; i++) {
        const r = rows[i] as number;
        for (let j = 0; j < D; j++)
          gx[i * D + j] = (gx[i * D + j] as number) + (g[r * D + j] as number);
      }
    },
    "scatterAddRows",
  );
}

/**
 * Causal multi-head self-attention core: q, k, v are [B·T, H·dh] (heads side by side, as produced
 * by one projection), output [B·T, H·dh] = softmax(q kᵀ/√dh + causal mask) v per sequence and head
 * (Vaswani et al. 2017). Fused so the T×T probabilities are kept once for the backward.
 */
export function causalAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  B: number,
  T: number,
  H: number,
): Tensor {
  const [BT, C] = rowsCols(q, "attention q");
  invariant(BT === B * T && C % H === 0, () => `attention: [${q.shape}] for B=${B} T=${T} H=${H}`);
  invariant(k.size === q.size && v.size === q.size, "attention: q, k, v sizes differ");
  const dh = C / H;
  const sc = 1 / Math.sqrt(dh);
  const dt = q.dtype;
  const out = alloc(BT * C, dt);
  const probs = alloc(B * H * T * T, dt);
  const qh = alloc(T * dh, dt);
  const kh = alloc(T * dh, dt);
  const vh = alloc(T * dh, dt);
  const oh = alloc(T * dh, dt);
  const split = (src: Buf, dst: Buf, b: number, h: number) => {
    for (let t = 0; t < T; t++) {
      const s = (b * T + t) * C + h * dh;
      for (let j = 0; j < dh; j++) dst[t * dh + j] = src[s + j] as number;
    }
  };
  const merge = (src: Buf, dst: Buf, b: number, h: number, acc: boolean) => {
    for (let t = 0; t < T; t++) {
      const s = (b * T + t) * C + h * dh;
      for (let j = 0; j < dh; j++)
        dst[s + j] = (acc ? (dst[s + j] as number) : 0) + (src[t * dh + j] as number);
    }
  };
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      split(q.data, qh, b, h);
      split(k.data, kh, b, h);
      split(v.data, vh, b, h);
      const P = probs.subarray((b * H + h) * T * T, (b * H + h + 1) * T * T);
      gemm(qh, kh, P, T, T, dh, false, true);
      for (let i = 0; i < T; i++) {
        let max = Number.NEGATIVE_INFINITY;
        for (let j = 0; j <= i; j++) max = Math.max(max, (P[i * T + j] as number) * sc);
        let sum = 0;
        for (let j = 0; j <= i; j++) {
          const e = Math.exp((P[i * T + j] as number) * sc - max);
          P[i * T + j] = e;
          sum += e;
        }
        for (let j = 0; j <= i; j++) P[i * T + j] = (P[i * T + j] as number) / sum;
        for (let j = i + 1; j < T; j++) P[i * T + j] = 0;
      }
      gemm(P, vh, oh, T, dh, T);
      merge(oh, out, b, h, false);
    }
  }
  return Tensor.fromOp(
    out,
    q.shape,
    [q, k, v],
    (g) => {
      const gq = alloc(BT * C, dt);
      const gk = alloc(BT * C, dt);
      const gv = alloc(BT * C, dt);
      const gh = alloc(T * dh, dt);
      const dP = alloc(T * T, dt);
      const tmp = alloc(T * dh, dt);
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < H; h++) {
          split(q.data, qh, b, h);
          split(k.data, kh, b, h);
          split(v.data, vh, b, h);
          split(g, gh, b, h);
          const P = probs.subarray((b * H + h) * T * T, (b * H + h + 1) * T * T);
          gemm(P, gh, tmp, T, dh, T, true, false); // dV = Pᵀ dO
          merge(tmp, gv, b, h, true);
          gemm(gh, vh, dP, T, T, dh, false, true); // dP = dO Vᵀ
          for (let i = 0; i < T; i++) {
            let dot = 0;
            for (let j = 0; j <= i; j++)
              dot += (P[i * T + j] as number) * (dP[i * T + j] as number);
            for (let j = 0; j < T; j++) {
              dP[i * T + j] =
                j <= i ? (P[i * T + j] as number) * ((dP[i * T + j] as number) - dot) * sc : 0;
            }
          }
          gemm(dP, kh, tmp, T, dh, T); // dQ = dS K
          merge(tmp, gq, b, h, true);
          gemm(dP, qh, tmp, T, dh, T, true, false); // dK = dSᵀ Q
          merge(tmp, gk, b, h, true);
        }
      }
      q.accumulateGrad(gq);
      k.accumulateGrad(gk);
      v.accumulateGrad(gv);
    },
    "causalAttention",
  );
}

/**
 * Mean cross-entropy of row-wise softmax(logits [N,V]) against `targets`; a target of -1 is
 * ignored (padding). Returns a scalar in nats.
 */
export function crossEntropy(logits: Tensor, targets: Int32Array): Tensor {
  const [N, V] = rowsCols(logits, "crossEntropy");
  invariant(targets.length === N, "crossEntropy: one target per row");
  const probs = alloc(N * V, logits.dtype);
  let loss = 0;
  let count = 0;
  for (let i = 0; i < N; i++) {
    softmaxRow(logits.data, probs, i * V, V);
    const t = targets[i] as number;
    if (t < 0) continue;
    invariant(t < V, () => `crossEntropy: target ${t} outside [0, ${V})`);
    loss -= Math.log(Math.max(probs[i * V + t] as number, 1e-30));
    count++;
  }
  const out = alloc(1, logits.dtype);
  out[0] = count > 0 ? loss / count : 0;
  return Tensor.fromOp(
    out,
    [1],
    [logits],
    (g) => {
      if (count === 0) return;
      const s = (g[0] as number) / count;
      const gl = logits.gradBuffer();
      for (let i = 0; i < N; i++) {
        const t = targets[i] as number;
        if (t < 0) continue;
        for (let j = 0; j < V; j++) {
          const d = (probs[i * V + j] as number) - (j === t ? 1 : 0);
          gl[i * V + j] = (gl[i * V + j] as number) + s * d;
        }
      }
    },
    "crossEntropy",
  );
}
