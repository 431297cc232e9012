import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  parseBitRate,
  parseByteSize,
  parseCpuQuantity,
  parseDuration,
  parseFrequency,
  parseRatePerTime,
  parseThreshold,
  thresholdHolds,
} from "../../src/config/units.ts";

describe("units", () => {
  it("parses durations into seconds", () => {
    assert.equal(parseDuration("24h")?.seconds, 86400);
    assert.equal(parseDuration("5m")?.seconds, 300);
    assert.equal(parseDuration("7d")?.seconds, 604800);
    assert.equal(parseDuration("50ms")?.seconds, 0.05);
    assert.equal(parseDuration("10ns")?.seconds, 1e-8);
    assert.equal(parseDuration("unlimited")?.seconds, Number.POSITIVE_INFINITY);
    for (const bad of ["24", "24 hours", "h", "-5m", "5 m s", ""])
      assert.equal(parseDuration(bad), undefined, bad);
  });

  it("parses checkpoint cadences", () => {
    assert.deepEqual(parseFrequency("every_1000_steps"), {
      kind: "steps",
      steps: 1000,
      text: "every_1000_steps",
    });
    assert.deepEqual(parseFrequency("30m"), { kind: "time", seconds: 1800, text: "30m" });
    for (const bad of ["every_0_steps", "every_x_steps", "unlimited", "0s"])
      assert.equal(parseFrequency(bad), undefined, bad);
  });

  it("parses sizes with SI and IEC prefixes", () => {
    assert.equal(parseByteSize("4MB")?.bytes, 4_000_000);
    assert.equal(parseByteSize("4MiB")?.bytes, 4 * 1024 * 1024);
    assert.equal(parseByteSize("4Gi")?.bytes, 4 * 1024 ** 3);
    assert.equal(parseByteSize("512")?.bytes, 512);
    for (const bad of ["4 megs", "MB", "0.5B", "-1MB"])
      assert.equal(parseByteSize(bad), undefined, bad);
  });

  it("parses rates and thresholds", () => {
    assert.equal(parseBitRate("10Mbps")?.bitsPerSecond, 10_000_000);
    assert.equal(parseBitRate("10MB/s"), undefined);
    assert.deepEqual(parseRatePerTime("10%/h"), { ratio: 0.1, perSeconds: 3600, text: "10%/h" });
    assert.deepEqual(parseThreshold("< 10%"), {
      op: "<",
      value: 0.1,
      unit: "ratio",
      text: "< 10%",
    });
    assert.deepEqual(parseThreshold("< 10ms"), {
      op: "<",
      value: 0.01,
      unit: "seconds",
      text: "< 10ms",
    });
    assert.deepEqual(parseThreshold("> 0.001"), {
      op: ">",
      value: 0.001,
      unit: "number",
      text: "> 0.001",
    });
    assert.equal(parseThreshold("about 10%"), undefined);
    assert.equal(parseCpuQuantity("2000m"), 2);
    assert.equal(parseCpuQuantity("1.5"), 1.5);
  });

  it("evaluates thresholds", () => {
    const t = parseThreshold("< 10%");
    assert.ok(t);
    assert.equal(thresholdHolds(t, 0.05), true);
    assert.equal(thresholdHolds(t, 0.1), false);
    const g = parseThreshold(">= 2");
    assert.ok(g);
    assert.equal(thresholdHolds(g, 2), true);
  });
});
