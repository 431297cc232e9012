import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SampleRing } from "../../src/common/sample-ring.ts";

describe("SampleRing", () => {
  it("keeps the last `capacity` samples, oldest first", () => {
    const r = new SampleRing(3);
    assert.deepEqual(r.values(), []);
    r.push(1);
    r.push(2);
    assert.deepEqual(r.values(), [1, 2]);
    r.push(3);
    r.push(4);
    r.push(5);
    assert.deepEqual(r.values(), [3, 4, 5]);
    assert.equal(r.count, 3);
  });

  it("refuses a capacity that is not a positive integer", () => {
    assert.throws(() => new SampleRing(0), /capacity/);
    assert.throws(() => new SampleRing(1.5), /capacity/);
  });
});
