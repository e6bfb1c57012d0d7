// WebSocket fallback for networks where WebRTC cannot connect (UDP blocked, no TURN).
// Same JSON events as the DataChannel, plus audio carried in JSON:
//   up:   audio-chunk {seq, data, rate}  20 ms of base64 int16 mono PCM, then audio-end
//   down: tts-chunk {audio, rate}        played gaplessly; dropped at once on `interrupted`
// TCP retransmits instead of dropping, so this path adds latency under loss; it is a
// fallback, not the main road.

import { throwIfAborted } from './api.js';
import { PcmPlayer, SAMPLE_RATE, base64ToFloat32, int16ToBase64 } from './audio.js';
import { until } from './until.js';

const CHUNK_MS = 20;
// If the socket backs up past ~1 s of audio the network cannot keep up; sending more
// would only grow the delay, so new chunks are dropped (and counted) until it drains.
const MAX_BUFFERED_BYTES = 64 * 1024;

export class WsTransport {
  /**
   * @param {object} options
   * @param {object} options.session
   * @param {string} options.persona
   * @param {MediaStream} options.mic
   * @param {import('./audio.js').AudioEngine} options.audio
   * @param {(message: object) => void} options.onEvent
   * @param {(reason: string) => void} options.onLost
   * @param {(remote: {node: AudioNode}) => void} options.onRemoteAudio
   */
  constructor({ session, persona, mic, audio, onEvent, onLost, onRemoteAudio }) {
    this.name = 'ws';
    this.session = session;
    this.persona = persona;
    this.mic = mic;
    this.audio = audio;
    this.onEvent = onEvent;
    this.onLost = onLost;
    this.onRemoteAudio = onRemoteAudio;
    this.socket = null;
    this.player = null;
    this.capture = null;
    this.seq = 0;
    this.stats = { sent: 0, dropped: 0 };
    this.connected = false;
    this.closed = false;
  }

  async connect(signal) {
    const ctx = this.audio.ctx;
    await this.audio.loadCaptureWorklet();
    throwIfAborted(signal);

    const url = new URL('ws', document.baseURI);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('persona', this.persona);
    // The token goes in a subprotocol, never in the URL (URLs end up in logs and history).
    const socket = new WebSocket(url, ['parley.v1', `parley.token.${this.session.token}`]);
    this.socket = socket;
    socket.onmessage = (event) => this.receive(event.data);
    await waitForOpen(socket, signal);

    this.player = new PcmPlayer(ctx);
    this.onRemoteAudio({ node: this.player.output });
    this.startCapture(ctx);

    this.connected = true;
    socket.onclose = (event) => this.lost(`the WebSocket closed (code ${event.code})`);
  }

  startCapture(ctx) {
    const source = ctx.createMediaStreamSource(this.mic);
    const worklet = new AudioWorkletNode(ctx, 'pcm-capture', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCount: 1,
      channelCountMode: 'explicit',
      processorOptions: { chunkSamples: (ctx.sampleRate * CHUNK_MS) / 1000 },
    });
    // A worklet only runs while something downstream pulls it; a muted gain to the
    // speakers does that without making the user hear themselves.
    const sink = ctx.createGain();
    sink.gain.value = 0;
    source.connect(worklet).connect(sink).connect(ctx.destination);
    worklet.port.onmessage = (event) => this.sendChunk(event.data, ctx.sampleRate);
    this.capture = { source, worklet, sink };
  }

  sendChunk(samples, rate) {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    if (socket.bufferedAmount > MAX_BUFFERED_BYTES) {
      this.stats.dropped += 1;
      return;
    }
    socket.send(
      JSON.stringify({ type: 'audio-chunk', seq: this.seq++, data: int16ToBase64(samples), rate }),
    );
    this.stats.sent += 1;
  }

  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  flushPlayback() {
    this.player?.flush();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.capture) {
      this.capture.worklet.port.onmessage = null;
      this.capture.source.disconnect();
      this.capture.worklet.disconnect();
      this.capture.sink.disconnect();
      this.capture = null;
    }
    this.player?.dispose();
    const socket = this.socket;
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: 'audio-end' }));
        socket.close(1000, 'hang up');
      } else if (socket.readyState === WebSocket.CONNECTING) {
        socket.close();
      }
    }
  }

  receive(data) {
    if (typeof data !== 'string') return;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (!message || typeof message.type !== 'string') return;
    if (message.type === 'tts-chunk') {
      if (this.player && typeof message.audio === 'string') {
        const samples = base64ToFloat32(message.audio);
        this.player.enqueue(samples, message.rate || SAMPLE_RATE);
        // The decoded audio rides along for the page's statistics; the event log strips it.
        message.samples = samples;
      }
    } else if (message.type === 'interrupted') {
      this.flushPlayback();
    }
    this.onEvent(message);
  }

  lost(reason) {
    if (this.closed || !this.connected) return;
    this.close();
    this.onLost(reason);
  }
}

function waitForOpen(socket, signal) {
  return until(signal, [
    { target: socket, type: 'open', decide: () => true },
    { target: socket, type: 'close', decide: (event) => new Error(`WebSocket refused (code ${event.code})`) },
  ]);
}
