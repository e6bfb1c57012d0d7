// The call state machine. It owns the microphone, the session and one transport at a
// time, and knows nothing about the DOM; the page listens to its events.
//
//   idle --start--> connecting --transport open--> listening <--turn--> thinking / speaking
//     ^                 |  ^                            |
//     |  give up        |  | reconnect (1, 2, 4, 8, 15 s)|  lost: 3 missed pongs,
//     +-----------------+  +----------------------------+  channel/socket closed
//   hang up from any state returns to idle.
//
// Continuity: the session is kept in sessionStorage (session-store.js). Every reconnect asks
// the server for the same session back, so the agent keeps the conversation window; so does
// a start after the tab was reloaded mid-call. After a hang-up the next call is a new
// session of the same user.
//
// Transport choice: WebRTC first; if it is not connected within CONNECT_TIMEOUT_MS the
// call falls back to the WebSocket transport and stays on it for its reconnects.

import { createSession } from './api.js';
import { Heartbeat } from './heartbeat.js';
import { RtcTransport } from './rtc-transport.js';
import { SessionStore } from './session-store.js';
import { WsTransport } from './ws-transport.js';

export const CONNECT_TIMEOUT_MS = 8000;
// 30 s in all: a restarting server (models loading) is back within it.
export const RECONNECT_DELAYS_MS = [1000, 2000, 4000, 8000, 15000];
const TURN_STATES = new Set(['listening', 'thinking', 'speaking']);

/**
 * Events (CustomEvent, data in `detail`):
 *   state {state}            call state changed
 *   event {message}          a server event (pongs excluded)
 *   sent {message}           a client event went out
 *   transport {name}         a transport connected ("webrtc" | "ws")
 *   remote-audio {stream}|{node}  the agent's audio, to play and meter
 *   mic {stream}             the microphone stream for this call
 *   rtt {ms}                 a ping round trip
 *   notice {message}         something the user should know, not an error
 *   error {message}          the call ended or failed because of this
 */
export class Call extends EventTarget {
  /**
   * @param {object} options
   * @param {import('./audio.js').AudioEngine} options.audio
   * @param {'auto' | 'webrtc' | 'ws'} options.transport  "webrtc" disables the fallback, "ws" forces it
   * @param {SessionStore} [options.sessions]  where the session outlives a reload
   */
  constructor({ audio, transport = 'auto', sessions = new SessionStore() }) {
    super();
    this.sessions = sessions;
    this.audio = audio;
    this.preference = transport;
    this.state = 'idle';
    this.persona = null;
    this.session = null;
    this.mic = null;
    this.transport = null;
    this.heartbeat = null;
    this.lifetime = null; // AbortController of the current call; aborted by hangUp
    this.useFallback = false;
    this.reconnecting = false;
  }

  get active() {
    return this.state !== 'idle';
  }

  async start(persona) {
    if (this.active) return;
    this.persona = persona;
    const stored = this.sessions.load();
    this.session = stored?.session ?? null; // its token keeps the same user
    const resumable = Boolean(stored?.resumable);
    this.useFallback = this.preference === 'ws' || typeof RTCPeerConnection === 'undefined';
    const lifetime = new AbortController();
    this.lifetime = lifetime;
    this.setState('connecting');
    try {
      if (!(await this.audio.resume())) {
        this.notice('Audio is paused by the browser; click anywhere on the page to hear the agent.');
      }
      // Echo cancellation, noise suppression and gain control stay at browser defaults:
      // the server runs its own chain, and the browser's AEC is what keeps a laptop
      // speaker from feeding the agent its own voice.
      const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      if (lifetime.signal.aborted) {
        stopTracks(mic);
        return;
      }
      this.mic = mic;
      this.emit('mic', { stream: mic });
      // A duplicated tab has a copy of the session; it must not take over the original's call.
      const resume = resumable && !(await this.sessions.liveElsewhere(this.session?.session_id));
      await this.open(lifetime.signal, resume);
    } catch (error) {
      if (!lifetime.signal.aborted) this.hangUp(`Could not start the call: ${describe(error)}`);
    }
  }

  /**
   * Ends the call; with a message, reports it as the reason. Safe to call twice.
   * `resumable`: the next start() resumes this session (a failure, or the page going away
   * mid-call) rather than starting a new conversation (the user hanging up).
   */
  hangUp(errorMessage, { resumable = Boolean(errorMessage) } = {}) {
    if (!this.active) return;
    this.sessions.save(this.session, resumable);
    this.sessions.live = null;
    this.lifetime?.abort(new DOMException('hung up', 'AbortError'));
    this.closeTransport();
    stopTracks(this.mic);
    this.mic = null;
    this.setState('idle');
    if (errorMessage) this.emit('error', { message: errorMessage });
  }

  /** Sends a client event; false when there is no open transport to carry it. */
  send(message) {
    const sent = this.transport ? this.transport.send(message) : false;
    if (sent) this.emit('sent', { message });
    return sent;
  }

  /** Switches persona mid-call; reconnects keep the new one. */
  setPersona(persona) {
    this.persona = persona;
    return this.send({ type: 'settings', persona });
  }

  /** Barge-in by button: silence our local queue now, and tell the server. */
  interrupt() {
    this.transport?.flushPlayback();
    return this.send({ type: 'interrupt' });
  }

  /** A session (the same one again when `resume`), then a transport. */
  async open(signal, resume = false) {
    this.session = await createSession(this.persona, this.session, { resume, signal });
    this.sessions.save(this.session, true);
    this.sessions.live = this.session.session_id;
    if (!this.useFallback) {
      try {
        await this.connect(RtcTransport, signal);
        return;
      } catch (error) {
        if (signal.aborted || this.preference === 'webrtc') throw error;
        this.notice(`WebRTC did not connect (${describe(error)}); using the WebSocket fallback.`);
        this.useFallback = true;
      }
    }
    await this.connect(WsTransport, signal);
  }

  async connect(TransportClass, callSignal) {
    const transport = new TransportClass({
      session: this.session,
      persona: this.persona,
      mic: this.mic,
      audio: this.audio,
      onEvent: (message) => this.receive(transport, message),
      onLost: (reason) => this.lost(transport, reason),
      onRemoteAudio: (remote) => {
        if (transport === this.transport) this.emit('remote-audio', remote);
      },
    });
    // Events may arrive before connect() resolves (the server greets on open), so the
    // transport is current from the start; receive() ignores any other.
    this.transport = transport;
    const timeout = AbortSignal.timeout(CONNECT_TIMEOUT_MS);
    try {
      await transport.connect(AbortSignal.any([callSignal, timeout]));
    } catch (error) {
      transport.close();
      if (this.transport === transport) this.transport = null;
      if (timeout.aborted && !callSignal.aborted) {
        throw new Error(`no connection within ${CONNECT_TIMEOUT_MS / 1000} s`);
      }
      throw error;
    }
    this.heartbeat = new Heartbeat({
      send: (message) => transport.send(message),
      onRtt: (ms) => this.emit('rtt', { ms }),
      onLost: (reason) => this.lost(transport, reason),
    });
    this.heartbeat.start();
    if (this.state === 'connecting') this.setState('listening');
    this.emit('transport', { name: transport.name });
  }

  receive(transport, message) {
    if (transport !== this.transport) return;
    if (message.type === 'pong') {
      this.heartbeat?.pong(message.t);
      return;
    }
    if (message.type === 'turn' && TURN_STATES.has(message.state) && this.state !== 'idle') {
      this.setState(message.state);
    }
    this.emit('event', { message });
  }

  lost(transport, reason) {
    if (transport !== this.transport || this.reconnecting || !this.active) return;
    this.closeTransport();
    this.reconnect(reason);
  }

  async reconnect(reason) {
    const signal = this.lifetime.signal;
    this.reconnecting = true;
    try {
      for (const [index, delay] of RECONNECT_DELAYS_MS.entries()) {
        this.setState('connecting');
        this.notice(
          `Connection lost (${reason}); reconnecting, try ${index + 1} of ${RECONNECT_DELAYS_MS.length}…`,
        );
        try {
          await sleep(delay, signal);
          await this.open(signal, true);
          this.notice('Reconnected.');
          return;
        } catch (error) {
          if (signal.aborted) return;
          reason = describe(error);
        }
      }
      this.hangUp(`Connection lost; ${RECONNECT_DELAYS_MS.length} reconnection attempts failed (${reason}).`);
    } finally {
      this.reconnecting = false;
    }
  }

  closeTransport() {
    this.heartbeat?.stop();
    this.heartbeat = null;
    this.transport?.close();
    this.transport = null;
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.emit('state', { state });
  }

  notice(message) {
    this.emit('notice', { message });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function stopTracks(stream) {
  stream?.getTracks().forEach((track) => track.stop());
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** A short human-readable reason from anything thrown. */
export function describe(error) {
  if (!error) return 'unknown error';
  if (error.name === 'NotAllowedError') return 'microphone permission was denied';
  if (error.name === 'NotFoundError') return 'no microphone was found';
  if (error.status === 503) {
    const when = error.retryAfterS ? ` Try again in ${error.retryAfterS} s.` : '';
    return `the server is full right now (${error.message}).${when}`;
  }
  return error.message || String(error);
}
