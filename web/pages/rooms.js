// My rooms and the open room. The list applies /user/queue/rooms pushes in place (a new
// message moves the room up and counts as unread; a read marker clears the badge or shows
// "Read" under my messages) instead of reloading it. The open room shows its history newest
// last, pages back with the cursor, follows /topic/rooms.{id} live, and marks what I read.
// A message I send shows at once as "Sending", becomes "Sent" when the server's RECEIPT says
// it is in the log, and shows its time when it comes back from the log.

import { $, h, avatar, sleep } from '../dom.js';
import { t, time, day, shortWhen } from '../i18n.js';
import * as live from '../live.js';

const PAGE = 50;
const RECEIPT_TIMEOUT_MS = 10_000;

export function setupRooms(app) {
  const view = {
    roomId: null,
    cursor: null,
    lastSeen: null,
    lastMarked: null,
    peerReadId: null,
    loadingOlder: false,
    previewTimers: new Map(),
    readTimer: null,
    shown: false,
  };

  // --- the list ------------------------------------------------------------------------

  const roomOf = (id) => app.rooms.find((r) => r.room_id === id);

  /** Who a room is with, as far as this page knows. */
  function peerName(r) {
    return r.peer_nickname ?? app.names.get(r.peer_id) ?? t('chat.user', { id: r.peer_id.slice(0, 8) });
  }

  function lastActivity(r) {
    return Date.parse(r.last_message_at ?? r.opened_at);
  }

  function renderList() {
    const list = $('rooms');
    app.rooms.sort((a, b) => lastActivity(b) - lastActivity(a));
    const items = app.rooms.map((r) => {
      const unread = r.room_id === view.roomId && !document.hidden ? 0 : r.unread_count;
      const name = peerName(r);
      return h('li', {},
        h('a', { href: `#/rooms/${r.room_id}`, 'aria-current': r.room_id === view.roomId ? 'page' : null, dataset: { room: r.room_id } },
          avatar(name, r.peer_photo_url),
          h('span', { class: 'name' }, name),
          h('span', { class: 'when' }, shortWhen(r.last_message_at ?? r.opened_at)),
          h('span', { class: 'preview' }, r.closed_at ? h('span', { class: 'closed' }, `${t('rooms.closed')} · `) : null,
            r.last_message_preview ?? t('rooms.nomessages')),
          unread > 0 ? h('span', { class: 'badge', 'aria-label': t('rooms.unread', { n: unread }) }, String(unread)) : h('span')));
    });
    if (items.length === 0) {
      list.replaceChildren(h('li', { class: 'empty' }, h('strong', {}, t('rooms.empty')),
        t(app.me?.role === 'counselor' ? 'rooms.empty.counselor' : 'rooms.empty.client')));
    } else {
      list.replaceChildren(...items);
    }
    const total = app.rooms.reduce((n, r) => n + (r.room_id === view.roomId ? 0 : r.unread_count), 0);
    const badge = $('unread-total');
    badge.textContent = total > 0 ? String(total) : '';
    if (total > 0) badge.setAttribute('aria-label', t('unread.total', { n: total }));
    else badge.removeAttribute('aria-label');
  }

  /** A room known from a push (or just opened here) before the read model lists it: it
   * stays in the list until the read model catches up with the log. */
  function placeholder(roomId, clientId, counselorId, at) {
    const peer = clientId === app.me.id ? counselorId : clientId;
    return {
      room_id: roomId, client_id: clientId, counselor_id: counselorId, peer_id: peer,
      peer_nickname: app.names.get(peer) ?? null, peer_photo_url: null, message_count: 0, unread_count: 0,
      last_message_id: null, last_message_preview: null, last_message_at: null, opened_at: at, closed_at: null,
      peer_read_seq: 0, placeholder: true,
    };
  }

  let behind = 0;
  async function loadRooms() {
    const { items } = await app.api('GET', '/users/me/rooms');
    const listed = new Set(items.map((r) => r.room_id));
    const waiting = app.rooms.filter((r) => r.placeholder && !listed.has(r.room_id));
    app.rooms = [...items, ...waiting];
    renderList();
    if (view.roomId) showRoomState();
    // The read model trails the log by moments: ask again until it names the new rooms.
    if (waiting.length > 0 && behind < 40) {
      behind += 1;
      reloadSoon();
    } else {
      behind = 0;
    }
  }

  /** The newest message's start for a room that is not open (pushes carry no body). */
  function refreshPreview(roomId) {
    clearTimeout(view.previewTimers.get(roomId));
    view.previewTimers.set(roomId, setTimeout(async () => {
      view.previewTimers.delete(roomId);
      try {
        const page = await app.api('GET', `/rooms/${roomId}/messages?limit=1`);
        const r = roomOf(roomId);
        const m = page.items[0];
        if (r && m) {
          r.last_message_preview = m.body ?? t('chat.erased');
          renderList();
        }
      } catch {
        // The list keeps the old preview.
      }
    }, 250));
  }

  let reloadTimer = null;
  function reloadSoon() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => loadRooms().catch(() => {}), 300);
  }

  /** A push on /user/queue/rooms. */
  function onPush(p) {
    const r = roomOf(p.roomId);
    if (!r) {
      // A room I have not seen (opened elsewhere): shown at once from the push, then named
      // properly by the read model.
      if (p.type === 'opened') {
        app.rooms.push(placeholder(p.roomId, p.clientId, p.counselorId, p.at));
        renderList();
      }
      reloadSoon();
      return;
    }
    if (p.type === 'message') {
      r.message_count += 1;
      r.last_message_id = p.messageId;
      r.last_message_at = p.at;
      const watching = view.roomId === p.roomId && !document.hidden;
      if (p.unread && !watching) r.unread_count += 1;
      if (view.roomId !== p.roomId) refreshPreview(p.roomId);
    } else if (p.type === 'read') {
      if (p.mine) {
        // Read up to the newest message: nothing unread. Up to an older one (a marker sent
        // just before a new message came): the server counts what is left.
        if (!r.last_message_id || p.upTo === r.last_message_id) r.unread_count = 0;
        else reloadSoon();
      } else {
        r.peer_read_id = p.upTo;
        if (view.roomId === p.roomId) setPeerRead(p.upTo);
      }
    } else if (p.type === 'closed' || p.type === 'left') {
      r.closed_at = p.at;
      if (view.roomId === p.roomId) showRoomState();
    }
    renderList();
  }

  // --- the open room ----------------------------------------------------------------------

  const box = () => $('messages');

  function messageEl(id) {
    return id ? box().querySelector(`.msg[data-id="${CSS.escape(id)}"]`) : null;
  }

  function nearBottom() {
    const b = box();
    return b.scrollHeight - b.scrollTop - b.clientHeight < 80;
  }

  function scrollToEnd() {
    box().scrollTop = box().scrollHeight;
  }

  /** Day dividers between messages of different days (recomputed after each change). */
  function redrawDays() {
    const b = box();
    for (const d of b.querySelectorAll('.day')) d.remove();
    let last = null;
    for (const el of [...b.children]) {
      if (!el.dataset.at) continue;
      const key = new Date(el.dataset.at).toDateString();
      if (key !== last) b.insertBefore(h('p', { class: 'day' }, day(el.dataset.at)), el);
      last = key;
    }
  }

  function stateLabel(el) {
    return el.querySelector('.state');
  }

  /** Builds or updates one message element. */
  function renderMessage(m, { pending = false, failed = false } = {}) {
    const mine = m.authorId === app.me.id;
    let el = (m.clientMessageId && box().querySelector(`.msg[data-cmid="${CSS.escape(m.clientMessageId)}"]`)) || messageEl(m.id);
    const fresh = !el;
    if (fresh) el = h('div', { class: 'msg' });
    el.className = `msg${mine ? ' mine' : ''}${pending ? ' pending' : ''}${failed ? ' failed' : ''}${m.body == null ? ' erased' : ''}`;
    if (m.id) el.dataset.id = m.id;
    if (m.seq) el.dataset.seq = String(m.seq);
    if (m.clientMessageId) el.dataset.cmid = m.clientMessageId;
    if (m.at) el.dataset.at = m.at;
    const body = h('div', { class: 'body' }, m.body ?? t('chat.erased'));
    let state;
    if (failed) {
      state = h('span', { class: 'state' }, `${t('chat.failed')} · `,
        h('button', { class: 'btn small ghost', type: 'button', onclick: () => resend(el) }, t('chat.retry')));
    } else if (pending) {
      state = h('span', { class: 'state' }, t('chat.sending'));
    } else {
      state = h('time', { class: 'state', datetime: m.at }, time(m.at));
    }
    el.replaceChildren(body, h('div', { class: 'meta' }, state));
    return { el, fresh };
  }

  /** Appends a live or history message (history pages come in newest first). */
  function showMessage(m, opts = {}) {
    // Already here (a replay after a reconnect): nothing to add.
    if (messageEl(m.id) && !messageEl(m.id).classList.contains('pending')) return;
    const follow = nearBottom() || m.authorId === app.me.id;
    const { el, fresh } = renderMessage(m, opts);
    if (fresh) box().append(el);
    if (m.id && !opts.pending) view.lastSeen = m.id;
    redrawDays();
    if (view.peerReadId) setPeerRead(view.peerReadId);
    if (follow) scrollToEnd();
  }

  /** "Read" under the last of my messages the other member has read up to. */
  function setPeerRead(upTo) {
    view.peerReadId = upTo;
    for (const r of box().querySelectorAll('.msg .read')) r.remove();
    const target = messageEl(upTo);
    if (!target) return;
    let el = target;
    while (el && !(el.classList?.contains('mine') && el.classList.contains('msg') && !el.classList.contains('pending'))) el = el.previousElementSibling;
    el?.querySelector('.meta')?.append(h('span', { class: 'read' }, t('chat.read')));
  }

  function olderButton() {
    const b = h('button', { class: 'btn small older', type: 'button', onclick: () => loadOlder() }, t('chat.older'));
    return b;
  }

  const olderObserver = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadOlder();
  });

  function placeOlder() {
    box().querySelector('.older')?.remove();
    box().querySelector('.start')?.remove();
    if (view.cursor) {
      const b = olderButton();
      box().prepend(b);
      olderObserver.observe(b);
    } else {
      box().prepend(h('p', { class: 'day-note start' }, t('chat.start')));
    }
  }

  async function loadOlder() {
    if (!view.cursor || view.loadingOlder) return;
    view.loadingOlder = true;
    const roomId = view.roomId;
    try {
      const page = await app.api('GET', `/rooms/${roomId}/messages?limit=${PAGE}&before=${encodeURIComponent(view.cursor)}`);
      if (view.roomId !== roomId) return;
      const b = box();
      const before = b.scrollHeight;
      const anchor = b.querySelector('.msg, [data-call]');
      for (const m of page.items.reverse()) {
        if (messageEl(m.message_id)) continue;
        const { el } = renderMessage({ id: m.message_id, seq: m.seq, authorId: m.author_id, body: m.body, at: m.posted_at });
        b.insertBefore(el, anchor);
      }
      view.cursor = page.next_cursor ?? null;
      placeOlder();
      redrawDays();
      if (view.peerReadId) setPeerRead(view.peerReadId);
      b.scrollTop += b.scrollHeight - before;
    } catch (e) {
      app.fail(e);
    } finally {
      view.loadingOlder = false;
    }
  }

  /** The newest page; a room opened a moment ago may trail in the read model (404 briefly). */
  async function history(roomId) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await app.api('GET', `/rooms/${roomId}/messages?limit=${PAGE}`);
      } catch (e) {
        if (e?.code !== 'not_found' || attempt >= 30) throw e;
        await sleep(100);
      }
    }
  }

  function setComposing(enabled) {
    $('text').disabled = !enabled;
    $('compose').querySelector('button').disabled = !enabled;
  }

  /** Title, closed state and the call button for the open room. */
  function showRoomState(known) {
    const r = roomOf(view.roomId) ?? known;
    const name = r ? peerName(r) : t('chat.someone');
    $('room-title').textContent = t('chat.with', { name });
    $('room-avatar').replaceChildren(avatar(name, r?.peer_photo_url));
    const closed = Boolean(r?.closed_at);
    $('compose').hidden = closed;
    $('close-room').hidden = closed;
    $('chat-closed').hidden = !closed;
    app.calls?.updateStartButton();
  }

  async function openRoom(roomId, known) {
    if (view.roomId === roomId && box().childElementCount > 0) {
      showRoomState(known);
      return;
    }
    view.roomId = roomId;
    app.room = roomId;
    Object.assign(view, { cursor: null, lastSeen: null, lastMarked: null, peerReadId: null });
    $('rooms-layout').classList.add('in-room');
    $('no-room').hidden = true;
    $('chat').hidden = false;
    box().replaceChildren(h('p', { class: 'day' }, t('chat.loading')));
    $('call-last').textContent = '';
    showRoomState(known);
    renderList();
    // Writing waits for the history: a message sent meanwhile could come back in it, without
    // the client message id that ties it to what is on screen.
    setComposing(false);
    live.unfollow('room');
    let page;
    try {
      page = await history(roomId);
    } catch (e) {
      if (view.roomId === roomId) box().replaceChildren();
      throw e;
    }
    if (view.roomId !== roomId) return;
    box().replaceChildren();
    for (const m of page.items.reverse()) {
      showMessage({ id: m.message_id, seq: m.seq, authorId: m.author_id, body: m.body, at: m.posted_at });
    }
    view.cursor = page.next_cursor ?? null;
    placeOlder();
    const r = roomOf(roomId);
    if (r?.peer_read_id) setPeerRead(r.peer_read_id);
    else if (r?.peer_read_seq > 0) {
      const el = box().querySelector(`.msg[data-seq="${r.peer_read_seq}"]`);
      if (el) setPeerRead(el.dataset.id);
    }
    scrollToEnd();
    // Live from here on; the server first replays what came after the last message shown
    // (since-message-id), so nothing falls between history and live messages, and the same
    // after every reconnect.
    live.follow('room', `/topic/rooms.${roomId}`, (frame) => {
      if (view.roomId !== roomId) return;
      const m = JSON.parse(frame.body);
      showMessage(m);
      const room = roomOf(roomId);
      if (room) room.last_message_id = m.id;
      if (room && m.body != null) room.last_message_preview = m.body.slice(0, 80);
      markRead();
      renderList();
    }, () => (view.lastSeen ? { 'since-message-id': view.lastSeen } : {}));
    setComposing(true);
    app.calls?.roomOpened(roomId);
    markRead();
  }

  function closeRoomView() {
    live.unfollow('room');
    view.roomId = null;
    app.room = null;
    $('rooms-layout').classList.remove('in-room');
    $('chat').hidden = true;
    $('no-room').hidden = false;
    box().replaceChildren();
    renderList();
  }

  /** Tells the server what I have read, at most once a second. */
  function markRead() {
    if (!view.roomId || !view.lastSeen || document.hidden || view.lastMarked === view.lastSeen) return;
    clearTimeout(view.readTimer);
    const [room, upTo] = [view.roomId, view.lastSeen];
    view.readTimer = setTimeout(() => {
      if (view.lastMarked === upTo) return;
      view.lastMarked = upTo;
      const r = roomOf(room);
      if (r && (!r.last_message_id || r.last_message_id === upTo)) r.unread_count = 0;
      renderList();
      app.api('POST', `/rooms/${room}/read`, { up_to: upTo }).catch(() => { view.lastMarked = null; });
    }, 1000);
  }

  // --- sending ------------------------------------------------------------------------------

  function send(el) {
    const clientMessageId = el.dataset.cmid;
    const text = el.querySelector('.body').textContent;
    const sent = live.publish({
      destination: `/app/rooms.${view.roomId}.send`,
      // The client message id makes a resend after a dropped connection harmless.
      headers: { receipt: clientMessageId, 'client-message-id': clientMessageId, 'content-type': 'text/plain' },
      body: text,
    });
    if (!sent) return;
    live.watchForReceipt(clientMessageId, () => {
      const pending = box().querySelector(`.msg[data-cmid="${CSS.escape(clientMessageId)}"].pending`);
      if (pending) {
        pending.classList.remove('failed');
        stateLabel(pending).textContent = t('chat.stored');
        pending.dataset.stored = '1';
      }
    });
    setTimeout(() => {
      const still = box().querySelector(`.msg[data-cmid="${CSS.escape(clientMessageId)}"].pending:not([data-stored])`);
      if (still) renderMessage({ authorId: app.me.id, body: text, clientMessageId, at: still.dataset.at }, { pending: true, failed: true });
    }, RECEIPT_TIMEOUT_MS);
  }

  function resend(el) {
    renderMessage({ authorId: app.me.id, body: el.querySelector('.body').textContent, clientMessageId: el.dataset.cmid, at: el.dataset.at }, { pending: true });
    send(el);
  }

  function submit() {
    const text = $('text').value.trim();
    if (!text || !view.roomId) return;
    const clientMessageId = crypto.randomUUID();
    showMessage({ authorId: app.me.id, body: text, clientMessageId, at: new Date().toISOString() }, { pending: true });
    const el = box().querySelector(`.msg[data-cmid="${CSS.escape(clientMessageId)}"]`);
    $('text').value = '';
    if (!live.connected()) {
      stateLabel(el).textContent = t('chat.offline');
      return;
    }
    send(el);
  }

  $('compose').addEventListener('submit', (ev) => {
    ev.preventDefault();
    submit();
  });
  // Enter sends, Shift+Enter is a new line; never while an IME (Hangul) is composing.
  $('text').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      submit();
    }
  });

  $('close-room').addEventListener('click', async () => {
    if (!view.roomId || !confirm(t('chat.close.confirm'))) return;
    try {
      await app.api('POST', `/rooms/${view.roomId}/close`);
      const r = roomOf(view.roomId);
      if (r) r.closed_at = new Date().toISOString();
      showRoomState();
      renderList();
    } catch (e) {
      app.fail(e);
    }
  });

  document.addEventListener('visibilitychange', () => {
    markRead();
    renderList();
  });

  // After a reconnect: the list may have missed pushes, and messages still pending are sent
  // again (their client message ids make that harmless).
  live.onReconnect(() => {
    loadRooms().catch(() => {});
    for (const el of box().querySelectorAll('.msg.pending')) resend(el);
  });

  return {
    loadRooms,
    renderList,
    onPush,
    peerName,
    /** Starts (or reopens) the room with a counselor and shows it. */
    async startWith(counselorId) {
      const room = await app.api('POST', '/rooms', { counselor_id: counselorId });
      if (!roomOf(room.room_id)) app.rooms.push(placeholder(room.room_id, app.me.id, counselorId, new Date().toISOString()));
      app.go(`/rooms/${room.room_id}`);
    },
    /** The route /rooms or /rooms/{id}. Coming back from another page, the list is asked
     * again (names and photos change without a push). */
    async show(roomId) {
      if (!view.shown) loadRooms().catch(() => {});
      view.shown = true;
      if (roomId) await openRoom(roomId);
      else closeRoomView();
    },
    /** Leaving the rooms page. */
    hide() {
      view.shown = false;
      if (view.roomId) closeRoomView();
    },
    /** The room was too far behind to replay: start it over from its history. */
    reopen() {
      const id = view.roomId;
      if (!id) return;
      view.roomId = null;
      openRoom(id).catch((e) => app.fail(e));
    },
    relabel() {
      renderList();
      if (view.roomId) {
        showRoomState();
        const id = view.roomId;
        view.roomId = null;
        openRoom(id).catch(() => {});
      }
    },
    reset() {
      live.unfollow('room');
      Object.assign(view, { roomId: null, cursor: null, lastSeen: null, lastMarked: null, peerReadId: null });
      box().replaceChildren();
    },
  };
}
