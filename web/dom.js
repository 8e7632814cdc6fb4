// Small DOM helpers. Text from the server always goes in as text nodes, never as markup.

/** The element with `id`. */
export const $ = (id) => document.getElementById(id);

/**
 * Builds an element: h('a', { href: '#/x', class: 'btn' }, 'text', child). Attributes named
 * `on<event>` become listeners; `dataset` and `aria` objects spread; children may be strings,
 * nodes, arrays or null.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** An initial for an avatar: the first letter of a name. */
export const initial = (name) => (name ? [...name.trim()][0]?.toUpperCase() ?? '?' : '?');

/** A round avatar: the photo if there is one, the initial otherwise. */
export function avatar(name, url, large = false) {
  const a = h('span', { class: `avatar${large ? ' large' : ''}`, 'aria-hidden': 'true' });
  if (url) a.append(h('img', { src: url, alt: '' }));
  else a.textContent = initial(name);
  return a;
}

/** Waits `ms` milliseconds. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
