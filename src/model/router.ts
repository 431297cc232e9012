// The Born-rule router (the spec's `quantum_superposition` routing, realised as a normalised
// squared score): a linear map gives each token amplitudes a_i over the E experts of its layer,
// and probabilities p_i = a_i² / Σ_j a_j² — `amplitude.norm_sqr()` in the spec, and nothing more
// quantum than that. Plus the two auxiliary losses that keep routing healthy:
//   load balance (Switch Transformer, Fedus et al. 2021): E · Σ_i f_i · P̄_i, where f_i is the
//     fraction of assignments routed to expert i (no gradient) and P̄_i its mean probability;
//     1 at perfect balance, up to E when one expert takes everything.
//   router z-loss (ST-MoE, Zoph et al. 2022): mean_t (log Z_t)², with Z_t = Σ_j a_tj² the
//     amplitudes' squared norm (the Born-rule counterpart of the softmax partition function); it
//     keeps the amplitudes' scale near 1 so that squared scores stay well-conditioned in float32.

import { invariant } from "../common/assert.ts";
import { alloc, type Buf, Tensor } from "../tensor/tensor.ts";

/** Added to each a_i² so that an all-zero amplitude row is uniform instead of 0/0. */
export const bornEpsilon = 1e-9;

/** p = (a² + ε) / Σ (a² + ε), row-wise over [N,E]. */
export function bornProbabilities(a: Tensor): Tensor {
  invariant(a.shape.length === 2, "bornProbabilities: expected [N,E]");
  const [N, E] = a.shape as [number, number];
  const p = alloc(N * E, a.dtype);
  const S = new Float64Array(N);
  for (let t = 0; t < N; t++) {
    let s = 0;
    for (let j = 0; j < E; j++) {
      const v = a.data[t * E + j] as number;
      s += v * v + bornEpsilon;
    }
    S[t] = s;
    for (let j = 0; j < E; j++) {
      const v = a.data[t * E + j] as number;
      p[t * E + j] = (v * v + bornEpsilon) / s;
    }
  }
  return Tensor.fromOp(
    p,
    [N, E],
    [a],
    (g) => {
      // ∂p_i/∂a_j = 2a_j (δ_ij − p_i) / S  ⇒  ∂L/∂a_j = 2a_j/S · (g_j − Σ_i g_i p_i)
      const ga = a.gradBuffer();
      for (let t = 0; t < N; t++) {
        let dot = 0;
        for (let i = 0; i < E; i++) dot += (g[t * E + i] as number) * (p[t * E + i] as number);
        const s = S[t] as number;
        for (let j = 0; j < E; j++) {
          const aj = a.data[t * E + j] as number;
          ga[t * E + j] =
            (ga[t * E + j] as number) + ((2 * aj) / s) * ((g[t * E + j] as number) - dot);
        }
      }
    },
    "born",
  );
}

/** mean_t (log Σ_j (a_tj² + ε))². */
export function routerZLoss(a: Tensor): Tensor {
  const [N, E] = a.shape as [number, number];
  const logS = new Float64Array(N);
  const S = new Float64Array(N);
  let loss = 0;
  for (let t = 0; t < N; t++) {
    let s = 0;
    for (let j = 0; j < E; j++) {
      const v = a.data[t * E + j] as number;
      s += v * v + bornEpsilon;
    }
    S[t] = s;
    logS[t] = Math.log(s);
    loss += (logS[t] as number) ** 2;
  }
  const out = alloc(1, a.dtype);
  out[0] = loss / N;
  return Tensor.fromOp(
    out,
    [1],
    [a],
    (g) => {
      const ga = a.gradBuffer();
      for (let t = 0; t < N; t++) {
        const c = ((g[0] as number) * 2 * (logS[t] as number) * 2) / ((S[t] as number) * N);
        for (let j = 0; j < E; j++)
          ga[t * E + j] = (ga[t * E + j] as number) + c * (a.data[t * E + j] as number);
      }
    },
    "routerZLoss",
  );
}

/** E · Σ_i f_i · mean_t p_ti, with `fraction` f (constant, sums to 1). */
export function loadBalanceLoss(p: Tensor, fraction: Buf): Tensor {
  const [N, E] = p.shape as [number, number];
  invariant(fraction.length === E, "loadBalanceLoss: one fraction per expert");
  let loss = 0;
  for (let t = 0; t < N; t++)
    for (let i = 0; i < E; i++) loss += (fraction[i] as number) * (p.data[t * E + i] as number);
  const out = alloc(1, p.dtype);
  out[0] = (E * loss) / N;
  return Tensor.fromOp(
    out,
    [1],
    [p],
    (g) => {
      const gp = p.gradBuffer();
      const c = ((g[0] as number) * E) / N;
      for (let t = 0; t < N; t++)
        for (let i = 0; i < E; i++)
          gp[t * E + i] = (gp[t * E + i] as number) + c * (fraction[i] as number);
    },
    "loadBalanceLoss",
  );
}
