// The page's session, kept in sessionStorage (per tab, survives reloads, gone with the tab).
// Reconnects resume it, so the server keeps the same user and conversation window; a reload
// of the tab during a call resumes it too. A hang-up by the user ends the conversation: the
// next call is a new session of the same user.
//
// A duplicated tab gets a copy of sessionStorage. Resuming the original's session would hang
// up the original's call (the server replaces a resumed session's calls), which would then
// resume it back, and so on. So before resuming, a tab asks the others over a
// BroadcastChannel whether the session is live there; if it is, it starts a new one.

const KEY = 'parley.session';
const CHANNEL = 'parley.sessions';
const ASK_TIMEOUT_MS = 150; // same-origin tabs answer within a few ms

export class SessionStore {
  /** @param {Storage | null} storage  null (or a storage that throws) keeps it in memory only */
  constructor(storage = defaultStorage()) {
    this.storage = storage;
    this.memory = null;
    this.live = null; // the session id this tab is in a call with
    this.channel = typeof BroadcastChannel === 'undefined' ? null : new BroadcastChannel(CHANNEL);
    if (this.channel) this.channel.onmessage = ({ data }) => this.answer(data);
  }

  answer(data) {
    if (data?.type === 'who-has' && this.live && data.session_id === this.live) {
      this.channel.postMessage({ type: 'mine', session_id: this.live });
    }
  }

  /** Resolves true when another tab of this origin is in a call with `sessionId`. */
  liveElsewhere(sessionId) {
    if (!this.channel || !sessionId) return Promise.resolve(false);
    return new Promise((resolve) => {
      const asking = new BroadcastChannel(CHANNEL); // our own channel object hears no echo
      const done = (found) => {
        clearTimeout(timer);
        asking.close();
        resolve(found);
      };
      const timer = setTimeout(() => done(false), ASK_TIMEOUT_MS);
      asking.onmessage = ({ data }) => {
        if (data?.type === 'mine' && data.session_id === sessionId) done(true);
      };
      asking.postMessage({ type: 'who-has', session_id: sessionId });
    });
  }

  /** `{session, resumable}` or null: the last session and whether the next call resumes it. */
  load() {
    try {
      const raw = this.storage?.getItem(KEY);
      if (raw) return JSON.parse(raw);
    } catch {
      // Private modes and sandboxed frames may refuse storage: fall back to this page's memory.
    }
    return this.memory;
  }

  save(session, resumable) {
    if (!session) return;
    // ice_servers may hold short-lived TURN credentials; a fresh session answer brings new ones.
    const { session_id, user_id, token, expires_at } = session;
    this.memory = { session: { session_id, user_id, token, expires_at }, resumable };
    try {
      this.storage?.setItem(KEY, JSON.stringify(this.memory));
    } catch {
      // see load()
    }
  }
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}
