// WebRTC transport: microphone up, agent audio down, events on the DataChannel "events".

import { postOffer, throwIfAborted } from './api.js';
import { until } from './until.js';

// With no STUN/TURN servers (the offline default) host candidates are gathered in
// milliseconds; with a STUN server that never answers, gathering can hang for ~40 s.
// After this long we send whatever candidates we have rather than miss the deadline.
const ICE_GATHERING_LIMIT_MS = 3000;

export class RtcTransport {
  /**
   * @param {object} options
   * @param {object} options.session      the `/api/sessions` answer
   * @param {string} options.persona
   * @param {MediaStream} options.mic
   * @param {(message: object) => void} options.onEvent
   * @param {(reason: string) => void} options.onLost       called once, only after connect() succeeded
   * @param {(remote: {stream: MediaStream}) => void} options.onRemoteAudio
   */
  constructor({ session, persona, mic, onEvent, onLost, onRemoteAudio }) {
    this.name = 'webrtc';
    this.session = session;
    this.persona = persona;
    this.mic = mic;
    this.onEvent = onEvent;
    this.onLost = onLost;
    this.onRemoteAudio = onRemoteAudio;
    this.pc = null;
    this.channel = null;
    this.connected = false;
    this.closed = false;
  }

  /** Resolves once the DataChannel is open; rejects on failure or when `signal` aborts. */
  async connect(signal) {
    const pc = new RTCPeerConnection({ iceServers: this.session.ice_servers || [] });
    this.pc = pc;
    // The channel must exist before the offer so the SDP carries its m=application section;
    // the server never opens channels itself.
    const channel = pc.createDataChannel('events', { ordered: true });
    this.channel = channel;
    channel.onmessage = (event) => this.receive(event.data);

    for (const track of this.mic.getAudioTracks()) pc.addTrack(track, this.mic);
    pc.ontrack = (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      this.onRemoteAudio({ stream });
    };

    const opened = waitForOpen(pc, channel, signal);
    opened.catch(() => {}); // observed below; avoids an unhandled rejection if we throw first

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc, signal);
    throwIfAborted(signal);
    const answer = await postOffer({
      sdp: pc.localDescription.sdp,
      persona: this.persona,
      sessionId: this.session.session_id,
      token: this.session.token,
      signal,
    });
    throwIfAborted(signal);
    await pc.setRemoteDescription({ type: answer.type || 'answer', sdp: answer.sdp });
    await opened;

    this.connected = true;
    channel.onclose = () => this.lost('the event channel closed');
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
        this.lost(`the peer connection ${pc.connectionState}`);
      }
    };
  }

  send(message) {
    if (!this.channel || this.channel.readyState !== 'open') return false;
    this.channel.send(JSON.stringify(message));
    return true;
  }

  /** The agent's audio is in the RTP path; there is no local queue to drop on barge-in. */
  flushPlayback() {}

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.channel) {
      this.channel.onclose = null;
      this.channel.onmessage = null;
      this.channel.close();
    }
    if (this.pc) {
      this.pc.onconnectionstatechange = null;
      this.pc.ontrack = null;
      // The microphone tracks belong to the call, which may reuse them on reconnect,
      // so they are detached here but not stopped.
      this.pc.close();
    }
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // not ours to interpret
    }
    if (message && typeof message.type === 'string') this.onEvent(message);
  }

  lost(reason) {
    if (this.closed || !this.connected) return;
    this.close();
    this.onLost(reason);
  }
}

function waitForOpen(pc, channel, signal) {
  if (channel.readyState === 'open') return Promise.resolve();
  const failed = () => ['failed', 'closed'].includes(pc.connectionState);
  return until(signal, [
    { target: channel, type: 'open', decide: () => true },
    {
      target: pc,
      type: 'connectionstatechange',
      decide: () => (failed() ? new Error(`peer connection ${pc.connectionState}`) : undefined),
    },
  ]);
}

function iceGatheringComplete(pc, signal) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  const complete = () => (pc.iceGatheringState === 'complete' ? true : undefined);
  return until(signal, [{ target: pc, type: 'icegatheringstatechange', decide: complete }], ICE_GATHERING_LIMIT_MS);
}
