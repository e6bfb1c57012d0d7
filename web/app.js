// The Parley page: wires the DOM to the call state machine (call.js) and renders events.
// URL parameters: persona=ID, autostart=1, transport=auto|webrtc|ws.
// Tests read `window.parley` (state, transitions, audio energy timeline, recent events).

import { listPersonas } from './api.js';
import { AudioEngine, LevelMeter, rmsToMeter } from './audio.js';
import { Call, describe } from './call.js';

const METER_INTERVAL_MS = 50;
const MAX_TIMELINE = 6000; // 5 minutes of 50 ms samples
const MAX_EVENTS = 200;
const SETTINGS_DEBOUNCE_MS = 150;

const $ = (id) => document.getElementById(id);
const ui = {
  persona: $('persona'),
  personaDescription: $('persona-description'),
  plotField: $('plot-field'),
  plotNode: $('plot-node'),
  mic: $('mic'),
  interrupt: $('interrupt'),
  emotion: $('emotion'),
  emotionValue: $('emotion-value'),
  micLevel: $('mic-level'),
  agentLevel: $('agent-level'),
  latency: $('latency'),
  rtt: $('rtt'),
  transcript: $('transcript'),
  interim: $('interim'),
  reply: $('reply'),
  textForm: $('text-form'),
  textInput: $('text-input'),
  textSend: $('text-send'),
  status: $('status'),
  transport: $('transport'),
  error: $('error'),
  errorText: $('error-text'),
  errorClose: $('error-close'),
  notice: $('notice'),
  remoteAudio: $('remote-audio'),
};

const STATUS_TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  listening: 'Listening',
  thinking: 'Thinking…',
  speaking: 'Speaking',
};
const TRANSPORT_TEXT = { webrtc: 'WebRTC', ws: 'WebSocket fallback' };

const params = new URLSearchParams(location.search);
const audio = new AudioEngine();
const call = new Call({ audio, transport: params.get('transport') || 'auto' });

// Plain data only, so a test can read it whole (CDP returnByValue / JSON).
const parley = {
  state: call.state,
  transport: null,
  sessionId: null, // the server session; the same across reconnects
  transitions: [{ t: performance.now(), state: call.state }],
  stats: {
    rxEnergy: [], // {t, rms, state}: what the agent's audio measured at this end
    micEnergy: [], // {t, rms}
    rttMs: null,
    tts: { chunks: 0, seconds: 0, peakRms: 0 },
  },
  events: [], // {t, dir: "in" | "out", type, ...} without audio payloads
  notices: [],
  errors: [],
  ready: false, // personas loaded, controls usable
};
window.parley = parley;

let personas = [];
let micMeter = null;
let agentMeter = null;
let meterTimer = null;
let currentReply = null; // the <li> an in-progress agent reply streams into
let turnHasReply = false; // whether this agent turn already has an entry in #reply
// Typed messages sent and not yet confirmed. The server owns #transcript: every user turn,
// spoken or typed, comes back as `stt-final` (trimmed and cut as the agent took it), and
// only that is rendered; this list just marks the confirmed item as typed.
const typedPending = [];

// ---- call events ---------------------------------------------------------------

call.addEventListener('state', ({ detail: { state } }) => {
  parley.state = state;
  pushCapped(parley.transitions, { t: performance.now(), state });
  document.body.dataset.state = state;
  ui.status.textContent = STATUS_TEXT[state];
  const active = state !== 'idle';
  // The label itself says what the button does next (no aria-pressed: the name changes).
  ui.mic.textContent = active ? 'Hang up' : 'Start call';
  const talking = active && state !== 'connecting';
  ui.textInput.disabled = !talking;
  ui.textSend.disabled = !talking;
  ui.interrupt.disabled = !(state === 'speaking' || state === 'thinking');
  if (state === 'listening') {
    currentReply = null;
    turnHasReply = false;
    ui.reply.setAttribute('aria-busy', 'false');
  }
  if (active) startMeters();
  else endOfCall();
});

call.addEventListener('mic', ({ detail: { stream } }) => {
  micMeter?.dispose();
  micMeter = LevelMeter.fromStream(audio.ctx, stream);
});

call.addEventListener('remote-audio', ({ detail }) => {
  agentMeter?.dispose();
  if (detail.stream) {
    ui.remoteAudio.srcObject = detail.stream;
    ui.remoteAudio.play().catch(() => {}); // autoplay may wait for a click: see 'pointerdown'
    agentMeter = LevelMeter.fromStream(audio.ctx, detail.stream);
  } else {
    ui.remoteAudio.srcObject = null;
    agentMeter = new LevelMeter(audio.ctx, detail.node);
  }
});

call.addEventListener('transport', ({ detail: { name } }) => {
  parley.transport = name;
  parley.sessionId = call.session?.session_id ?? null;
  ui.transport.textContent = TRANSPORT_TEXT[name] || name;
  ui.transport.hidden = false;
  // A new call's agent knows nothing of the controls; tell it (also after reconnects).
  const settings = { type: 'settings', emotion: Number(ui.emotion.value) };
  if (ui.plotNode.value) settings.plot_node = ui.plotNode.value;
  call.send(settings);
});

call.addEventListener('rtt', ({ detail: { ms } }) => {
  parley.stats.rttMs = ms;
  ui.rtt.textContent = `${Math.round(ms)} ms`;
});

call.addEventListener('event', ({ detail: { message } }) => {
  if (message.type === 'tts-chunk') {
    countTtsChunk(message);
    return; // 50 per second of speech: counted, not logged
  }
  logEvent('in', message);
  render(message);
});

call.addEventListener('sent', ({ detail: { message } }) => {
  if (message.type !== 'ping') logEvent('out', message);
});

call.addEventListener('notice', ({ detail: { message } }) => showNotice(message));
call.addEventListener('error', ({ detail: { message } }) => showError(message));

// ---- rendering server events ---------------------------------------------------

function render(message) {
  switch (message.type) {
    case 'stt-interim':
      ui.interim.textContent = message.text || '';
      break;
    case 'stt-final': {
      ui.interim.textContent = '';
      if (!message.text) break;
      const typed = typedPending.indexOf(message.text);
      if (typed >= 0) typedPending.splice(0, typed + 1);
      appendItem(ui.transcript, message.text, typed >= 0 ? 'typed' : undefined);
      break;
    }
    case 'llm-token': {
      const item = replyItem();
      // Screen readers wait for the whole reply instead of reading every token.
      ui.reply.setAttribute('aria-busy', 'true');
      if (item.classList.contains('audio-only')) {
        item.classList.remove('audio-only');
        item.textContent = '';
      }
      item.textContent += message.token || '';
      break;
    }
    case 'tts-start':
      // The echo persona speaks without any text; still show that a reply happened.
      if (!turnHasReply) appendAudioOnlyReply();
      break;
    case 'llm-done':
      if (message.text) {
        const item = replyItem();
        item.classList.remove('audio-only');
        item.textContent = message.text;
      }
      ui.reply.setAttribute('aria-busy', 'false');
      currentReply = null;
      break;
    case 'interrupted':
      markInterrupted(message.heard_text);
      break;
    case 'error':
      showError(`${message.message || 'The server reported an error'} (${message.code || 'error'})`);
      break;
    case 'metrics':
      renderMetrics(message);
      break;
    default:
      break; // turn, tts-end: reflected in the call state
  }
}

function appendItem(list, text, className) {
  const item = document.createElement('li');
  item.textContent = text;
  if (className) item.className = className;
  list.append(item);
  item.scrollIntoView({ block: 'nearest' });
  return item;
}

function replyItem() {
  currentReply ??= appendItem(ui.reply, '');
  turnHasReply = true;
  return currentReply;
}

function appendAudioOnlyReply() {
  currentReply = appendItem(ui.reply, 'Spoken reply (no text)', 'audio-only');
  turnHasReply = true;
}

function markInterrupted(heardText) {
  const item = currentReply || ui.reply.lastElementChild;
  currentReply = null;
  if (!item || item.classList.contains('interrupted')) return;
  item.classList.add('interrupted');
  const note = document.createElement('span');
  note.className = 'heard';
  note.textContent = heardText ? `Interrupted; you heard: “${heardText}”` : 'Interrupted';
  item.append(note);
}

/** Shows every number in a `metrics` event, e.g. `latency_ms.turn` as "turn: 812 ms". */
function renderMetrics(message) {
  for (const [key, value] of flattenNumbers(message)) {
    const id = `metric-${key.replace(/[^a-z0-9]+/gi, '-')}`;
    let dd = document.getElementById(id);
    if (!dd) {
      const dt = document.createElement('dt');
      dt.textContent = key.replace(/^latency_ms\./, '').replace(/_ms$/, '').replace(/_/g, ' ');
      dd = document.createElement('dd');
      dd.id = id;
      ui.latency.append(dt, dd);
    }
    const isMs = /(^|[._])ms($|[._])/.test(key);
    dd.textContent = isMs ? `${Math.round(value)} ms` : String(Math.round(value * 100) / 100);
  }
}

function* flattenNumbers(object, prefix = '') {
  for (const [key, value] of Object.entries(object)) {
    if (key === 'type') continue;
    const path = prefix ? `${prefix}.${key}` : key;
    if (typeof value === 'number' && Number.isFinite(value)) yield [path, value];
    else if (value && typeof value === 'object' && !Array.isArray(value)) yield* flattenNumbers(value, path);
  }
}

// ---- logging for tests and debugging ------------------------------------------

function logEvent(dir, message) {
  const entry = { t: performance.now(), dir };
  for (const [key, value] of Object.entries(message)) {
    // Audio payloads would make the log huge; their size is enough to see they came.
    if (key === 'audio' || key === 'data') entry[`${key}_chars`] = value.length;
    else if (key !== 'samples') entry[key] = value;
  }
  parley.events.push(entry);
  if (parley.events.length > MAX_EVENTS) parley.events.splice(0, parley.events.length - MAX_EVENTS);
}

function countTtsChunk(message) {
  const tts = parley.stats.tts;
  tts.chunks += 1;
  const samples = message.samples;
  if (!samples || samples.length === 0) return;
  tts.seconds += samples.length / (message.rate || 48000);
  let sum = 0;
  for (const s of samples) sum += s * s;
  tts.peakRms = Math.max(tts.peakRms, Math.sqrt(sum / samples.length));
}

function pushCapped(list, item) {
  list.push(item);
  if (list.length > MAX_TIMELINE) list.splice(0, list.length - MAX_TIMELINE);
}

// ---- level meters --------------------------------------------------------------

function startMeters() {
  if (meterTimer !== null) return;
  // A timer, not requestAnimationFrame: rAF stops in background tabs, and the energy
  // timeline should keep running while the user looks elsewhere.
  meterTimer = setInterval(() => {
    const t = performance.now();
    const micRms = micMeter ? micMeter.rms() : 0;
    const agentRms = agentMeter ? agentMeter.rms() : 0;
    ui.micLevel.value = rmsToMeter(micRms);
    ui.agentLevel.value = rmsToMeter(agentRms);
    pushCapped(parley.stats.micEnergy, { t, rms: micRms });
    pushCapped(parley.stats.rxEnergy, { t, rms: agentRms, state: call.state });
  }, METER_INTERVAL_MS);
}

function endOfCall() {
  typedPending.length = 0;
  clearInterval(meterTimer);
  meterTimer = null;
  micMeter?.dispose();
  agentMeter?.dispose();
  micMeter = agentMeter = null;
  ui.micLevel.value = 0;
  ui.agentLevel.value = 0;
  ui.remoteAudio.srcObject = null;
  ui.interim.textContent = '';
  ui.transport.hidden = true;
  ui.rtt.textContent = '–';
  parley.transport = null;
  currentReply = null;
  ui.reply.setAttribute('aria-busy', 'false');
}

// ---- banners -------------------------------------------------------------------

function showError(message) {
  parley.errors.push({ t: performance.now(), message });
  ui.errorText.textContent = message;
  ui.error.hidden = false;
}

function hideError() {
  ui.error.hidden = true;
  ui.errorText.textContent = '';
}

function showNotice(message) {
  parley.notices.push({ t: performance.now(), message });
  ui.notice.textContent = message;
  ui.notice.hidden = false;
}

// ---- controls ------------------------------------------------------------------

ui.mic.addEventListener('click', () => {
  if (call.active) {
    call.hangUp();
  } else {
    hideError();
    ui.notice.hidden = true;
    call.start(ui.persona.value);
  }
});

ui.interrupt.addEventListener('click', () => call.interrupt());

ui.persona.addEventListener('change', () => {
  showPersonaDescription();
  showPlotNodes();
  if (call.active) call.setPersona(ui.persona.value);
});

ui.plotNode.addEventListener('change', () => {
  // "" = no plot node: the storyteller goes on where the conversation leads.
  if (call.active) call.send({ type: 'settings', plot_node: ui.plotNode.value || null });
});

let emotionTimer = null;
ui.emotion.addEventListener('input', () => {
  ui.emotionValue.textContent = Number(ui.emotion.value).toFixed(2);
  // Sliders fire many input events per drag; the server needs only where it settles.
  clearTimeout(emotionTimer);
  emotionTimer = setTimeout(() => {
    if (call.active) call.send({ type: 'settings', emotion: Number(ui.emotion.value) });
  }, SETTINGS_DEBOUNCE_MS);
});

ui.textForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.textInput.value.trim();
  if (!text) return;
  if (call.send({ type: 'text', text })) {
    typedPending.push(text.slice(0, 2000)); // shown when the server confirms it (stt-final)
    if (typedPending.length > 20) typedPending.shift();
    ui.textInput.value = '';
  } else {
    showError('Not connected: start a call to send messages.');
  }
});

ui.errorClose.addEventListener('click', hideError);

// Browsers may keep audio paused until the user interacts (e.g. after an autostart link).
document.addEventListener('pointerdown', () => {
  if (audio.context && audio.context.state !== 'running') audio.context.resume();
  if (ui.remoteAudio.srcObject && ui.remoteAudio.paused) ui.remoteAudio.play().catch(() => {});
});

// A reload mid-call resumes the same conversation on the next start (session-store.js).
window.addEventListener('pagehide', () => call.hangUp(undefined, { resumable: true }));

// ---- personas and deep links ---------------------------------------------------

function showPersonaDescription() {
  const persona = personas.find((p) => p.id === ui.persona.value);
  const voice = persona && persona.voice ? ` Voice: ${persona.voice}.` : '';
  ui.personaDescription.textContent = persona ? `${persona.description || ''}${voice}`.trim() : '';
}

/** The story positions of the selected persona (the storyteller's plot), if it has any. */
function showPlotNodes() {
  const persona = personas.find((p) => p.id === ui.persona.value);
  const nodes = (persona && persona.plot_nodes) || [];
  const none = new Option('Let the story flow', '');
  ui.plotNode.replaceChildren(none, ...nodes.map((node) => {
    const option = new Option(node.text, node.id);
    option.title = node.id;
    return option;
  }));
  ui.plotField.hidden = nodes.length === 0;
}

async function init() {
  try {
    personas = await listPersonas();
  } catch (error) {
    ui.persona.replaceChildren(new Option('Unavailable'));
    showError(`Could not load personas: ${describe(error)}`);
    return;
  }
  ui.persona.replaceChildren(
    ...personas.map((p) => new Option(p.name, p.id)),
  );
  const wanted = params.get('persona');
  const known = !wanted || personas.some((p) => p.id === wanted);
  if (wanted && known) ui.persona.value = wanted;
  if (!known) showError(`Unknown persona “${wanted}”; pick one from the list.`);
  showPersonaDescription();
  showPlotNodes();
  ui.persona.disabled = personas.length === 0;
  ui.mic.disabled = personas.length === 0;
  parley.ready = true;
  // A deep link to a persona that does not exist must not silently call another one.
  if (params.get('autostart') === '1' && known && personas.length > 0) call.start(ui.persona.value);
}

init();
