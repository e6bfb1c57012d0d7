// WebAudio plumbing shared by both transports: one AudioContext, level meters, the
// gapless player for WebSocket-fallback audio, and int16 <-> base64 conversion.

// The server's media path runs at 48 kHz, so a 48 kHz context means no resampling on
// either side of the WebSocket fallback (20 ms = 960 samples).
export const SAMPLE_RATE = 48000;

export class AudioEngine {
  constructor() {
    this.context = null;
    this.workletLoaded = null;
  }

  /** Created lazily: browsers only let a context run after a user gesture (or by policy). */
  get ctx() {
    if (!this.context) {
      this.context = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: 'interactive' });
    }
    return this.context;
  }

  /** Resolves to true when audio is running; false when the autoplay policy holds it. */
  async resume() {
    const ctx = this.ctx;
    if (ctx.state !== 'running') {
      // resume() never settles while the autoplay policy blocks it, so do not wait for it.
      await Promise.race([ctx.resume().catch(() => {}), new Promise((r) => setTimeout(r, 300))]);
    }
    return ctx.state === 'running';
  }

  loadCaptureWorklet() {
    this.workletLoaded ??= this.ctx.audioWorklet.addModule(
      new URL('./pcm-capture-worklet.js', import.meta.url),
    );
    return this.workletLoaded;
  }
}

/** RMS level of whatever is connected to it, read on demand (no processing when unread). */
export class LevelMeter {
  constructor(ctx, source) {
    this.source = source;
    // An AnalyserNode is pulled by the graph even when it leads nowhere, so the meter
    // needs no connection to the speakers (and does not double the audio).
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 2048;
    this.samples = new Float32Array(this.analyser.fftSize);
    source.connect(this.analyser);
  }

  static fromStream(ctx, stream) {
    return new LevelMeter(ctx, ctx.createMediaStreamSource(stream));
  }

  rms() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const s of this.samples) sum += s * s;
    return Math.sqrt(sum / this.samples.length);
  }

  dispose() {
    try {
      this.source.disconnect(this.analyser);
    } catch {
      // Already disconnected when its graph was torn down.
    }
  }
}

/** Maps an RMS value to 0..1 on a -60..0 dBFS scale, which is how loudness feels. */
export function rmsToMeter(rms) {
  if (rms <= 0) return 0;
  return Math.min(1, Math.max(0, (20 * Math.log10(rms) + 60) / 60));
}

// Scheduling starts this far ahead after a gap, so the chunks that follow line up
// back to back instead of each one arriving just too late.
const PLAYBACK_LEAD_S = 0.06;

/** Plays int16 PCM chunks back to back on the AudioContext clock. */
export class PcmPlayer {
  constructor(ctx) {
    this.ctx = ctx;
    this.output = ctx.createGain();
    this.output.connect(ctx.destination);
    this.nextStart = 0;
    this.sources = new Set();
  }

  enqueue(samples, rate) {
    if (samples.length === 0) return;
    const buffer = this.ctx.createBuffer(1, samples.length, rate);
    buffer.copyToChannel(samples, 0);
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.output);
    const now = this.ctx.currentTime;
    if (this.nextStart < now + 0.005) this.nextStart = now + PLAYBACK_LEAD_S;
    source.start(this.nextStart);
    this.nextStart += buffer.duration;
    this.sources.add(source);
    source.onended = () => this.sources.delete(source);
  }

  /** Seconds of audio scheduled but not yet played. */
  get queuedSeconds() {
    return Math.max(0, this.nextStart - this.ctx.currentTime);
  }

  /** Drops everything queued at once (barge-in: the agent must stop mid-word). */
  flush() {
    for (const source of this.sources) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        // Never started; nothing to stop.
      }
      source.disconnect();
    }
    this.sources.clear();
    this.nextStart = 0;
  }

  dispose() {
    this.flush();
    this.output.disconnect();
  }
}

/** base64 of little-endian int16 PCM from an Int16Array. */
export function int16ToBase64(samples) {
  const view = new DataView(new ArrayBuffer(samples.length * 2));
  samples.forEach((s, i) => view.setInt16(i * 2, s, true));
  const bytes = new Uint8Array(view.buffer);
  let binary = '';
  // Chunked so String.fromCharCode never gets more arguments than the engine allows.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Float32 samples in -1..1 from base64 little-endian int16 PCM. */
export function base64ToFloat32(text) {
  const binary = atob(text);
  const count = binary.length >> 1;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const lo = binary.charCodeAt(2 * i);
    const hi = binary.charCodeAt(2 * i + 1);
    const value = (hi << 8) | lo;
    out[i] = (value >= 0x8000 ? value - 0x10000 : value) / 0x8000;
  }
  return out;
}
