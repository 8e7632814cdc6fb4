// Call history: every call I made or received, newest first, with who, when, how it went
// and a link to its room.

import { $, h, avatar } from '../dom.js';
import { t, dateTime } from '../i18n.js';
import { describeCall, icon } from '../call.js';

export function setupHistory(app) {
  let items = null;

  function render() {
    const list = $('call-history');
    if (!items) return;
    if (items.length === 0) {
      list.replaceChildren(h('li', { class: 'empty' }, h('strong', {}, t('calls.empty'))));
      return;
    }
    list.replaceChildren(...items.map((c) => {
      const room = app.rooms.find((r) => r.room_id === c.room_id);
      const other = c.requested_by === app.me.id ? c.invitee : c.requested_by;
      const name = room ? app.rooms$.peerName(room) : app.nameOf(other);
      const { text, missed } = describeCall(c, app.me.id);
      return h('li', { dataset: { call: c.call_id } },
        avatar(name, room?.peer_photo_url),
        h('div', { class: 'grow' },
          h('strong', {}, t('calls.with', { name })),
          h('div', { class: missed ? 'missed' : 'muted' }, icon(missed ? 'phone' : 'camera'), ' ', text),
          h('div', { class: 'muted' }, h('time', { datetime: c.requested_at }, dateTime(c.requested_at)))),
        h('a', { class: 'btn small', href: `#/rooms/${c.room_id}` }, t('calls.openroom')));
    }));
  }

  return {
    async show() {
      ({ items } = await app.api('GET', '/users/me/calls'));
      render();
    },
    relabel: render,
  };
}
