// The swarm commands' usage errors: each names the flag and what to change, exit code 2, and
// nothing is started.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { main } from "../../src/cli/main.ts";

async function run(...args: string[]): Promise<{ code: number; err: string }> {
  let err = "";
  const code = await main(["node", "moe-swarm", ...args], {
    out: () => {},
    err: (t) => (err += t),
  });
  return { code, err };
}

describe("moe-swarm up / node / gateway usage errors", () => {
  it("name the flag and the expected value", async () => {
    const cases: [string[], RegExp][] = [
      [["node", "--region", "XYZ"], /--region: expected one of ORD, IAD, SJC, AMS, SYD; got "XYZ"/],
      [
        ["node", "--region", "ORD", "--index", "3"],
        /--index: expected 0\.\.0 \(swarm\.nodes_per_region = 1\)/,
      ],
      [["node", "--region", "ORD", "--backend", "cuda"], /--backend: expected js, onnx or auto/],
      [["node", "--region", "ORD", "--port", "70000"], /--port: expected an integer 0\.\.65535/],
      [
        ["node", "--region", "ORD", "--metrics-port", "x"],
        /--metrics-port: expected an integer 0\.\.65535/,
      ],
      [["node", "--region", "ORD", "--otlp", "ftp://x"], /--otlp: expected an http\(s\) URL/],
      [
        ["gateway", "--placement", "/nonexistent/placement.json"],
        /placement file \/nonexistent\/placement\.json/,
      ],
      [
        ["up", "--untrained", "--regions", "ORD,IAD"],
        /entanglement_pairs \(3\) needs at least that many regions; got 2/,
      ],
      [
        ["up", "--untrained", "--regions", "ORD,ord"],
        /--regions: expected distinct three-letter codes/,
      ],
      [["up", "--model", "/nonexistent/model.safetensors"], /--model: no file at/],
      [["gateway"], /exactly one of --placement <file> \(static\) or --registry/],
      [
        ["gateway", "--placement", "p.json", "--registry", "127.0.0.1:1"],
        /exactly one of --placement <file> \(static\) or --registry/,
      ],
      [["gateway", "--registry", "127.0.0.1:1,127.0.0.1:2"], /--registry: expected 5 endpoints/],
      [
        ["gateway", "--registry", "a:1,b:2,c:3,d:4,e:99999"],
        /--registry: expected 5 endpoints host:port/,
      ],
      [
        ["up", "--untrained", "--coordinator-port-base", "80"],
        /--coordinator-port-base: expected an integer 1024\.\.65520/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = await run(...args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.err}`);
      assert.match(r.err, message, args.join(" "));
    }
  });
});
