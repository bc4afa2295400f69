// DOM helpers. Owns element creation; every piece of text goes in as a text node, never as
// HTML (log lines and names are untrusted input). Nothing here touches the network.

/**
 * Creates an element. `attrs` keys: `class`, `text` (textContent), `on<event>` (listener),
 * `dataset` (object), any other key is set as an attribute (`hidden: true` sets it empty,
 * false/null/undefined leaves it out). Children: nodes or strings (inserted as text).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces every child of `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
}

/** A short, human date: `2026-12-01 23:42:13` in local time, or `-`. */
/**
 * Makes `el`'s children exactly `nodes` (in order) without taking out a child that stays: a
 * node detached and put back between a mousedown and its mouseup gets no click, so replacing
 * every row on each render (a live log renders per frame) lost clicks on its rows.
 */
export function reconcile(el, nodes) {
  const wanted = new Set(nodes);
  for (let child = el.firstChild; child;) {
    const next = child.nextSibling;
    if (!wanted.has(child)) child.remove();
    child = next;
  }
  // What stays is in order (rows by line number): new nodes go in between, none is moved.
  let at = el.firstChild;
  for (const node of nodes) {
    if (node === at) at = at.nextSibling;
    else el.insertBefore(node, at);
  }
}

export function when(iso) {
  if (!iso) return '-';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** `1h 02m 03s` style duration from seconds. */
export function duration(secs) {
  if (secs === null || secs === undefined || secs < 0) return '-';
  secs = Math.round(secs);
  const hrs = Math.floor(secs / 3600);
  const mins = Math.floor((secs % 3600) / 60);
  const s = secs % 60;
  if (hrs) return `${hrs}h ${String(mins).padStart(2, '0')}m ${String(s).padStart(2, '0')}s`;
  if (mins) return `${mins}m ${String(s).padStart(2, '0')}s`;
  return `${s}s`;
}

/** Statuses that never change again. */
export const TERMINAL = new Set(['success', 'aborted', 'build-error', 'crashed-error', 'timeout-error', 'hook-error']);

/** A status badge; its class carries the colour (`badge-success`, `badge-building`, …). */
export function badge(status) {
  return h('span', { class: `badge badge-${status || 'unknown'}`, dataset: { status: status || '' }, text: status || '?' });
}

/** Shows a transient message in the live region. */
export function toast(message, kind = 'info') {
  const el = document.getElementById('toast');
  if (!el) return;
  el.textContent = message;
  el.className = `toast toast-${kind} toast-shown`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.className = 'toast'; }, 6000);
}
