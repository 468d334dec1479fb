// Streamed playback with a queue the page can clear at once (barge-in): chunks of Float32 samples
// at the context's rate are played in order; "clear" drops everything not yet played, so the
// assistant stops within one render quantum (about 3 ms) instead of when its buffered audio ends.
class StreamPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];      // Float32Array chunks not yet (fully) played
    this.offset = 0;      // read position in queue[0]
    this.played = 0;      // samples actually played since the node was created
    this.reported = 0;
    this.port.onmessage = ({ data }) => {
      if (data.type === "push") this.queue.push(data.samples);
      else if (data.type === "clear") {
        this.queue = [];
        this.offset = 0;
        this.report();
      }
    };
  }

  queuedSamples() {
    return this.queue.reduce((sum, chunk) => sum + chunk.length, 0) - this.offset;
  }

  report() {
    this.reported = this.played;
    this.port.postMessage({ played: this.played / sampleRate, queued: this.queuedSamples() / sampleRate });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    let written = 0;
    while (written < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const count = Math.min(out.length - written, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + count), written);
      written += count;
      this.offset += count;
      if (this.offset === chunk.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    out.fill(0, written);  // underrun or idle: silence
    this.played += written;
    // Tell the page about every ~50 ms of progress, and when the queue runs dry.
    const drained = written > 0 && !this.queue.length;
    if (this.played - this.reported >= sampleRate * 0.05 || drained) this.report();
    return true;
  }
}

registerProcessor("stream-player", StreamPlayer);
