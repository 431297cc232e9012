// Model weights on disk as one safetensors file: every trunk parameter under its name (e.g.
// "blocks.0.attn.wq") and every expert under "experts.L<layer>.E<expert>.<w1|b1|w2|b2>", with the
// model's config as JSON in the metadata. Loading checks, before touching any weights, that the
// stored config equals the one asked for (naming the first differing field), that every expected
// tensor is present with its shape, and that there is nothing extra. Writes are atomic
// (temporary file + rename), so a crash never leaves half a model under the final name.

import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { ModelConfig } from "./config.ts";
import { expertKey } from "./expert.ts";
import { type ExpertTensorName, expertTensorNames } from "./expert-ffn.ts";
import type { LocalExpertHost } from "./local-expert-host.ts";
import {
  decodeSafetensors,
  encodeSafetensors,
  type NamedTensor,
  SafetensorsError,
} from "./safetensors.ts";
import type { MoeTransformer } from "./transformer.ts";

export const checkpointFormat = "moe-swarm/1";

export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CheckpointError";
  }
}

export function expertTensorName(layer: number, expert: number, part: ExpertTensorName): string {
  return `experts.${expertKey({ layer, expert })}.${part}`;
}

/** The tensors of a model whose experts are all in `host`. */
export function modelTensors(model: MoeTransformer, host: LocalExpertHost): NamedTensor[] {
  const out: NamedTensor[] = [];
  for (const [name, p] of model.params)
    out.push({ name, shape: p.shape, data: Float32Array.from(p.data) });
  for (const id of model.expertIds()) {
    const params = host.params(id);
    for (const part of expertTensorNames) {
      const shape =
        part === "w1"
          ? [params.d, params.h]
          : part === "w2"
            ? [params.h, params.d]
            : [params[part].length];
      out.push({
        name: expertTensorName(id.layer, id.expert, part),
        shape,
        data: Float32Array.from(params[part]),
      });
    }
  }
  return out;
}

export function encodeModel(
  model: MoeTransformer,
  host: LocalExpertHost,
  extra: Record<string, string> = {},
): Uint8Array {
  return encodeSafetensors(modelTensors(model, host), {
    ...extra,
    format: checkpointFormat,
    model_config: JSON.stringify(model.config),
  });
}

export function saveModel(
  path: string,
  model: MoeTransformer,
  host: LocalExpertHost,
  extra: Record<string, string> = {},
): number {
  const bytes = encodeModel(model, host, extra);
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, bytes);
  renameSync(tmp, path);
  return bytes.length;
}

/** The first path at which two JSON values differ, or undefined if equal. */
export function firstDifference(a: unknown, b: unknown, path = "config"): string | undefined {
  if (typeof a !== "object" || a === null || typeof b !== "object" || b === null)
    return a === b
      ? undefined
      : `${path}: file has ${JSON.stringify(a)}, expected ${JSON.stringify(b)}`;
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const k of keys) {
    const d = firstDifference(
      (a as Record<string, unknown>)[k],
      (b as Record<string, unknown>)[k],
      Array.isArray(a) ? `${path}[${k}]` : `${path}.${k}`,
    );
    if (d !== undefined) return d;
  }
  return undefined;
}

/** The model config stored in a checkpoint's metadata. */
export function storedConfig(
  bytes: Uint8Array,
  source: string,
): { config: ModelConfig; metadata: Record<string, string> } {
  const file = decodeSafetensorsChecked(bytes, source);
  return { config: parseStoredConfig(file.metadata, source), metadata: { ...file.metadata } };
}

function decodeSafetensorsChecked(bytes: Uint8Array, source: string) {
  try {
    return decodeSafetensors(bytes, source);
  } catch (err) {
    if (err instanceof SafetensorsError) throw new CheckpointError(err.message);
    throw err;
  }
}

export function parseStoredConfig(
  metadata: Readonly<Record<string, string>>,
  source: string,
): ModelConfig {
  if (metadata.format !== checkpointFormat)
    throw new CheckpointError(
      `${source}: metadata.format is ${JSON.stringify(metadata.format)}, expected "${checkpointFormat}"`,
    );
  try {
    return JSON.parse(metadata.model_config ?? "") as ModelConfig;
  } catch {
    throw new CheckpointError(`${source}: metadata.model_config is not valid JSON`);
  }
}

/**
 * Loads weights into `model` and `host` (built from the expected config). Rejects a file whose
 * config, tensor names or shapes differ, without changing any weight.
 */
export function loadModelInto(
  bytes: Uint8Array,
  model: MoeTransformer,
  host: LocalExpertHost,
  source = "model file",
): Record<string, string> {
  const file = decodeSafetensorsChecked(bytes, source);
  const stored = parseStoredConfig(file.metadata, source);
  const diff = firstDifference(stored, model.config);
  if (diff !== undefined)
    throw new CheckpointError(
      `${source} was trained with a different model config (${diff}); use the config it was trained with, or retrain`,
    );
  const expected = modelTensors(model, host);
  for (const t of expected) {
    const got = file.tensors.get(t.name);
    if (got === undefined) throw new CheckpointError(`${source}: tensor ${t.name} is missing`);
    if (got.shape.length !== t.shape.length || got.shape.some((d, i) => d !== t.shape[i]))
      throw new CheckpointError(
        `${source}: tensor ${t.name} has shape [${got.shape}], expected [${t.shape}]`,
      );
  }
  if (file.tensors.size !== expected.length) {
    const known = new Set(expected.map((t) => t.name));
    const extra = [...file.tensors.keys()].filter((n) => !known.has(n));
    throw new CheckpointError(`${source}: unexpected tensors ${extra.slice(0, 5).join(", ")}`);
  }
  for (const [name, p] of model.params) p.data.set((file.tensors.get(name) as NamedTensor).data);
  for (const id of model.expertIds()) {
    const values = {} as Record<ExpertTensorName, Float32Array>;
    for (const part of expertTensorNames)
      values[part] = (
        file.tensors.get(expertTensorName(id.layer, id.expert, part)) as NamedTensor
      ).data;
    host.setParams(id, values);
  }
  model.clearRoutingCaches();
  return { ...file.metadata };
}

export function readModelFile(path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CheckpointError(
      code === "ENOENT"
        ? `no model at ${path}; train one with \`moe-swarm train\` or pass --model`
        : `cannot read ${path}: ${(err as Error).message}`,
    );
  }
}
