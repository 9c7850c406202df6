// Small DOM and time helpers. Data from the API is only ever inserted as text
// (textContent, setAttribute), never parsed as markup.

/** An element: h("div", {class: "x", onclick: f, "data-name": n}, "text", child, [more]). */
export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, kids);
  return el;
}

function append(el, kids) {
  for (const kid of kids) {
    if (kid === null || kid === undefined || kid === false) continue;
    if (Array.isArray(kid)) append(el, kid);
    else el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
}

/** Replace everything inside `el` with `kids`. */
export function fill(el, ...kids) {
  el.replaceChildren();
  append(el, kids);
  return el;
}

/** Milliseconds since the epoch of an RFC 3339 time (null if absent or unreadable). */
export function parseTime(text) {
  if (typeof text !== "string" || !text) return null;
  const ms = Date.parse(text);
  return Number.isFinite(ms) ? ms : null;
}

/** "3s", "5m", "2h", "4d" since `ms`. */
export function age(ms, now = Date.now()) {
  let s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 120) return `${s}s`;
  s = Math.floor(s / 60);
  if (s < 120) return `${s}m`;
  s = Math.floor(s / 60);
  if (s < 48) return `${s}h`;
  return `${Math.floor(s / 24)}d`;
}

/** A <time> showing when `ms` was ("12:03:04 (5m ago)"), kept current by tickClocks(). */
export function when(ms) {
  if (ms === null || ms === undefined) return h("span", { class: "muted" }, "never");
  const t = h("time", { datetime: new Date(ms).toISOString(), "data-ms": ms, title: new Date(ms).toString() });
  t.textContent = label(ms);
  return t;
}

function label(ms) {
  const d = new Date(ms);
  const sameDay = d.toDateString() === new Date().toDateString();
  const clock = d.toLocaleTimeString([], { hour12: false });
  return `${sameDay ? clock : d.toLocaleDateString() + " " + clock} (${age(ms)} ago)`;
}

/** Refresh every <time data-ms> under `root` (no request: only the "ago" moves). */
export function tickClocks(root) {
  for (const t of root.querySelectorAll("time[data-ms]")) t.textContent = label(Number(t.dataset.ms));
}

/** A page of `items` with "previous"/"next" buttons; `render(item)` makes each element. */
export function pager(items, state, size, render, onMove) {
  const pages = Math.max(1, Math.ceil(items.length / size));
  state.page = Math.min(Math.max(0, state.page || 0), pages - 1);
  const start = state.page * size;
  const list = items.slice(start, start + size).map(render);
  const nav = pages > 1
    ? h("nav", { class: "pager" },
        h("button", { type: "button", class: "prev", disabled: state.page === 0,
          onclick: () => { state.page -= 1; onMove(); } }, "‹ previous"),
        h("span", { class: "muted" }, `page ${state.page + 1} of ${pages} (${items.length})`),
        h("button", { type: "button", class: "next", disabled: state.page >= pages - 1,
          onclick: () => { state.page += 1; onMove(); } }, "next ›"))
    : null;
  return [list, nav];
}

/** A function that runs `fn` at most once per animation frame however often it is called. */
export function coalesce(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; fn(); });
  };
}
