// The room page: create a room, share its link, join by name; who is here (speaking,
// muted), the live attributed transcript and the agent's state. Plain ES module.
//
// Address: /room (create) · /room?room=ID#token=T (join; the token stays out of logs
// because it is in the fragment) · add &name=N&autojoin=1 to join at once (tests, links).
// Test surface: window.parleyRoom = {state, participantId, participants, lines, speakingLog,
// stats: {rxEnergy}} (page times are performance.now()).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = new URLSearchParams(location.hash.slice(1)).get('token');
const roomId = params.get('room');

const view = {
  state: 'idle',
  participantId: null,
  participants: {},  // id -> {name, speaking, muted}
  lines: [],  // final transcripts: {t, speaker, participant_id, text}
  speakingLog: [],  // {t, participant_id, on}: when the server judged each person speaking
  stats: { rxEnergy: [] },
};
window.parleyRoom = view;

let pc = null;
let channel = null;
let mic = null;
let agentName = 'Agent';

function setState(state) {
  view.state = state;
  document.body.dataset.state = state;
  $('status').textContent = { idle: 'Not connected', connecting: 'Joining…', joined: 'In the room' }[state];
  $('join').disabled = state !== 'idle';
  $('mute').disabled = $('leave').disabled = state !== 'joined';
}

function showError(message) {
  $('error-text').textContent = message;
  $('error').hidden = false;
}

async function api(path, { method = 'GET', body, auth } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (auth) headers.Authorization = `Bearer ${auth}`;
  const response = await fetch(new URL(path, document.baseURI), {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const payload = await response.json().catch(() => null);
  if (!response.ok) throw new Error((payload && payload.error && payload.error.message) || response.statusText);
  return payload;
}

// ---- create ------------------------------------------------------------------------
async function showCreate() {
  $('create').hidden = false;
  const personas = await api('api/personas');
  for (const p of personas.filter((x) => x.id !== 'echo')) {
    $('persona').append(new Option(`${p.name} — ${p.description}`, p.id));
  }
  $('create').addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const room = await api('api/rooms', {
        method: 'POST',
        body: { persona: $('persona').value, policy: $('policy').value, name: $('title').value },
      });
      location.assign(room.join_url);
    } catch (error) {
      showError(`Could not create the room: ${error.message}`);
    }
  });
}

// ---- the room ----------------------------------------------------------------------
async function showRoom() {
  $('room').hidden = false;
  $('share').value = location.href.replace(/[?&](name|autojoin)=[^&#]*/g, '');
  $('copy').addEventListener('click', () => navigator.clipboard && navigator.clipboard.writeText($('share').value));
  $('name').value = params.get('name') || localStorage.getItem('parley-name') || '';
  try {
    const info = await api(`api/rooms/${roomId}`, { auth: token });
    $('room-name').textContent = info.name || '';
    agentName = info.persona;
    renderAgent(info.agent.state);
  } catch (error) {
    showError(`This room cannot be joined: ${error.message}`);
    $('join').disabled = true;
    return;
  }
  $('join').addEventListener('click', join);
  $('leave').addEventListener('click', leave);
  $('mute').addEventListener('click', toggleMute);
  if (params.get('autojoin') === '1') join();
}

async function join() {
  const name = $('name').value.trim() || 'guest';
  localStorage.setItem('parley-name', name);
  setState('connecting');
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    pc = new RTCPeerConnection({ iceServers: [] });
    channel = pc.createDataChannel('events', { ordered: true });
    channel.onmessage = (event) => onEvent(JSON.parse(event.data));
    for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
    pc.ontrack = (event) => playRemote(event.streams[0] || new MediaStream([event.track]));
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const answer = await api('api/offer', {
      method: 'POST', auth: token,
      body: { sdp: pc.localDescription.sdp, type: 'offer', room_id: roomId, name },
    });
    view.participantId = answer.participant_id;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    pc.onconnectionstatechange = () => {
      if (['failed', 'closed'].includes(pc.connectionState)) leave();
    };
    setState('joined');
  } catch (error) {
    showError(`Could not join: ${error.message}`);
    leave();
  }
}

function gathered(peer) {
  if (peer.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 3000);
    peer.addEventListener('icegatheringstatechange', () => {
      if (peer.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
    });
  });
}

function leave() {
  if (channel) channel.close();
  if (pc) pc.close();
  if (mic) for (const track of mic.getTracks()) track.stop();
  pc = channel = mic = null;
  view.participants = {};
  renderParticipants();
  setState('idle');
}

function toggleMute() {
  const muted = $('mute').getAttribute('aria-pressed') !== 'true';
  $('mute').setAttribute('aria-pressed', String(muted));
  $('mute').textContent = muted ? 'Unmute' : 'Mute';
  if (mic) for (const track of mic.getAudioTracks()) track.enabled = !muted;
  if (channel && channel.readyState === 'open') channel.send(JSON.stringify({ type: 'mute', on: muted }));
}

// What we hear, measured (headless Chromium reports no inbound energy in getStats()).
function playRemote(stream) {
  const audio = $('remote-audio');
  audio.srcObject = stream;
  const ctx = new AudioContext({ sampleRate: 48000 });
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    view.stats.rxEnergy.push({ t: performance.now(), rms: Math.sqrt(sum / samples.length) });
    if (view.stats.rxEnergy.length > 4000) view.stats.rxEnergy.shift();
  }, 50);
}

// ---- events ------------------------------------------------------------------------
function onEvent(message) {
  const who = message.participant_id;
  switch (message.type) {
    case 'participant-joined':
      view.participants[who] = { name: message.name, speaking: false, muted: false };
      renderParticipants();
      break;
    case 'participant-left':
      delete view.participants[who];
      renderParticipants();
      break;
    case 'speaking':
      view.speakingLog.push({ t: performance.now(), participant_id: who, on: message.on });
      if (view.participants[who]) view.participants[who].speaking = message.on;
      renderParticipants();
      break;
    case 'muted':
      if (view.participants[who]) view.participants[who].muted = message.on;
      renderParticipants();
      break;
    case 'stt-interim':
      $('interim').textContent = `${message.speaker}: ${message.text}`;
      break;
    case 'stt-final':
      $('interim').textContent = '';
      addLine(message.speaker, who, message.text);
      break;
    case 'llm-done':
      if (message.text) addLine(message.speaker, 'agent', message.text);
      break;
    case 'turn':
      if (message.speaker) agentName = message.speaker;
      renderAgent(message.state);
      break;
    case 'error':
      showError(message.message || message.code);
      break;
    default:
      break;
  }
}

function addLine(speaker, participantId, text) {
  view.lines.push({ t: performance.now(), speaker, participant_id: participantId, text });
  const li = document.createElement('li');
  li.dataset.participant = participantId;
  const name = document.createElement('span');
  name.className = 'speaker';
  name.textContent = speaker;
  li.append(name, document.createTextNode(text));
  $('room-transcript').append(li);
}

function renderAgent(state) {
  document.body.dataset.agentState = state;
  $('agent').querySelector('.who').textContent = agentName;
  $('agent-state').textContent = state;
  $('agent').dataset.speaking = String(state === 'speaking');
}

function renderParticipants() {
  const list = $('participants');
  for (const li of [...list.querySelectorAll('li[data-id]')]) li.remove();
  for (const [id, p] of Object.entries(view.participants)) {
    const li = document.createElement('li');
    li.dataset.id = id;
    li.dataset.speaking = String(p.speaking);
    li.dataset.muted = String(p.muted);
    if (id === view.participantId) li.className = 'me';
    const dot = document.createElement('span');
    dot.className = 'dot';
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = p.name;
    li.append(dot, who);
    list.append(li);
  }
}

setState('idle');
if (roomId && token) showRoom().catch((error) => showError(error.message));
else showCreate().catch((error) => showError(error.message));
