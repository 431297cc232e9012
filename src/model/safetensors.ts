// Reader and writer of the safetensors format (https://huggingface.co/docs/safetensors), so that
// our weights open in any tool that reads it (Python `safetensors`, candle, transformers):
//   8 bytes   little-endian u64 N, the header's length
//   N bytes   UTF-8 JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {k: v}}
//   rest      the tensors' bytes, little-endian, offsets relative to the end of the header
// Files are untrusted input: every length, offset, dtype and shape is checked before use, the
// data must be covered exactly once (no holes, no overlaps, as the reference implementation
// demands), and any violation is a SafetensorsError that says what is wrong. Only F32 is written
// or read (the model is float32).

/** A header larger than this is rejected before parsing (the reference caps it at 100 MB). */
export const headerBytesMax = 100_000_000;

export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SafetensorsError";
  }
}

export interface NamedTensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface SafetensorsFile {
  readonly tensors: ReadonlyMap<string, NamedTensor>;
  readonly metadata: Readonly<Record<string, string>>;
}

function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function encodeSafetensors(
  tensors: readonly NamedTensor[],
  metadata: Record<string, string> = {},
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  const seen = new Set<string>();
  for (const t of tensors) {
    if (seen.has(t.name) || t.name === "__metadata__")
      throw new SafetensorsError(`duplicate or reserved tensor name "${t.name}"`);
    seen.add(t.name);
    if (product(t.shape) !== t.data.length)
      throw new SafetensorsError(
        `tensor ${t.name}: shape [${t.shape}] does not hold ${t.data.length} values`,
      );
    const bytes = t.data.length * 4;
    header[t.name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  // Pad with spaces so the data starts 8-byte aligned (as the reference writer does).
  const raw = new TextEncoder().encode(json);
  const pad = (8 - ((8 + raw.length) % 8)) % 8;
  json += " ".repeat(pad);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.length;
  for (const t of tensors) {
    for (let i = 0; i < t.data.length; i++) dv.setFloat32(pos + i * 4, t.data[i] as number, true);
    pos += t.data.length * 4;
  }
  return out;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function decodeSafetensors(bytes: Uint8Array, source = "safetensors file"): SafetensorsFile {
  const fail = (why: string): never => {
    throw new SafetensorsError(`${source}: ${why}`);
  };
  if (bytes.length < 8)
    fail(`truncated: ${bytes.length} bytes, expected at least the 8-byte header length`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = dv.getBigUint64(0, true);
  if (n > BigInt(headerBytesMax))
    fail(`header length ${n} exceeds the ${headerBytesMax}-byte limit`);
  const headerLen = Number(n);
  if (8 + headerLen > bytes.length)
    fail(`truncated: header of ${headerLen} bytes but only ${bytes.length - 8} follow`);
  let header: unknown;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen)),
    );
  } catch (err) {
    fail(`header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (!isRecord(header)) return fail("header is not a JSON object");
  const dataStart = 8 + headerLen;
  const dataLen = bytes.length - dataStart;
  const metadata: Record<string, string> = {};
  const meta = header.__metadata__;
  if (meta !== undefined) {
    if (!isRecord(meta)) fail("__metadata__ is not an object of strings");
    for (const [k, v] of Object.entries(meta as Record<string, unknown>)) {
      if (typeof v !== "string") fail(`__metadata__.${k} is not a string`);
      metadata[k] = v as string;
    }
  }
  const spans: [number, number, string][] = [];
  const tensors = new Map<string, NamedTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (!isRecord(entry)) return fail(`tensor ${name}: entry is not an object`);
    if (entry.dtype !== "F32")
      fail(
        `tensor ${name}: dtype ${JSON.stringify(entry.dtype)} is not supported (expected "F32")`,
      );
    const shape = entry.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      fail(`tensor ${name}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    const offs = entry.data_offsets;
    if (
      !Array.isArray(offs) ||
      offs.length !== 2 ||
      !offs.every((o) => Number.isSafeInteger(o) && o >= 0)
    )
      fail(`tensor ${name}: data_offsets ${JSON.stringify(offs)} is not [begin, end]`);
    const [begin, end] = offs as [number, number];
    const count = product(shape as number[]);
    if (end < begin || end - begin !== count * 4)
      fail(
        `tensor ${name}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, shape [${shape}] needs ${count * 4}`,
      );
    if (end > dataLen)
      fail(`truncated: tensor ${name} ends at byte ${end} of the data, which has ${dataLen}`);
    spans.push([begin, end, name]);
    const data = new Float32Array(count);
    for (let i = 0; i < count; i++) data[i] = dv.getFloat32(dataStart + begin + i * 4, true);
    tensors.set(name, { name, shape: shape as number[], data });
  }
  spans.sort((a, b) => a[0] - b[0]);
  let covered = 0;
  for (const [begin, end, name] of spans) {
    if (begin !== covered)
      fail(
        `tensor ${name} starts at ${begin}; expected ${covered} (holes or overlaps in the data)`,
      );
    covered = end;
  }
  if (covered !== dataLen) fail(`${dataLen - covered} trailing bytes after the last tensor`);
  return { tensors, metadata };
}
