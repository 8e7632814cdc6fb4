// The counselor directory: search (server-side, every word must match the name, headline or
// bio), a filter (everyone, or those I have an open session with) and sort; each card starts
// a session or reopens the room I already have with them.

import { $, h, avatar } from '../dom.js';
import { t, compare } from '../i18n.js';

export function setupDirectory(app) {
  let items = [];
  let query = '';
  let timer = null;
  let seq = 0;

  function render() {
    const list = $('counselors');
    const mineOnly = $('dir-filter').value === 'mine';
    const openRoomWith = (id) => app.rooms.some((r) => r.counselor_id === id && !r.closed_at);
    const sorted = items.filter((c) => !mineOnly || openRoomWith(c.user_id));
    if ($('dir-sort').value === 'name') sorted.sort((a, b) => compare(a.nickname ?? '', b.nickname ?? ''));
    $('dir-count').textContent = sorted.length > 0 ? t('dir.count', { n: sorted.length }) : '';
    if (sorted.length === 0) {
      let empty = h('strong', {}, t('dir.empty'));
      if (query) empty = [h('strong', {}, t('dir.nomatch', { q: query })), t('dir.nomatch.hint')];
      else if (mineOnly && items.length > 0) empty = h('strong', {}, t('dir.nomine'));
      list.replaceChildren(h('li', { class: 'empty' }, empty));
      return;
    }
    list.replaceChildren(...sorted.map((c) => {
      const name = c.nickname ?? t('role.counselor');
      const existing = app.rooms.find((r) => r.counselor_id === c.user_id && !r.closed_at);
      const headingId = `counselor-${c.user_id}`;
      return h('li', { class: 'card counselor', 'aria-labelledby': headingId, dataset: { counselor: c.user_id } },
        h('div', { class: 'who' }, avatar(name, c.photo_url), h('div', {},
          h('h2', { id: headingId, class: 'name' }, name),
          h('p', { class: 'muted' }, c.headline))),
        h('p', { class: 'bio' }, c.bio),
        h('button', {
          class: 'btn primary', type: 'button', 'aria-describedby': headingId,
          onclick: (ev) => {
            const button = ev.currentTarget;
            if (existing) {
              app.go(`/rooms/${existing.room_id}`);
              return;
            }
            button.disabled = true;
            app.rooms$.startWith(c.user_id).catch((e) => app.fail(e)).finally(() => { button.disabled = false; });
          },
        }, t(existing ? 'dir.open' : 'dir.start')));
    }));
  }

  async function load() {
    const mine = ++seq;
    const q = query ? `&q=${encodeURIComponent(query)}` : '';
    const r = await fetch(`/counselors?limit=200${q}`);
    const j = await r.json();
    if (mine !== seq) return;
    if (!r.ok) throw Object.assign(new Error(j?.error?.message ?? 'error'), { code: j?.error?.code });
    items = j.items;
    for (const c of items) if (c.nickname) app.names.set(c.user_id, c.nickname);
    render();
  }

  $('dir-q').addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      query = $('dir-q').value.trim();
      load().catch((e) => app.fail(e));
    }, 250);
  });
  $('dir-search').addEventListener('submit', (ev) => {
    ev.preventDefault();
    clearTimeout(timer);
    query = $('dir-q').value.trim();
    load().catch((e) => app.fail(e));
  });
  $('dir-sort').addEventListener('change', render);
  $('dir-filter').addEventListener('change', render);

  return {
    show: () => load(),
    relabel: render,
    /** Names of counselors, for rooms the read model has not named yet. */
    preload: () => load().catch(() => {}),
  };
}
