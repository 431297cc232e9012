// Reads the YAML config, lays it over the embedded defaults of its profile, validates it, and turns
// every schema failure into a message that names the key, what was expected and what was found:
//
//   expert_topology.hierarchical_layers[1].activation: expected one of parallel, selective,
//   sequential; got "sideways" (swarm.yaml line 14)
//
// Unknown keys are errors with a "did you mean" hint drawn from the keys the schema knows there.

import { readFileSync } from "node:fs";
import {
  isMap,
  isPair,
  isScalar,
  isSeq,
  LineCounter,
  type Node,
  parseDocument,
  stringify,
} from "yaml";
import type { z } from "zod";
import { profileDefaults, type RawConfig } from "./defaults.ts";
import { type Profile, profiles, type SwarmConfig, swarmConfigChecked } from "./schema.ts";

export type ConfigPath = readonly (string | number)[];

export interface ConfigProblem {
  /** Dotted key path, e.g. `expert_topology.hierarchical_layers[1].activation`. */
  readonly key: string;
  readonly message: string;
  /** 1-based line in the file, when the key is in the file (not a default). */
  readonly line?: number;
}

export class ConfigError extends Error {
  readonly problems: readonly ConfigProblem[];
  readonly source: string;

  constructor(source: string, problems: readonly ConfigProblem[]) {
    const lines = problems.map((p) => {
      const where = p.line === undefined ? "" : ` (${source} line ${p.line})`;
      return p.key === "" ? `${p.message}${where}` : `${p.key}: ${p.message}${where}`;
    });
    super(
      lines.length === 1
        ? (lines[0] as string)
        : `${lines.length} problems in ${source}:\n  ${lines.join("\n  ")}`,
    );
    this.name = "ConfigError";
    this.problems = problems;
    this.source = source;
  }
}

export function formatPath(path: ConfigPath): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else out += out === "" ? segment : `.${segment}`;
  }
  return out;
}

function isPlainObject(value: unknown): value is RawConfig {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Lays `over` on `base`: objects merge key by key, arrays and scalars replace. Inputs are not mutated. */
export function mergeRaw(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over === undefined ? base : over;
  const out: RawConfig = { ...base };
  for (const [key, value] of Object.entries(over)) out[key] = mergeRaw(base[key], value);
  return out;
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing (the key is missing)";
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string") return JSON.stringify(value);
  return `${typeof value} ${String(value)}`;
}

// ---- "did you mean" --------------------------------------------------------------------------

type AnySchema = z.core.$ZodType;

/** The schemas that apply at `path`, looking through wrappers, arrays, records and unions. */
function schemasAt(schema: AnySchema, path: ConfigPath): AnySchema[] {
  const def = schema._zod.def as unknown as Record<string, unknown> & { type: string };
  switch (def.type) {
    case "optional":
    case "default":
    case "prefault":
    case "nullable":
    case "readonly":
      return schemasAt(def.innerType as AnySchema, path);
    case "pipe":
      return schemasAt(def.in as AnySchema, path);
    case "union":
      return (def.options as AnySchema[]).flatMap((o) => schemasAt(o, path));
    default:
      break;
  }
  if (path.length === 0) return [schema];
  if (def.type === "array") return schemasAt(def.element as AnySchema, path.slice(1));
  if (def.type === "record") return schemasAt(def.valueType as AnySchema, path.slice(1));
  if (def.type === "object") {
    const child = (def.shape as Record<string, AnySchema>)[String(path[0])];
    return child ? schemasAt(child, path.slice(1)) : [];
  }
  return [];
}

/** The object keys the schema accepts at `path`. */
function knownKeysAt(schema: AnySchema, path: ConfigPath): string[] {
  const keys = schemasAt(schema, path).flatMap((s) => {
    const def = s._zod.def as unknown as { type: string; shape?: Record<string, unknown> };
    return def.type === "object" && def.shape ? Object.keys(def.shape) : [];
  });
  return [...new Set(keys)];
}

/** The literal values the schema accepts at `path` (e.g. a union's discriminator). */
function knownValuesAt(schema: AnySchema, path: ConfigPath): string[] {
  return schemasAt(schema, path).flatMap((s) => {
    const def = s._zod.def as unknown as {
      type: string;
      values?: unknown[];
      entries?: Record<string, unknown>;
    };
    if (def.type === "literal" && def.values) return def.values.map(String);
    if (def.type === "enum" && def.entries) return Object.values(def.entries).map(String);
    return [];
  });
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0] as number;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j] as number;
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min(above + 1, (row[j - 1] as number) + 1, diagonal + cost);
      diagonal = above;
    }
  }
  return row[b.length] as number;
}

export function didYouMean(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(key.length / 3)) + 1;
  for (const candidate of known) {
    const d = editDistance(key.toLowerCase(), candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

// ---- issue → problem -------------------------------------------------------------------------

function issueMessage(issue: z.core.$ZodIssue): string {
  const input = (issue as { input?: unknown }).input;
  switch (issue.code) {
    case "invalid_type":
      return `expected ${issue.expected === "object" ? "a mapping" : issue.expected === "array" ? "a list" : issue.expected}; got ${describe(input)}`;
    case "invalid_value":
      return issue.values.length === 1
        ? `expected ${JSON.stringify(issue.values[0])}; got ${describe(input)}`
        : `expected one of ${issue.values.map(String).join(", ")}; got ${describe(input)}`;
    case "too_small":
    case "too_big": {
      const bound = issue.code === "too_small" ? issue.minimum : issue.maximum;
      const inclusive = issue.inclusive !== false;
      if (issue.origin === "array") {
        const word = issue.code === "too_small" ? "at least" : "at most";
        return `expected ${word} ${bound} item(s); got ${Array.isArray(input) ? input.length : describe(input)}`;
      }
      if (issue.origin === "string") return `expected a non-empty string; got ${describe(input)}`;
      const op = issue.code === "too_small" ? (inclusive ? "≥" : ">") : inclusive ? "≤" : "<";
      return `expected a number ${op} ${String(bound)}; got ${describe(input)}`;
    }
    case "invalid_format":
      return issue.message.startsWith("expected") || issue.message.startsWith("Invalid")
        ? `expected ${issue.format === "regex" ? "a matching string" : `a valid ${issue.format}`}; got ${describe(input)}`
        : `expected ${issue.message}; got ${describe(input)}`;
    case "not_multiple_of":
      return `expected a multiple of ${String(issue.divisor)}; got ${describe(input)}`;
    case "invalid_union":
      return `expected one of the allowed shapes; got ${describe(input)}`;
    case "custom":
      return issue.message.startsWith("expected")
        ? issue.message
        : `${issue.message}; got ${describe(input)}`;
    default:
      return issue.message;
  }
}

/** Finds the 1-based line of `path` in the YAML document (the key itself for mappings). */
function lineOf(
  doc: ReturnType<typeof parseDocument>,
  counter: LineCounter,
  path: ConfigPath,
): number | undefined {
  let node: unknown = doc.contents;
  let offset: number | undefined;
  for (const segment of path) {
    if (isMap(node)) {
      const pair = node.items.find(
        (p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(segment),
      );
      if (!pair) return offset === undefined ? undefined : counter.linePos(offset).line;
      offset = (pair.key as Node).range?.[0];
      node = pair.value;
    } else if (isSeq(node) && typeof segment === "number") {
      const item = node.items[segment] as Node | undefined;
      if (!item) return offset === undefined ? undefined : counter.linePos(offset).line;
      offset = item.range?.[0];
      node = item;
    } else {
      break;
    }
  }
  return offset === undefined ? undefined : counter.linePos(offset).line;
}

export interface LoadedConfig {
  readonly config: SwarmConfig;
  /** The merged raw form (file over defaults), before unit parsing. */
  readonly raw: RawConfig;
}

/**
 * Validates raw config text (YAML). `source` names the file in messages. An empty text gives the
 * `local` profile's defaults.
 */
export function parseConfigText(text: string, source = "config"): LoadedConfig {
  const counter = new LineCounter();
  const doc = parseDocument(text, { lineCounter: counter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => ({
        key: "",
        message: `invalid YAML: ${e.message.split("\n")[0]}`,
        line: e.linePos?.[0]?.line,
      })),
    );
  }
  const user = (doc.toJS() ?? {}) as unknown;
  if (!isPlainObject(user)) {
    throw new ConfigError(source, [
      { key: "", message: `expected a mapping at the top level; got ${describe(user)}` },
    ]);
  }
  return resolveConfig(user, source, (path) => lineOf(doc, counter, path));
}

/** Validates an already-parsed raw object laid over its profile's defaults. */
export function resolveConfig(
  user: RawConfig,
  source = "config",
  locate: (path: ConfigPath) => number | undefined = () => undefined,
): LoadedConfig {
  const profile = user.profile ?? "local";
  if (typeof profile !== "string" || !(profiles as readonly string[]).includes(profile)) {
    throw new ConfigError(source, [
      {
        key: "profile",
        message: `expected one of ${profiles.join(", ")}; got ${describe(profile)}`,
        line: locate(["profile"]),
      },
    ]);
  }
  const raw = mergeRaw(profileDefaults(profile as Profile), user) as RawConfig;
  const result = swarmConfigChecked.safeParse(raw, { reportInput: true });
  if (result.success) return { config: result.data, raw };

  const problems: ConfigProblem[] = [];
  for (const issue of result.error.issues) {
    const path = issue.path as (string | number)[];
    if (issue.code === "unrecognized_keys") {
      const known = knownKeysAt(swarmConfigChecked, path);
      for (const key of issue.keys) {
        const hint = didYouMean(key, known);
        problems.push({
          key: formatPath([...path, key]),
          message: hint
            ? `unknown key; did you mean "${hint}"?`
            : `unknown key; expected one of ${known.join(", ")}`,
          line: locate([...path, key]),
        });
      }
      continue;
    }
    const discriminator = (issue as { discriminator?: string }).discriminator;
    if (issue.code === "invalid_union" && discriminator !== undefined) {
      // A discriminated union whose tag matched no option: name the tag's allowed values.
      const input = (issue as { input?: unknown }).input;
      const tagPath = path[path.length - 1] === discriminator ? path : [...path, discriminator];
      const found = isPlainObject(input) ? input[discriminator] : undefined;
      const allowed = knownValuesAt(swarmConfigChecked, tagPath);
      problems.push({
        key: formatPath(tagPath),
        message: `expected one of ${allowed.join(", ")}; got ${describe(found)}`,
        line: locate(tagPath),
      });
      continue;
    }
    problems.push({ key: formatPath(path), message: issueMessage(issue), line: locate(path) });
  }
  throw new ConfigError(source, problems);
}

export function loadConfigFile(path: string): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const reason =
      (err as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (err as Error).message;
    throw new ConfigError(path, [
      { key: "", message: `cannot read config file ${path}: ${reason}` },
    ]);
  }
  return parseConfigText(text, path);
}

/** The config from `path`, or the `local` defaults when no path is given. */
export function loadConfig(path?: string): LoadedConfig {
  return path === undefined ? resolveConfig({}, "defaults") : loadConfigFile(path);
}

/**
 * The resolved config as YAML, unit values in the spelling they were given ("24h", not 86400), so
 * that the output validates again to the same config.
 */
export function renderConfig(config: SwarmConfig): string {
  const plain = JSON.parse(
    JSON.stringify(config, (_key, value: unknown) =>
      isPlainObject(value) && typeof value.text === "string" ? value.text : value,
    ),
  ) as unknown;
  return stringify(plain, { lineWidth: 0 });
}
