// Splits a TCP byte stream into frame bodies (u32 length prefix, see frame.ts) and writes frames
// through the emulated link of the peer's region. The length is checked against frameBytesMax
// before anything is buffered, so a peer cannot make us hold more than one maximal frame; a bad
// length is fatal for the connection (the stream cannot be resynchronised) but never for the
// process.

import type { Socket } from "node:net";
import { frameBytesMax, frameHeaderBytes } from "./constants.ts";
import { FrameDecodeError, WireErrorCode } from "./errors.ts";
import type { LinkShaper } from "./region-links.ts";

export class FrameReader {
  #chunks: Buffer[] = [];
  #buffered = 0;

  /** Feeds bytes; returns the complete frame bodies. Throws FrameDecodeError on a bad length. */
  push(chunk: Buffer): Buffer[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const bodies: Buffer[] = [];
    for (;;) {
      if (this.#buffered < 4) break;
      const head = this.#peek(4);
      const length = head.readUInt32LE(0);
      if (length > frameBytesMax)
        throw new FrameDecodeError(
          WireErrorCode.frameTooLarge,
          `frame of ${length} bytes exceeds frameBytesMax (${frameBytesMax})`,
          0,
        );
      if (length < frameHeaderBytes)
        throw new FrameDecodeError(
          WireErrorCode.malformedFrame,
          `frame length ${length} is shorter than the ${frameHeaderBytes}-byte header`,
          0,
        );
      if (this.#buffered < 4 + length) break;
      const all = this.#take(4 + length);
      bodies.push(all.subarray(4));
    }
    return bodies;
  }

  get buffered(): number {
    return this.#buffered;
  }

  #peek(n: number): Buffer {
    const first = this.#chunks[0] as Buffer;
    if (first.length >= n) return first;
    return Buffer.concat(this.#chunks).subarray(0, n);
  }

  #take(n: number): Buffer {
    const joined =
      this.#chunks.length === 1 ? (this.#chunks[0] as Buffer) : Buffer.concat(this.#chunks);
    const out = joined.subarray(0, n);
    const rest = joined.subarray(n);
    this.#chunks = rest.length > 0 ? [rest] : [];
    this.#buffered = rest.length;
    return out;
  }
}

/** Writes encoded frames to a socket, through a link shaper when the peer is in another region. */
export function shapedWrite(socket: Socket, shaper: LinkShaper | undefined, frame: Buffer): void {
  const write = () => {
    if (socket.destroyed || !socket.writable) return;
    // Frames written in the same tick (an MoE layer's calls to one node, a batch's replies) go
    // out in one syscall: cork now, uncork once on the next tick.
    if (socket.writableCorked === 0) {
      socket.cork();
      process.nextTick(() => socket.uncork());
    }
    socket.write(frame);
  };
  if (shaper) shaper.send(frame.length, write);
  else write();
}
