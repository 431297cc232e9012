// Parsers for the unit-bearing strings of the spec's YAML ("24h", "every_1000_steps", "4MB",
// "10Mbps", "< 10%", "10%/h", "2000m", "4Gi"). Each is parsed once, at the edge, into a number in
// base units (seconds, bytes, bits per second, ratios) that keeps its source text, so that
// `config show` prints the same spelling the operator wrote and the output validates again.
//
// Each parser returns `undefined` on malformed input; the schema turns that into an error that
// names the key, what was expected and what was found.

/** A span of time. `seconds` is Infinity for "unlimited". */
export interface Duration {
  readonly seconds: number;
  readonly text: string;
}

/** A checkpoint cadence: "every_1000_steps" (steps) or a duration ("30m"). */
export type Frequency =
  | { readonly kind: "steps"; readonly steps: number; readonly text: string }
  | { readonly kind: "time"; readonly seconds: number; readonly text: string };

/** A size in bytes. SI prefixes are powers of 1000 ("4MB"), IEC ones powers of 1024 ("4MiB", "4Gi"). */
export interface ByteSize {
  readonly bytes: number;
  readonly text: string;
}

/** A data rate in bits per second ("10Mbps"). */
export interface BitRate {
  readonly bitsPerSecond: number;
  readonly text: string;
}

/** A fraction per unit of time ("10%/h" = 0.1 per 3600 s). */
export interface RatePerTime {
  readonly ratio: number;
  readonly perSeconds: number;
  readonly text: string;
}

export type Comparison = "<" | "<=" | ">" | ">=";

/**
 * A bound in a success criterion or rollback trigger: "< 10%" (ratio 0.1), "< 10ms" (0.01 s),
 * "> 0.001" (plain number). `unit` says how `value` is to be read.
 */
export interface Threshold {
  readonly op: Comparison;
  readonly value: number;
  readonly unit: "ratio" | "seconds" | "number";
  readonly text: string;
}

const secondsPerUnit: Record<string, number> = {
  ns: 1e-9,
  us: 1e-6,
  µs: 1e-6,
  ms: 1e-3,
  s: 1,
  m: 60,
  h: 3600,
  d: 86400,
  w: 604800,
};

const durationPattern = /^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)$/;

export function parseDuration(text: string): Duration | undefined {
  const t = text.trim();
  if (t === "unlimited") return { seconds: Number.POSITIVE_INFINITY, text: t };
  const m = durationPattern.exec(t);
  if (!m) return undefined;
  const unit = secondsPerUnit[m[2] as string] as number;
  return { seconds: Number(m[1]) * unit, text: t };
}

const stepsPattern = /^every_(\d+)_steps?$/;

export function parseFrequency(text: string): Frequency | undefined {
  const t = text.trim();
  const m = stepsPattern.exec(t);
  if (m) {
    const steps = Number(m[1]);
    return steps >= 1 ? { kind: "steps", steps, text: t } : undefined;
  }
  const d = parseDuration(t);
  if (!d || !Number.isFinite(d.seconds) || d.seconds <= 0) return undefined;
  return { kind: "time", seconds: d.seconds, text: t };
}

const bytesPerUnit: Record<string, number> = {
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
  TiB: 1024 ** 4,
  // Kubernetes quantity suffixes (IstioOperator resources).
  Ki: 1024,
  Mi: 1024 ** 2,
  Gi: 1024 ** 3,
  Ti: 1024 ** 4,
  k: 1e3,
  M: 1e6,
  G: 1e9,
};

const sizePattern = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|Ki|Mi|Gi|Ti|k|M|G)?$/;

export function parseByteSize(text: string): ByteSize | undefined {
  const t = text.trim();
  const m = sizePattern.exec(t);
  if (!m) return undefined;
  const bytes = Number(m[1]) * (bytesPerUnit[m[2] ?? "B"] as number);
  return Number.isInteger(bytes) ? { bytes, text: t } : undefined;
}

const bitsPerUnit: Record<string, number> = {
  bps: 1,
  Kbps: 1e3,
  kbps: 1e3,
  Mbps: 1e6,
  Gbps: 1e9,
};

const bitRatePattern = /^(\d+(?:\.\d+)?)\s*(bps|Kbps|kbps|Mbps|Gbps)$/;

export function parseBitRate(text: string): BitRate | undefined {
  const t = text.trim();
  const m = bitRatePattern.exec(t);
  if (!m) return undefined;
  return { bitsPerSecond: Number(m[1]) * (bitsPerUnit[m[2] as string] as number), text: t };
}

const ratePerTimePattern = /^(\d+(?:\.\d+)?)%\s*\/\s*(s|m|h|d)$/;

export function parseRatePerTime(text: string): RatePerTime | undefined {
  const t = text.trim();
  const m = ratePerTimePattern.exec(t);
  if (!m) return undefined;
  return {
    ratio: Number(m[1]) / 100,
    perSeconds: secondsPerUnit[m[2] as string] as number,
    text: t,
  };
}

const thresholdPattern = /^(<=|>=|<|>)\s*(\d+(?:\.\d+)?)\s*(%|ns|us|µs|ms|s)?$/;

export function parseThreshold(text: string): Threshold | undefined {
  const t = text.trim();
  const m = thresholdPattern.exec(t);
  if (!m) return undefined;
  const op = m[1] as Comparison;
  const n = Number(m[2]);
  const suffix = m[3];
  if (suffix === undefined) return { op, value: n, unit: "number", text: t };
  if (suffix === "%") return { op, value: n / 100, unit: "ratio", text: t };
  return { op, value: n * (secondsPerUnit[suffix] as number), unit: "seconds", text: t };
}

/** True when `observed` satisfies the bound, e.g. 0.05 satisfies "< 10%". */
export function thresholdHolds(threshold: Threshold, observed: number): boolean {
  switch (threshold.op) {
    case "<":
      return observed < threshold.value;
    case "<=":
      return observed <= threshold.value;
    case ">":
      return observed > threshold.value;
    case ">=":
      return observed >= threshold.value;
  }
}

/** Kubernetes CPU quantity: "2000m" = 2 cores, "1.5" = 1.5 cores. */
export function parseCpuQuantity(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(m?)$/.exec(text.trim());
  if (!m) return undefined;
  return m[2] === "m" ? Number(m[1]) / 1000 : Number(m[1]);
}
