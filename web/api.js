// HTTP calls to the Parley signaling server (README, "HTTP API").
// Paths are relative so the page also works when served under a path prefix.

/** A non-2xx answer; `code` and `message` come from the server's `{"error": {...}}` body. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfterS = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS; // a full server (503) says when to try again
  }
}

async function request(path, { method = 'GET', body, token, signal } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(new URL(path, document.baseURI), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    // Error pages from proxies are not JSON; the status line is all we can report.
  }
  if (!response.ok) {
    const error = (payload && payload.error) || {};
    throw new ApiError(
      response.status,
      error.code || `http-${response.status}`,
      error.message || response.statusText || `HTTP ${response.status}`,
      Number(response.headers.get('Retry-After')) || null,
    );
  }
  return payload;
}

/** `[{id, name, description, voice, plot_nodes: [{id, text}]}]` */
export function listPersonas(signal) {
  return request('api/personas', { signal });
}

/**
 * Opens a session: `{session_id, user_id, token, expires_at, ice_servers}`.
 * Passing the previous session keeps the same user; with `resume` it asks for that very
 * session back (same conversation window: reconnects after a drop or a server restart).
 * The answer's `session_id` says whether it was resumed: a session the server no longer
 * has, or an expired token, gives a new session (a new user if the token has expired).
 */
export async function createSession(persona, previous, { resume = false, signal } = {}) {
  const body = { persona };
  if (resume && previous) body.session_id = previous.session_id;
  try {
    return await request('api/sessions', { method: 'POST', body, token: previous?.token, signal });
  } catch (error) {
    if (previous && error instanceof ApiError && error.status === 401) {
      return request('api/sessions', { method: 'POST', body: { persona }, signal });
    }
    throw error;
  }
}

/** Sends the complete (non-trickle) offer and returns `{sdp, type: "answer", session_id}`. */
export function postOffer({ sdp, persona, sessionId, token, signal }) {
  return request('api/offer', {
    method: 'POST',
    body: { sdp, type: 'offer', persona, session_id: sessionId },
    token,
    signal,
  });
}

/** Rethrow an aborted signal's reason: lets a long connect sequence stop between steps. */
export function throwIfAborted(signal) {
  if (signal.aborted) throw signal.reason;
}
