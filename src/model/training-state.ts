// The full state of a training run, so that a resumed run continues the same loss curve bit for
// bit: weights, AdamW moments of the trunk and of every expert, the optimizer step (which drives
// AdamW's bias correction and the LR schedule), the data sampler's position in its PRNG stream,
// and the recipe (seed, batch, schedule, clipping, AdamW hyperparameters) the curve depends on.
//
// It is written as three shards, each in a standard format:
//   model.safetensors      the weights, exactly as `moe-swarm train` saves a model (config in the
//                          metadata), so `generate --model` reads this shard unchanged;
//   optimizer.safetensors  "trunk.<param>.m|v" and "experts.L<l>.E<e>.<w1|b1|w2|b2>.m|v", F32;
//   training.json          step, sampler position, recipe, run id (schema-checked on read).
// Shards are untrusted input: reading them checks the JSON schema, the model config, the recipe
// (naming the first differing field), and every tensor's presence and shape before any state is
// touched; then the host's all-or-nothing import runs first and the trunk (already fully checked)
// after it, so a rejected checkpoint leaves the trainer exactly as it was.
// safetensors: https://huggingface.co/docs/safetensors. AdamW: Loshchilov & Hutter, ICLR 2019.

import { z } from "zod";
import { invariant } from "../common/assert.ts";
import type { AdamWHyper, AdamWState } from "../tensor/adamw.ts";
import type { SamplerPosition } from "./batch-sampler.ts";
import {
  checkpointFormat,
  expertTensorName,
  firstDifference,
  parseStoredConfig,
} from "./checkpoint.ts";
import { expertHiddenOf, type ModelConfig } from "./config.ts";
import { type ExpertId, type ExpertTrainingState, expertKey } from "./expert.ts";
import { expertTensorNames, expertTensorShape } from "./expert-ffn.ts";
import {
  decodeSafetensors,
  encodeSafetensors,
  type NamedTensor,
  SafetensorsError,
  type SafetensorsFile,
} from "./safetensors.ts";
import type { LrSchedule } from "./schedule.ts";
import type { Trainer } from "./trainer.ts";

export const trainingStateFormat = "moe-swarm-training/1";
export const modelShardName = "model.safetensors";
export const optimizerShardName = "optimizer.safetensors";
export const trainingShardName = "training.json";
/** training.json is small (a few hundred bytes); anything past this is not ours. */
export const trainingJsonBytesMax = 1_000_000;
/**
 * Resuming replays the sampler's PRNG draws (./batch-sampler.ts), ≈ 10⁸ per second: a bound keeps a
 * forged position from stalling a resume (2³² draws ≈ a million steps at batch 4096).
 */
export const samplerDrawsMax = 2 ** 32;

export class TrainingStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TrainingStateError";
  }
}

/** The settings a run's loss curve depends on. A resumed run must use the same ones. */
export interface TrainingRecipe {
  readonly seed: number;
  readonly batch: number;
  readonly seq: number;
  readonly schedule: LrSchedule;
  readonly clipNorm: number;
  readonly adamw: AdamWHyper;
}

export interface TrainingMeta {
  readonly format: typeof trainingStateFormat;
  /** Optimizer steps completed. */
  readonly step: number;
  /** Names the run; checkpoints of a run and its resumptions share it. */
  readonly runId: string;
  /** The checkpoint this run was resumed from, if any (lineage). */
  readonly resumedFrom?: string;
  readonly recipe: TrainingRecipe;
  readonly sampler: SamplerPosition;
  /** Kernels that produced the state (bit-exact resume needs the same ones). */
  readonly kernels: { readonly experts: string; readonly trunk: string };
}

export interface TrainingShard {
  readonly name: string;
  readonly bytes: Uint8Array;
}

const finite = z.number().finite();
const count = z.number().int().min(0);
const metaSchema = z.strictObject({
  format: z.literal(trainingStateFormat),
  step: count,
  runId: z.string().min(1).max(128),
  resumedFrom: z.string().min(1).max(128).optional(),
  recipe: z.strictObject({
    seed: count,
    batch: z.number().int().min(1),
    seq: z.number().int().min(1),
    schedule: z.strictObject({
      peak: finite,
      min: finite,
      warmupSteps: count,
      totalSteps: z.number().int().min(1),
    }),
    clipNorm: finite.positive(),
    adamw: z.strictObject({
      beta1: finite,
      beta2: finite,
      epsilon: finite.positive(),
      weightDecay: finite.min(0),
    }),
  }),
  sampler: z.strictObject({ seed: count, draws: count }),
  kernels: z.strictObject({ experts: z.string(), trunk: z.string() }),
});

/** What `restoreTrainingState` reads, checked and ready to apply. */
export interface ParsedTrainingState {
  readonly meta: TrainingMeta;
  readonly modelConfig: ModelConfig;
  readonly model: SafetensorsFile;
  readonly optimizer: SafetensorsFile;
}

function momentName(tensor: string, part: "m" | "v"): string {
  return `${tensor}.${part}`;
}

function trunkMomentName(param: string, part: "m" | "v"): string {
  return `trunk.${param}.${part}`;
}

function f32(buf: Float32Array | Float64Array, what: string): Float32Array {
  invariant(buf instanceof Float32Array, () => `${what}: training checkpoints are float32`);
  return Float32Array.from(buf);
}

/**
 * The shards of the trainer's state between two steps. `meta` is what the caller knows about the
 * run (recipe, sampler position, run id, kernels); the step comes from the trainer.
 */
export async function captureTrainingState(
  trainer: Trainer,
  meta: Omit<TrainingMeta, "format" | "step">,
): Promise<TrainingShard[]> {
  const { model } = trainer;
  const host = model.host;
  if (host.exportTrainingState === undefined)
    throw new TrainingStateError(
      "this expert host cannot export its experts' training state (exportTrainingState); " +
        "training checkpoints need a host that implements it",
    );
  const ids = model.expertIds();
  const experts = await host.exportTrainingState(ids);
  invariant(experts.length === ids.length, "host exported every expert asked for");
  const weights: NamedTensor[] = [];
  const moments: NamedTensor[] = [];
  const trunkStates = trainer.optimizer.exportState();
  let i = 0;
  for (const [name, p] of model.params) {
    const s = trunkStates[i++] as AdamWState;
    weights.push({ name, shape: p.shape, data: f32(p.data, name) });
    moments.push({ name: trunkMomentName(name, "m"), shape: p.shape, data: f32(s.m, name) });
    moments.push({ name: trunkMomentName(name, "v"), shape: p.shape, data: f32(s.v, name) });
  }
  invariant(i === trunkStates.length, "one AdamW state per trunk parameter");
  const d = model.config.dModel;
  for (const e of experts) {
    const h = expertHiddenOf(model.config, e.id);
    for (const part of expertTensorNames) {
      const t = e.tensors[part];
      invariant(t !== undefined, () => `${expertKey(e.id)} exported ${part}`);
      const name = expertTensorName(e.id.layer, e.id.expert, part);
      const shape = expertTensorShape(part, d, h);
      weights.push({ name, shape, data: t.weights });
      moments.push({ name: momentName(name, "m"), shape, data: t.m });
      moments.push({ name: momentName(name, "v"), shape, data: t.v });
    }
  }
  const full: TrainingMeta = { ...meta, format: trainingStateFormat, step: trainer.step };
  return [
    {
      name: modelShardName,
      bytes: encodeSafetensors(weights, {
        format: checkpointFormat,
        model_config: JSON.stringify(model.config),
        steps: String(trainer.step),
      }),
    },
    {
      name: optimizerShardName,
      bytes: encodeSafetensors(moments, {
        format: trainingStateFormat,
        step: String(trainer.step),
      }),
    },
    {
      name: trainingShardName,
      bytes: new TextEncoder().encode(`${JSON.stringify(full, null, 1)}\n`),
    },
  ];
}

function shardOf(shards: readonly TrainingShard[], name: string, source: string): Uint8Array {
  const s = shards.find((x) => x.name === name);
  if (s === undefined)
    throw new TrainingStateError(
      `${source}: shard ${name} is missing (a training checkpoint has ${modelShardName}, ${optimizerShardName} and ${trainingShardName})`,
    );
  return s.bytes;
}

function decodeShard(bytes: Uint8Array, source: string): SafetensorsFile {
  try {
    return decodeSafetensors(bytes, source);
  } catch (err) {
    if (err instanceof SafetensorsError) throw new TrainingStateError(err.message);
    throw err;
  }
}

/** Reads the metadata shard alone (e.g. to learn a checkpoint's recipe before building a model). */
export function parseTrainingMeta(bytes: Uint8Array, source: string): TrainingMeta {
  const where = `${source}/${trainingShardName}`;
  if (bytes.length > trainingJsonBytesMax)
    throw new TrainingStateError(`${where}: ${bytes.length} bytes exceeds ${trainingJsonBytesMax}`);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw new TrainingStateError(`${where} is not UTF-8 JSON: ${(err as Error).message}`);
  }
  const parsed = metaSchema.safeParse(json);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new TrainingStateError(
      `${where} is malformed at ${first?.path.join(".") || "(top)"}: ${first?.message}`,
    );
  }
  const meta = parsed.data;
  // The sampler draws one 32-bit value per sequence: B per step since the run began.
  const expected = meta.step * meta.recipe.batch;
  if (meta.sampler.draws !== expected || meta.sampler.draws > samplerDrawsMax)
    throw new TrainingStateError(
      `${where}: sampler.draws is ${meta.sampler.draws}, expected step × batch = ${expected} (at most ${samplerDrawsMax})`,
    );
  return meta;
}

/** Decodes and checks the shards of a training checkpoint (nothing is applied). */
export function parseTrainingState(
  shards: readonly TrainingShard[],
  source: string,
): ParsedTrainingState {
  const meta = parseTrainingMeta(shardOf(shards, trainingShardName, source), source);
  const model = decodeShard(shardOf(shards, modelShardName, source), `${source}/${modelShardName}`);
  const optimizer = decodeShard(
    shardOf(shards, optimizerShardName, source),
    `${source}/${optimizerShardName}`,
  );
  let modelConfig: ModelConfig;
  try {
    modelConfig = parseStoredConfig(model.metadata, `${source}/${modelShardName}`);
  } catch (err) {
    throw new TrainingStateError((err as Error).message);
  }
  if (optimizer.metadata.format !== trainingStateFormat)
    throw new TrainingStateError(
      `${source}/${optimizerShardName}: metadata.format is ${JSON.stringify(optimizer.metadata.format)}, expected "${trainingStateFormat}"`,
    );
  for (const [what, file] of [
    [modelShardName, model.metadata.steps],
    [optimizerShardName, optimizer.metadata.step],
  ] as const) {
    if (file !== String(meta.step))
      throw new TrainingStateError(
        `${source}: ${what} is from step ${file} but ${trainingShardName} says step ${meta.step}; the shards do not belong together`,
      );
  }
  return { meta, modelConfig, model, optimizer };
}

/** The first field where `stored` and `wanted` differ, prefixed `label`, or undefined. */
export function recipeDifference(
  stored: TrainingRecipe,
  wanted: TrainingRecipe,
): string | undefined {
  return firstDifference(stored, wanted, "recipe");
}

function tensorOf(
  file: SafetensorsFile,
  name: string,
  shape: readonly number[],
  source: string,
): Float32Array {
  const t = file.tensors.get(name);
  if (t === undefined) throw new TrainingStateError(`${source}: tensor ${name} is missing`);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
    throw new TrainingStateError(
      `${source}: tensor ${name} has shape [${t.shape}], expected [${shape}]`,
    );
  return t.data;
}

function checkNoExtra(file: SafetensorsFile, expected: number, source: string, known: Set<string>) {
  if (file.tensors.size === expected) return;
  const extra = [...file.tensors.keys()].filter((n) => !known.has(n));
  throw new TrainingStateError(`${source}: unexpected tensors ${extra.slice(0, 5).join(", ")}`);
}

/**
 * Puts a parsed checkpoint into `trainer` (built from the same model config). With `recipe`, the
 * checkpoint's recipe must equal it. Throws TrainingStateError (naming the field, file or tensor)
 * before changing anything; on success the trainer's next step is the checkpoint's step + 1.
 */
export async function applyTrainingState(
  state: ParsedTrainingState,
  trainer: Trainer,
  source: string,
  recipe?: TrainingRecipe,
): Promise<void> {
  const { model } = trainer;
  const configDiff = firstDifference(state.modelConfig, model.config, "model_config");
  if (configDiff !== undefined)
    throw new TrainingStateError(
      `${source} was trained with a different model config (${configDiff}); resume with the config it was trained with`,
    );
  if (recipe !== undefined) {
    const diff = recipeDifference(state.meta.recipe, recipe);
    if (diff !== undefined)
      throw new TrainingStateError(
        `${source} was trained with a different recipe (${diff}); a resumed run must keep its recipe to continue the same loss curve`,
      );
  }
  const hyperDiff = firstDifference(
    state.meta.recipe.adamw,
    trainer.optimizer.hyper,
    "recipe.adamw",
  );
  if (hyperDiff !== undefined)
    throw new TrainingStateError(
      `${source}: trainer's AdamW differs from the checkpoint's (${hyperDiff})`,
    );
  const host = model.host;
  if (host.importTrainingState === undefined)
    throw new TrainingStateError(
      "this expert host cannot import training state (importTrainingState); resume on a host that implements it",
    );
  const modelSrc = `${source}/${modelShardName}`;
  const optSrc = `${source}/${optimizerShardName}`;
  // 1. Check every tensor and collect the values; nothing is written yet.
  const trunk: { data: Float32Array; m: Float32Array; v: Float32Array }[] = [];
  const knownModel = new Set<string>();
  const knownOpt = new Set<string>();
  for (const [name, p] of model.params) {
    knownModel.add(name);
    knownOpt.add(trunkMomentName(name, "m"));
    knownOpt.add(trunkMomentName(name, "v"));
    trunk.push({
      data: tensorOf(state.model, name, p.shape, modelSrc),
      m: tensorOf(state.optimizer, trunkMomentName(name, "m"), p.shape, optSrc),
      v: tensorOf(state.optimizer, trunkMomentName(name, "v"), p.shape, optSrc),
    });
  }
  const ids: ExpertId[] = model.expertIds();
  const experts: ExpertTrainingState[] = ids.map((id) => {
    const h = expertHiddenOf(model.config, id);
    const tensors: Record<string, { weights: Float32Array; m: Float32Array; v: Float32Array }> = {};
    for (const part of expertTensorNames) {
      const name = expertTensorName(id.layer, id.expert, part);
      const shape = expertTensorShape(part, model.config.dModel, h);
      knownModel.add(name);
      knownOpt.add(momentName(name, "m"));
      knownOpt.add(momentName(name, "v"));
      tensors[part] = {
        weights: tensorOf(state.model, name, shape, modelSrc),
        m: tensorOf(state.optimizer, momentName(name, "m"), shape, optSrc),
        v: tensorOf(state.optimizer, momentName(name, "v"), shape, optSrc),
      };
    }
    return { id, tensors };
  });
  checkNoExtra(state.model, knownModel.size, modelSrc, knownModel);
  checkNoExtra(state.optimizer, knownOpt.size, optSrc, knownOpt);
  for (const [name, p] of model.params)
    invariant(
      p.grad === null || p.grad.every((g) => g === 0),
      () => `${name}: no pending gradient`,
    );
  // 2. The host's import is all-or-nothing and may fail (a remote host); the trunk cannot fail now.
  await host.importTrainingState(experts);
  trainer.optimizer.importState(trunk.map((t) => ({ m: t.m, v: t.v })));
  let i = 0;
  for (const p of model.params.values()) p.data.set((trunk[i++] as (typeof trunk)[number]).data);
  trainer.step = state.meta.step;
  model.clearRoutingCaches();
}

/** `parseTrainingState` then `applyTrainingState`: the whole resume of one checkpoint's shards. */
export async function restoreTrainingState(
  shards: readonly TrainingShard[],
  trainer: Trainer,
  source: string,
  recipe?: TrainingRecipe,
): Promise<TrainingMeta> {
  const state = parseTrainingState(shards, source);
  await applyTrainingState(state, trainer, source, recipe);
  return state.meta;
}
