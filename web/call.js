// Video calls in the web client: ringing over STOMP (/user/queue/calls), the call itself over
// the signaling WebSocket at /rtc (JSON messages; the server is always the offerer) and WebRTC
// media through the server's SFU. The room's history shows one entry per call.
// Server text goes on the page with textContent only. The access token is sent in the first
// /rtc message, never in a URL.

import { t as tr, time } from './i18n.js';

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The reactions the server accepts. */
export const PALETTE = ['👍', '❤️', '😂', '😮', '😢', '👏', '🙏', '🎉'];

/** Line icons (24×24, stroked), built as DOM nodes: no markup strings, nothing inline. */
const ICONS = {
  mic: ['M12 3a3 3 0 0 1 3 3v6a3 3 0 0 1-6 0V6a3 3 0 0 1 3-3z', 'M5 11a7 7 0 0 0 14 0', 'M12 18v3'],
  micOff: ['M9 9v3a3 3 0 0 0 5.1 2.1', 'M15 9.3V6a3 3 0 0 0-5.7-1.3', 'M5 11a7 7 0 0 0 11.7 5.2', 'M19 11a7 7 0 0 1-.4 2.3', 'M12 18v3', 'M3 3l18 18'],
  camera: ['M3 7h12a1 1 0 0 1 1 1v8a1 1 0 0 1-1 1H3a1 1 0 0 1-1-1V8a1 1 0 0 1 1-1z', 'M16 10.5l5-3v9l-5-3'],
  cameraOff: ['M3 7h12a1 1 0 0 1 1 1v8a1 1 0 0 1-1 1H3a1 1 0 0 1-1-1V8a1 1 0 0 1 1-1z', 'M16 10.5l5-3v9l-5-3', 'M2 3l20 18'],
  phone: ['M3.5 14.5c5-4.7 12-4.7 17 0l-2.3 2.6-3.4-1.5v-2.2a10 10 0 0 0-5.6 0v2.2l-3.4 1.5z'],
  hangup: ['M3 15.5c5-5 13-5 18 0'],
};

export function icon(name) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'icon');
  for (const d of ICONS[name]) {
    const path = document.createElementNS(ns, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

/** "3:12", or "1:02:03" for an hour and more. */
export function formatDuration(secs) {
  const s = Math.max(0, Math.floor(secs));
  const two = (n) => String(n).padStart(2, '0');
  const [h, m] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60)];
  return h > 0 ? `${h}:${two(m)}:${two(s % 60)}` : `${m}:${two(s % 60)}`;
}

/** What a room's history says about a call (an item of GET /rooms/{id}/calls). */
export function describeCall(c, me) {
  if (c.status === 'declined') return { text: tr('call.missed'), missed: true };
  if (c.status === 'ended') {
    if (c.end_reason === 'no_answer') return { text: tr('call.missed'), missed: true };
    if (!c.started_at) return { text: tr(c.requested_by === me ? 'call.cancelled' : 'call.missed'), missed: c.requested_by !== me };
    return { text: tr('call.done', { d: formatDuration(c.duration_secs ?? 0) }), missed: false };
  }
  if (c.status === 'requested') return { text: tr('call.ringing'), missed: false };
  return { text: tr('call.inprogress'), missed: false };
}

/** The media section ids of the first audio and the first video section of an SDP: the
 * server puts the participant's own uplink there. */
function uplinkMids(sdp) {
  const mids = {};
  let kind = null;
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith('m=')) kind = line.slice(2).split(' ')[0];
    else if (line.startsWith('a=mid:') && kind && !(kind in mids)) mids[kind] = line.slice(6).trim();
  }
  return mids;
}

/**
 * Wires the call UI to the app. `app` gives: state (access token, me, room, rooms), api(method,
 * path, body), freshToken() (an access token valid for a while), roomTitle(roomId) (who the
 * room is with), openRoom(roomId) and fail(e).
 */
export function setupCalls(app) {
  const call = {
    id: null,
    roomId: null,
    // idle | outgoing | incoming-accepted | connecting | active | ending
    phase: 'idle',
    ws: null,
    pc: null,
    local: null,
    audioMuted: false,
    videoOff: false,
    iceServers: [],
    inbox: Promise.resolve(),
    startedAt: null,
    timer: null,
    rejoinUntil: 0,
    restartAt: 0,
    disconnectTimer: null,
    pollTimer: null,
    endTimer: null,
    tiles: new Map(),
  };
  // For tests and debugging: the live call, its peer connection included.
  window.__neulbiCall = call;
  let ringing = null;

  // --- the room: start button and history entries ---------------------------------------

  $('start-call').prepend(icon('camera'));
  $('start-call').addEventListener('click', () => startCall().catch(fail));

  function updateStartButton() {
    const r = app.state.rooms.find((x) => x.room_id === app.state.room);
    const b = $('start-call');
    b.hidden = !app.state.room || Boolean(r?.closed_at);
    b.disabled = call.phase !== 'idle';
  }

  /** Fetches the room's calls and merges them into the message list by time. A call that
   * just ended may trail in the read model: `until` names one that must show as over. */
  async function showRoomCalls(roomId, until) {
    for (let attempt = 0; attempt < 75; attempt++) {
      if (app.state.room !== roomId) return;
      let items;
      try {
        ({ items } = await app.api('GET', `/rooms/${roomId}/calls`));
      } catch (e) {
        if ((e?.code ?? e?.error?.code) !== 'not_found') throw e;
        items = [];
      }
      if (app.state.room !== roomId) return;
      for (const c of items) showCallEntry(c);
      const pending = until && !items.some((c) => c.call_id === until && ['ended', 'declined'].includes(c.status));
      if (!pending) return;
      await sleep(200);
    }
  }

  function showCallEntry(c) {
    const box = $('messages');
    const { text, missed } = describeCall(c, app.state.me.id);
    let el = box.querySelector(`[data-call="${CSS.escape(c.call_id)}"]`);
    if (!el) {
      el = document.createElement('div');
      el.dataset.call = c.call_id;
      el.dataset.at = c.requested_at;
      const t = Date.parse(c.requested_at);
      const later = [...box.children].find((m) => m.dataset.at && Date.parse(m.dataset.at) > t);
      box.insertBefore(el, later ?? null);
      if (!later) box.scrollTop = box.scrollHeight;
    }
    // A trailing read model must not turn an entry that is over back into "in progress".
    const over = ['ended', 'declined'].includes(c.status);
    if (el.dataset.over && !over) return;
    if (over) el.dataset.over = '1';
    el.className = `msg call-entry${missed ? ' missed' : ''}`;
    const line = document.createElement('div');
    const label = document.createElement('span');
    label.textContent = text;
    line.append(icon(missed ? 'phone' : 'camera'), label);
    const when = document.createElement('div');
    when.className = 'muted';
    when.textContent = time(c.requested_at);
    el.replaceChildren(line, when);
  }

  // --- ringing ---------------------------------------------------------------------------

  /** A push on /user/queue/calls. */
  function onPush(p) {
    if (p.type === 'ringing') {
      if (p.from === app.state.me.id) return;
      if (call.phase !== 'idle') {
        // Busy in another call: say so at once rather than let it ring out.
        app.api('POST', `/calls/${p.call_id}/decline`).catch(() => {});
        return;
      }
      showIncoming(p);
    } else if (p.type === 'accepted') {
      if (ringing?.call_id === p.call_id) closeIncoming();
      if (call.id === p.call_id && call.phase === 'outgoing') join();
    } else if (p.type === 'declined') {
      if (ringing?.call_id === p.call_id) closeIncoming();
      if (call.id === p.call_id && call.phase === 'outgoing') teardown(tr('call.declined'));
      if (app.state.room === p.room_id) showRoomCalls(p.room_id, p.call_id).catch(() => {});
    } else if (p.type === 'ended') {
      if (ringing?.call_id === p.call_id) closeIncoming();
      if (call.id === p.call_id) {
        const why = p.reason === 'no_answer' ? tr('call.noanswer') : tr('call.endedAfter', { d: formatDuration(p.duration_secs ?? 0) });
        teardown(why);
      }
      if (app.state.room === p.room_id) {
        // The push says how it ended; the read model may trail it by seconds under load, so
        // the entry shows the push's word at once and the list catches up behind it.
        const el = $('messages').querySelector(`[data-call="${CSS.escape(p.call_id)}"]`);
        if (el && p.reason !== 'no_answer' && p.duration_secs > 0) {
          showCallEntry({
            call_id: p.call_id, room_id: p.room_id, requested_at: el.dataset.at, status: 'ended',
            started_at: el.dataset.at, duration_secs: p.duration_secs, end_reason: p.reason,
          });
        }
        showRoomCalls(p.room_id, p.call_id).catch(() => {});
      }
    }
  }

  function showIncoming(p) {
    ringing = p;
    $('incoming-who').textContent = tr('call.isCalling', { name: app.roomTitle(p.room_id, p.from) });
    const dialog = $('incoming');
    if (!dialog.open) dialog.showModal();
    $('incoming-accept').focus();
    clearTimeout(showIncoming.timer);
    showIncoming.timer = setTimeout(() => { if (ringing?.call_id === p.call_id) closeIncoming(); }, (p.ring_timeout_secs ?? 30) * 1000 + 2000);
  }

  function closeIncoming() {
    ringing = null;
    if ($('incoming').open) $('incoming').close();
  }

  $('incoming-accept').addEventListener('click', async () => {
    const p = ringing;
    closeIncoming();
    if (!p) return;
    try {
      await app.api('POST', `/calls/${p.call_id}/accept`);
    } catch (e) {
      return fail(e);
    }
    Object.assign(call, { id: p.call_id, roomId: p.room_id, phase: 'connecting' });
    if (app.state.room !== p.room_id) app.openRoom(p.room_id).catch(() => {});
    openView(tr('call.title', { name: app.roomTitle(p.room_id, p.from) }), tr('call.connecting'));
    join();
  });

  function decline() {
    const p = ringing;
    closeIncoming();
    if (p) app.api('POST', `/calls/${p.call_id}/decline`).catch(fail);
  }
  $('incoming-decline').addEventListener('click', decline);
  // Escape declines (the dialog's cancel event), rather than leaving the call ringing.
  $('incoming').addEventListener('cancel', (ev) => {
    ev.preventDefault();
    decline();
  });

  // --- starting and joining ---------------------------------------------------------------

  async function startCall() {
    const roomId = app.state.room;
    if (!roomId || call.phase !== 'idle') return;
    call.phase = 'outgoing';
    updateStartButton();
    let started;
    try {
      started = await app.api('POST', `/rooms/${roomId}/calls`);
    } catch (e) {
      call.phase = 'idle';
      updateStartButton();
      throw e;
    }
    Object.assign(call, { id: started.call_id, roomId });
    openView(tr('call.title', { name: app.roomTitle(roomId) }), tr('call.calling'));
    // The camera starts while it rings, so the preview is there when they pick up.
    localMedia().catch(() => {});
    // The push may be missed while the chat reconnects: ask now and then too.
    call.pollTimer = setInterval(async () => {
      if (call.phase !== 'outgoing') return clearInterval(call.pollTimer);
      const c = await app.api('GET', `/calls/${call.id}`).catch(() => null);
      if (!c || call.phase !== 'outgoing') return;
      if (c.status === 'accepted') join();
      else if (c.status === 'declined') teardown(tr('call.declined'));
      else if (c.status === 'ended') teardown(tr(c.end_reason === 'no_answer' ? 'call.noanswer' : 'call.ended'));
    }, 3000);
  }

  /** Camera and microphone, once per call. Without them the call goes on receive-only. */
  async function localMedia() {
    if (call.local) return call.local;
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: { width: { ideal: 1280 }, height: { ideal: 720 } },
      });
      if (call.phase === 'idle') {
        stream.getTracks().forEach((t) => t.stop());
        return null;
      }
      call.local = stream;
      stream.getAudioTracks().forEach((t) => { t.enabled = !call.audioMuted; });
      stream.getVideoTracks().forEach((t) => { t.enabled = !call.videoOff; });
      $('local-video').srcObject = stream;
      return stream;
    } catch (e) {
      status(tr('call.nomedia'));
      return null;
    }
  }

  async function join() {
    if (!['outgoing', 'connecting'].includes(call.phase)) return;
    call.phase = 'connecting';
    clearInterval(call.pollTimer);
    status(tr('call.connecting'));
    await localMedia();
    if (call.phase !== 'connecting') return;
    openSocket();
  }

  /** Opens /rtc, signs in and joins the call; after a drop the same call is joined again. */
  function openSocket(url) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(url ?? `${scheme}://${location.host}/rtc`);
    call.ws = ws;
    ws.onopen = async () => {
      const token = await app.freshToken();
      if (call.ws === ws) send({ v: 1, type: 'auth', token });
    };
    ws.onmessage = (ev) => {
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      // One message at a time, in order: a candidate is never added before its offer.
      call.inbox = call.inbox.then(() => onSignal(ws, m)).catch((e) => console.warn('signaling', e));
    };
    ws.onclose = () => {
      if (call.ws !== ws) return;
      call.ws = null;
      if (['connecting', 'active'].includes(call.phase)) rejoinLater();
    };
  }

  function isOwnSocket(url) {
    try {
      const u = new URL(url);
      return (u.protocol === 'wss:' || u.protocol === 'ws:') && u.host === location.host;
    } catch {
      return false;
    }
  }

  function send(m) {
    if (call.ws?.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify(m));
  }

  /** The socket dropped mid-call: the server keeps our place for its grace period. */
  function rejoinLater() {
    if (!call.rejoinUntil) call.rejoinUntil = Date.now() + 50_000;
    banner(true);
    if (Date.now() > call.rejoinUntil) {
      teardown(tr('call.lost'));
      return;
    }
    setTimeout(() => {
      if (['connecting', 'active'].includes(call.phase) && !call.ws) openSocket();
    }, 1000);
  }

  async function onSignal(ws, m) {
    if (call.ws !== ws) return;
    switch (m.type) {
      case 'welcome':
        send({ type: 'join', call_id: call.id });
        break;
      case 'joined':
        call.iceServers = m.ice_servers ?? [];
        call.rejoinUntil = 0;
        call.joinRetries = 0;
        newPeerConnection();
        for (const p of m.participants ?? []) {
          if (p.user_id !== app.state.me.id) {
            tile(p.user_id);
            setRemoteMedia(p);
          }
        }
        if (call.phase === 'connecting') {
          call.phase = 'active';
          if (!call.startedAt) {
            call.startedAt = Date.now();
            call.timer = setInterval(tick, 1000);
            tick();
          }
        }
        // A fresh join starts unmuted on the server: say so if we are not.
        if (call.audioMuted || call.videoOff) sendMedia();
        status(tr(m.rejoined ? 'call.reconnected' : 'call.connected'));
        break;
      case 'offer':
        await answer(m.sdp);
        break;
      case 'candidate':
        if (call.pc && m.candidate) {
          await call.pc.addIceCandidate({ candidate: m.candidate, sdpMid: m.sdp_mid ?? undefined, sdpMLineIndex: m.sdp_mline_index ?? undefined })
            .catch((e) => console.warn('candidate refused', e));
        }
        break;
      case 'participant':
        onParticipant(m);
        break;
      case 'media':
        if (m.user_id !== app.state.me.id) setRemoteMedia(m);
        break;
      case 'media_stalled':
        if (m.user_id === app.state.me.id) restartIce();
        else tileFlag(m.user_id, 'stalled', true);
        break;
      case 'media_resumed':
        if (m.user_id !== app.state.me.id) tileFlag(m.user_id, 'stalled', false);
        break;
      case 'chat':
        showChat(m);
        break;
      case 'emoji':
        showReaction(m);
        break;
      case 'ended':
        teardown(m.reason === 'no_answer' ? tr('call.noanswer') : tr('call.endedAfter', { d: formatDuration(m.duration_secs ?? 0) }));
        if (app.state.room === call.roomId) showRoomCalls(call.roomId).catch(() => {});
        break;
      case 'redirect':
        // Only a signaling URL on this page's origin: the CSP allows no other, and a URL
        // from elsewhere would get the token.
        if (m.url && isOwnSocket(m.url)) {
          call.ws = null;
          ws.close();
          openSocket(m.url);
        } else {
          teardown(tr('call.elsewhere'));
        }
        break;
      case 'error':
        onError(m);
        break;
      default:
        break;
    }
  }

  function onError(m) {
    console.warn('signaling error', m.code, m.re);
    if (m.re === 'join' && ['not_found', 'conflict', 'forbidden'].includes(m.code)) {
      teardown(m.message);
    } else if (m.re === 'join') {
      // Busy or unavailable: try again shortly, a few times.
      call.joinRetries = (call.joinRetries ?? 0) + 1;
      if (call.joinRetries > 8) teardown(tr('call.couldnt', { why: m.message }));
      else setTimeout(() => send({ type: 'join', call_id: call.id }), 1000);
    } else if (m.fatal) {
      status(m.message);
    }
  }

  // --- WebRTC -----------------------------------------------------------------------------

  function newPeerConnection() {
    call.pc?.close();
    clearRemoteTiles();
    const pc = new RTCPeerConnection({ iceServers: call.iceServers });
    call.pc = pc;
    pc.onicecandidate = (ev) => {
      if (call.pc !== pc || !ev.candidate || !ev.candidate.candidate) return;
      send({ type: 'candidate', candidate: ev.candidate.candidate, sdp_mid: ev.candidate.sdpMid, sdp_mline_index: ev.candidate.sdpMLineIndex });
    };
    pc.ontrack = (ev) => {
      if (call.pc !== pc) return;
      // The server names each remote stream after its publisher.
      const stream = ev.streams[0] ?? new MediaStream([ev.track]);
      const t = tile(stream.id);
      if (t.video.srcObject !== stream) {
        t.video.srcObject = stream;
        stream.onremovetrack = () => {
          if (stream.getTracks().length === 0 && call.tiles.get(stream.id)?.video.srcObject === stream) removeTile(stream.id);
        };
      }
      t.el.classList.remove('waiting');
      t.video.play().catch(() => {
        // Autoplay with sound was refused: play muted rather than show a still picture.
        t.video.muted = true;
        t.video.play().catch(() => {});
      });
    };
    pc.onconnectionstatechange = () => {
      if (call.pc !== pc) return;
      const s = pc.connectionState;
      clearTimeout(call.disconnectTimer);
      if (s === 'connected') {
        banner(false);
        status(tr('call.connected'));
      } else if (s === 'failed') {
        banner(true);
        restartIce();
      } else if (s === 'disconnected') {
        banner(true);
        // Often a blip that heals by itself; if not, a fresh ICE round.
        call.disconnectTimer = setTimeout(() => { if (pc.connectionState !== 'connected') restartIce(); }, 2500);
      }
    };
  }

  /** Answers the server's offer (the first, or a renegotiation when someone joins or
   * leaves, or an ICE restart) with our camera and microphone on our uplink sections. */
  async function answer(sdp) {
    const pc = call.pc;
    if (!pc) return;
    await pc.setRemoteDescription({ type: 'offer', sdp });
    const mids = uplinkMids(sdp);
    for (const track of call.local?.getTracks() ?? []) {
      const t = pc.getTransceivers().find((x) => x.mid === mids[track.kind]);
      if (!t) continue;
      if (t.sender.track !== track) {
        await t.sender.replaceTrack(track);
        t.sender.setStreams?.(call.local);
      }
      if (t.direction !== 'sendonly') t.direction = 'sendonly';
    }
    const ans = await pc.createAnswer();
    await pc.setLocalDescription(ans);
    if (call.pc === pc) send({ type: 'answer', sdp: pc.localDescription.sdp });
  }

  function restartIce() {
    if (Date.now() - call.restartAt < 4000) return;
    call.restartAt = Date.now();
    send({ type: 'restart_ice' });
  }

  // --- the call view ----------------------------------------------------------------------

  function openView(title, text) {
    $('call-title').textContent = title;
    $('call-chat').replaceChildren();
    $('call-timer').textContent = '';
    $('call').hidden = false;
    banner(false);
    status(text);
    setPressed('call-mute', false);
    setPressed('call-camera', false);
    $('local-flag').textContent = '';
    $('tiles').replaceChildren(waitingTile());
    updateStartButton();
    setBackgroundInert(true);
    $('call-hangup').focus();
  }

  /** The call view covers the page: keyboard and screen readers stay in it. */
  function setBackgroundInert(on) {
    for (const el of document.body.children) {
      if (el.id !== 'call' && el.id !== 'incoming' && el.tagName !== 'SCRIPT') el.inert = on;
    }
  }

  function waitingTile() {
    const el = document.createElement('div');
    el.className = 'tile waiting';
    el.id = 'waiting-tile';
    el.textContent = tr('call.waiting');
    return el;
  }

  function status(text) {
    $('call-status').textContent = text;
  }

  function banner(on) {
    $('call-banner').hidden = !on;
  }

  function tick() {
    if (call.startedAt) $('call-timer').textContent = formatDuration((Date.now() - call.startedAt) / 1000);
  }

  function tile(userId) {
    let t = call.tiles.get(userId);
    if (t) return t;
    $('waiting-tile')?.remove();
    const el = document.createElement('div');
    el.className = 'tile remote';
    el.dataset.user = userId;
    const name = app.nameOf(userId);
    el.dataset.initial = name.slice(0, 1).toUpperCase();
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    const label = document.createElement('span');
    label.className = 'name';
    label.textContent = name;
    const flag = document.createElement('span');
    flag.className = 'flag';
    el.append(video, label, flag);
    $('tiles').append(el);
    t = { el, video, flag, flags: new Set() };
    call.tiles.set(userId, t);
    return t;
  }

  function removeTile(userId) {
    const t = call.tiles.get(userId);
    if (!t) return;
    t.video.srcObject = null;
    t.el.remove();
    call.tiles.delete(userId);
    if (call.tiles.size === 0 && !$('call').hidden) $('tiles').replaceChildren(waitingTile());
  }

  function clearRemoteTiles() {
    for (const id of [...call.tiles.keys()]) removeTile(id);
  }

  const FLAG_TEXT = { muted: 'call.flag.muted', stalled: 'call.flag.stalled', dropped: 'call.flag.dropped' };
  function tileFlag(userId, flag, on) {
    const t = call.tiles.get(userId);
    if (!t) return;
    if (on) t.flags.add(flag);
    else t.flags.delete(flag);
    t.flag.textContent = [...t.flags].map((f) => tr(FLAG_TEXT[f])).join(' · ');
  }

  function setRemoteMedia(m) {
    const t = call.tiles.get(m.user_id);
    if (!t) return;
    t.el.classList.toggle('video-off', Boolean(m.video_off));
    tileFlag(m.user_id, 'muted', Boolean(m.audio_muted));
    if ('stalled' in m) tileFlag(m.user_id, 'stalled', Boolean(m.stalled));
    if ('connected' in m) tileFlag(m.user_id, 'dropped', !m.connected);
  }

  function onParticipant({ event, user_id: userId }) {
    if (userId === app.state.me.id) return;
    const name = app.nameOf(userId);
    if (event === 'joined') {
      tile(userId);
      announce(tr('call.announce.joined', { name }));
    } else if (event === 'left') {
      removeTile(userId);
      announce(tr('call.announce.left', { name }));
    } else if (event === 'dropped') {
      tileFlag(userId, 'dropped', true);
      announce(tr('call.announce.dropped', { name }));
    } else if (event === 'rejoined') {
      tileFlag(userId, 'dropped', false);
      announce(tr('call.announce.back', { name }));
    }
  }

  function announce(text) {
    $('call-announce').textContent = text;
  }

  function showChat({ user_id: userId, body, at }) {
    const line = document.createElement('div');
    line.className = `line${userId === app.state.me.id ? ' mine' : ''}`;
    const who = document.createElement('div');
    who.className = 'muted';
    who.textContent = `${userId === app.state.me.id ? tr('call.you') : app.nameOf(userId)} · ${time(at)}`;
    const text = document.createElement('div');
    text.textContent = body;
    line.append(who, text);
    const box = $('call-chat');
    box.append(line);
    box.scrollTop = box.scrollHeight;
  }

  function showReaction({ user_id: userId, emoji }) {
    const el = document.createElement('div');
    el.className = 'reaction';
    el.style.left = `${10 + Math.random() * 70}%`;
    el.textContent = emoji;
    const who = document.createElement('small');
    who.textContent = userId === app.state.me.id ? tr('call.you') : app.nameOf(userId);
    el.append(who);
    $('reactions').append(el);
    setTimeout(() => el.remove(), 3200);
    announce(tr('call.announce.reacted', { name: who.textContent, emoji }));
  }

  for (const emoji of PALETTE) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'emoji';
    b.textContent = emoji;
    b.setAttribute('aria-label', tr('call.react', { emoji }));
    b.addEventListener('click', () => send({ type: 'emoji', emoji }));
    $('emoji-bar').append(b);
  }

  $('call-chat-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body = $('call-chat-text').value.trim();
    if (!body || call.phase !== 'active') return;
    send({ type: 'chat', body });
    $('call-chat-text').value = '';
  });

  const BUTTON_ICONS = { 'call-mute': ['mic', 'micOff'], 'call-camera': ['camera', 'cameraOff'] };
  const BUTTON_TEXT = { 'call-mute': ['call.mute', 'call.unmute'], 'call-camera': ['call.cameraOff', 'call.cameraOn'] };
  function setPressed(id, on) {
    const b = $(id);
    b.setAttribute('aria-pressed', String(on));
    const label = document.createElement('span');
    label.textContent = tr(BUTTON_TEXT[id][on ? 1 : 0]);
    b.replaceChildren(icon(BUTTON_ICONS[id][on ? 1 : 0]), label);
  }
  $('call-hangup').prepend(icon('hangup'));

  function sendMedia() {
    send({ type: 'media', audio_muted: call.audioMuted, video_off: call.videoOff, screen_sharing: false });
    $('local-flag').textContent = [call.audioMuted && '🔇', call.videoOff && tr('call.camOff')].filter(Boolean).join(' · ');
    $('local-tile').classList.toggle('video-off', call.videoOff);
  }

  $('call-mute').addEventListener('click', () => {
    call.audioMuted = !call.audioMuted;
    call.local?.getAudioTracks().forEach((t) => { t.enabled = !call.audioMuted; });
    setPressed('call-mute', call.audioMuted);
    sendMedia();
  });

  $('call-camera').addEventListener('click', () => {
    call.videoOff = !call.videoOff;
    call.local?.getVideoTracks().forEach((t) => { t.enabled = !call.videoOff; });
    setPressed('call-camera', call.videoOff);
    sendMedia();
  });

  $('call-hangup').addEventListener('click', hangUp);

  /** Ends the call for everyone: over /rtc when in it, else over HTTP (cancel a ringing
   * call). The socket stays open until the end is confirmed, so the server sees a hang-up,
   * not a dropped connection. */
  function hangUp() {
    const id = call.id;
    if (!id || call.phase === 'idle' || call.phase === 'ending') return;
    const ws = call.ws;
    if (call.phase === 'active' && ws?.readyState === WebSocket.OPEN) {
      send({ type: 'hangup' });
      call.phase = 'ending';
      stopMedia();
      status(tr('call.ending'));
      // Confirmed by the `ended` push; if that does not come, end it over HTTP.
      call.endTimer = setTimeout(() => {
        app.api('POST', `/calls/${id}/end`).catch(() => {});
        teardown(tr('call.ended'));
      }, 4000);
    } else {
      app.api('POST', `/calls/${id}/end`).catch(() => {});
      teardown(tr('call.ended'));
    }
  }

  function stopMedia() {
    call.local?.getTracks().forEach((t) => t.stop());
    call.local = null;
    $('local-video').srcObject = null;
    call.pc?.close();
    call.pc = null;
    clearRemoteTiles();
  }

  /** Back to the room: media off, socket closed, a line in the room says how it went. */
  function teardown(text) {
    if (call.phase === 'idle') return;
    const roomId = call.roomId;
    stopMedia();
    clearInterval(call.timer);
    clearInterval(call.pollTimer);
    clearTimeout(call.endTimer);
    clearTimeout(call.disconnectTimer);
    const ws = call.ws;
    call.ws = null;
    ws?.close();
    Object.assign(call, {
      id: null, roomId: null, phase: 'idle', audioMuted: false, videoOff: false, startedAt: null, rejoinUntil: 0, inbox: Promise.resolve(),
    });
    $('call').hidden = true;
    setBackgroundInert(false);
    banner(false);
    $('call-status').textContent = '';
    $('call-last').textContent = text;
    updateStartButton();
    if (roomId && app.state.room === roomId) showRoomCalls(roomId).catch(() => {});
  }

  function fail(e) {
    app.fail(e);
  }

  return {
    /** Follows my call pushes on a (re)connected STOMP client. */
    onFrame(frame) {
      try {
        onPush(JSON.parse(frame.body));
      } catch (e) {
        console.warn('call push', e);
      }
    },
    /** After a language switch: the buttons' words. */
    relabel() {
      setPressed('call-mute', call.audioMuted);
      setPressed('call-camera', call.videoOff);
      for (const b of $('emoji-bar').children) b.setAttribute('aria-label', tr('call.react', { emoji: b.textContent }));
    },
    /** A room was opened (its messages are on screen): add its calls. */
    roomOpened(roomId) {
      updateStartButton();
      $('call-last').textContent = '';
      showRoomCalls(roomId).catch(() => {});
    },
    /** Sign-out: end what is going on. */
    reset() {
      if (call.phase !== 'idle') hangUp();
      closeIncoming();
    },
    updateStartButton,
  };
}
