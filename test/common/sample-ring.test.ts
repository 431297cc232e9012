import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SampleRing } from "../../src/common/sample-ring.ts";

describe("SampleRing", () => {
  it("keeps the last `capacity` samples", () => {
    const r = new SampleRing(3);
    assert.deepEqual([...r.sorted()], []);
    r.push(2);
    r.push(1);
    assert.deepEqual([...r.sorted()], [1, 2]);
    r.push(5);
    r.push(4);
    r.push(3);
    assert.deepEqual([...r.sorted()], [3, 4, 5]);
    assert.equal(r.count, 3);
  });

  it("refuses a capacity that is not a positive integer", () => {
    assert.throws(() => new SampleRing(0), /capacity/);
    assert.throws(() => new SampleRing(1.5), /capacity/);
  });
});
