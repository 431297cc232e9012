// GELU with the tanh approximation (Hendrycks & Gimpel 2016, as in GPT-2 and ONNX Gelu
// approximate="tanh"): gelu(x) = ½x(1 + tanh(√(2/π)(x + 0.044715x³))). The same formula is used by
// the JS kernels and by the ONNX expert graphs, so both backends compute the same function.

import type { Buf } from "./tensor.ts";

export const geluC = Math.sqrt(2 / Math.PI);
export const geluK = 0.044715;

export function geluForward(x: Buf, out: Buf): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    out[i] = 0.5 * v * (1 + Math.tanh(geluC * (v + geluK * v * v * v)));
  }
}

/** dx[i] = dy[i] · gelu'(x[i]). */
export function geluBackward(x: Buf, dy: Buf, dx: Buf): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    const t = Math.tanh(geluC * (v + geluK * v * v * v));
    const d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * geluC * (1 + 3 * geluK * v * v);
    dx[i] = (dy[i] as number) * d;
  }
}
