// Microphone capture: cuts the input into 20 ms frames of S16LE mono at the context's rate and
// posts each one (with its peak level, for the meter) to the page, which sends it to the server.
class MicCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate * 0.02);
    this.frame = new Int16Array(this.size);
    this.filled = 0;
    this.peak = 0;
  }

  process(inputs) {
    const channel = inputs[0][0];  // absent until the microphone delivers audio
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const sample = Math.max(-1, Math.min(1, channel[i]));
      this.peak = Math.max(this.peak, Math.abs(sample));
      this.frame[this.filled++] = sample < 0 ? sample * 0x8000 : sample * 0x7fff;
      if (this.filled === this.size) {
        const pcm = this.frame.buffer;
        this.port.postMessage({ pcm, peak: this.peak }, [pcm]);  // transferred (detached here), not copied
        this.frame = new Int16Array(this.size);
        this.filled = 0;
        this.peak = 0;
      }
    }
    return true;
  }
}

registerProcessor("mic-capture", MicCapture);
