// One promise over DOM events: it settles on the first event whose `decide` returns
// something (an Error rejects, anything else resolves), on abort (rejects with the
// signal's reason) or, with `timeoutMs`, resolves when the time is up. Listeners are
// always removed, so a transport that waits many times leaks nothing.

/**
 * @param {AbortSignal} signal
 * @param {{target: EventTarget, type: string, decide: (event: Event) => unknown}[]} watches
 * @param {number} [timeoutMs]
 */
export function until(signal, watches, timeoutMs) {
  return new Promise((resolve, reject) => {
    let timer = null;
    const listeners = [];
    const done = () => {
      clearTimeout(timer);
      for (const [target, type, listener] of listeners) target.removeEventListener(type, listener);
      signal.removeEventListener('abort', onAbort);
    };
    const onAbort = () => {
      done();
      reject(signal.reason);
    };
    for (const { target, type, decide } of watches) {
      const listener = (event) => {
        const outcome = decide(event);
        if (outcome === undefined) return;
        done();
        if (outcome instanceof Error) reject(outcome);
        else resolve(outcome);
      };
      target.addEventListener(type, listener);
      listeners.push([target, type, listener]);
    }
    signal.addEventListener('abort', onAbort);
    if (timeoutMs) {
      timer = setTimeout(() => {
        done();
        resolve();
      }, timeoutMs);
    }
  });
}
