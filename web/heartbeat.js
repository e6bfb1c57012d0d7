// Application-level keep-alive. aiortc has no "disconnected" state and only notices a
// vanished peer after ~30 s of failed consent checks, and a WebSocket behind a dead NAT
// can stay "open" for minutes; a ping every 2 s finds out within a few seconds instead.

export const PING_INTERVAL_MS = 2000;
export const MAX_MISSED_PONGS = 3;

export class Heartbeat {
  /**
   * @param {object} options
   * @param {(message: object) => void} options.send   sends `{type: "ping", t}`
   * @param {(ms: number) => void} options.onRtt       round trip of each answered ping
   * @param {(reason: string) => void} options.onLost  called once, after too many missed pongs
   */
  constructor({ send, onRtt, onLost, intervalMs = PING_INTERVAL_MS, maxMissed = MAX_MISSED_PONGS }) {
    this.send = send;
    this.onRtt = onRtt;
    this.onLost = onLost;
    this.intervalMs = intervalMs;
    this.maxMissed = maxMissed;
    this.unanswered = 0;
    this.timer = null;
  }

  start() {
    this.stop();
    this.unanswered = 0;
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    this.tick();
  }

  stop() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  tick() {
    if (this.unanswered >= this.maxMissed) {
      this.stop();
      this.onLost(`${this.unanswered} pings went unanswered`);
      return;
    }
    this.unanswered += 1;
    this.send({ type: 'ping', t: performance.now() });
  }

  /** Any pong proves the link is alive, even one answering an older ping. */
  pong(t) {
    this.unanswered = 0;
    if (typeof t === 'number') this.onRtt(performance.now() - t);
  }
}
