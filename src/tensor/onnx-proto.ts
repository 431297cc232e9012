// A minimal writer of ONNX ModelProto bytes (protocol buffers wire format), enough to build the
// small fixed graphs we hand to onnxruntime: nodes with int/float/string attributes, typed graph
// inputs/outputs with symbolic dimensions, and int64/float initializers. Field numbers follow
// onnx/onnx.proto3 (https://github.com/onnx/onnx/blob/main/onnx/onnx.proto3); wire format per
// https://protobuf.dev/programming-guides/encoding/. A protobuf library would need the .proto
// schema compiled in as well; ~120 lines of encoder are smaller than that dependency.

import { invariant } from "../common/assert.ts";

class Writer {
  readonly #parts: number[] = [];

  varint(value: number | bigint): this {
    let v = BigInt.asUintN(64, BigInt(value));
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) byte |= 0x80;
      this.#parts.push(byte);
    } while (v !== 0n);
    return this;
  }

  tag(field: number, wireType: 0 | 1 | 2 | 5): this {
    return this.varint((field << 3) | wireType);
  }

  int(field: number, value: number | bigint): this {
    return this.tag(field, 0).varint(value);
  }

  bytes(field: number, data: Uint8Array): this {
    this.tag(field, 2).varint(data.length);
    for (const b of data) this.#parts.push(b);
    return this;
  }

  string(field: number, text: string): this {
    return this.bytes(field, new TextEncoder().encode(text));
  }

  float(field: number, value: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.tag(field, 5);
    for (const x of b) this.#parts.push(x);
    return this;
  }

  message(field: number, build: (w: Writer) => void): this {
    const inner = new Writer();
    build(inner);
    return this.bytes(field, inner.finish());
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.#parts);
  }
}

export const onnxFloat = 1;
export const onnxInt64 = 7;

export type OnnxAttr =
  | { readonly kind: "int"; readonly value: number }
  | { readonly kind: "ints"; readonly value: readonly number[] }
  | { readonly kind: "float"; readonly value: number }
  | { readonly kind: "string"; readonly value: string };

export interface OnnxNode {
  readonly op: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attrs?: Readonly<Record<string, OnnxAttr>>;
  readonly domain?: string;
}

/** A graph input/output: element type and dims (a number, or a symbolic name like "T"). */
export interface OnnxValue {
  readonly name: string;
  readonly elemType: number;
  readonly dims: readonly (number | string)[];
}

export interface OnnxInitializer {
  readonly name: string;
  readonly elemType: typeof onnxFloat | typeof onnxInt64;
  readonly dims: readonly number[];
  readonly values: readonly number[];
}

export interface OnnxGraph {
  readonly name: string;
  readonly nodes: readonly OnnxNode[];
  readonly inputs: readonly OnnxValue[];
  readonly outputs: readonly OnnxValue[];
  readonly initializers?: readonly OnnxInitializer[];
  readonly opset: number;
}

/** IR version 9 pairs with opset 20 (ONNX 1.15), the first opset with a standard Gelu. */
const irVersion = 9;

function writeValue(w: Writer, v: OnnxValue): void {
  w.string(1, v.name);
  w.message(2, (type) =>
    type.message(1, (tensor) => {
      tensor.int(1, v.elemType);
      tensor.message(2, (shape) => {
        for (const d of v.dims) {
          shape.message(1, (dim) => {
            if (typeof d === "number") dim.int(1, d);
            else dim.string(2, d);
          });
        }
      });
    }),
  );
}

export function encodeOnnxModel(graph: OnnxGraph): Uint8Array {
  invariant(graph.nodes.length > 0, "ONNX graph without nodes");
  const w = new Writer();
  w.int(1, irVersion);
  w.string(2, "moe-swarm");
  w.message(7, (g) => {
    graph.nodes.forEach((n, i) => {
      g.message(1, (node) => {
        for (const x of n.inputs) node.string(1, x);
        for (const y of n.outputs) node.string(2, y);
        node.string(3, `${n.op}_${i}`);
        node.string(4, n.op);
        for (const [name, a] of Object.entries(n.attrs ?? {})) {
          node.message(5, (attr) => {
            attr.string(1, name);
            if (a.kind === "int") attr.int(3, a.value).int(20, 2);
            else if (a.kind === "ints") {
              for (const v of a.value) attr.int(8, v);
              attr.int(20, 7);
            } else if (a.kind === "float") attr.float(2, a.value).int(20, 1);
            else attr.string(4, a.value).int(20, 3);
          });
        }
        if (n.domain !== undefined) node.string(7, n.domain);
      });
    });
    g.string(2, graph.name);
    for (const init of graph.initializers ?? []) {
      g.message(5, (t) => {
        for (const d of init.dims) t.int(1, d);
        t.int(2, init.elemType);
        t.string(8, init.name);
        const raw = new Uint8Array(init.values.length * (init.elemType === onnxFloat ? 4 : 8));
        const dv = new DataView(raw.buffer);
        init.values.forEach((v, i) => {
          if (init.elemType === onnxFloat) dv.setFloat32(i * 4, v, true);
          else dv.setBigInt64(i * 8, BigInt(v), true);
        });
        t.bytes(9, raw);
      });
    }
    for (const v of graph.inputs) g.message(11, (x) => writeValue(x, v));
    for (const v of graph.outputs) g.message(12, (x) => writeValue(x, v));
  });
  w.message(8, (o) => o.string(1, "").int(2, graph.opset));
  return w.finish();
}
