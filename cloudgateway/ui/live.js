// A collection of API objects kept current: listed, then watched.

import { listAndWatch } from "./api.js";
import { h } from "./dom.js";

export const objectKey = (o) => `${o.metadata.namespace || ""}/${o.metadata.name}`;

/** A Map ("ns/name" → object) of `path`'s objects, kept current while the view
 * is shown; `onChange(type, object)` after each change (type null: a new list). */
export function watchCollection(ctx, path, { params, onChange }) {
  const items = new Map();
  listAndWatch(ctx.api, path, {
    params,
    signal: ctx.signal,
    onList(list) {
      items.clear();
      for (const o of list) items.set(objectKey(o), o);
      onChange(null, null);
    },
    onEvent(type, o) {
      if (type === "DELETED") items.delete(objectKey(o));
      else items.set(objectKey(o), o);
      onChange(type, o);
    },
    onState: (state, why) => ctx.live(path + JSON.stringify(params || {}), state, why),
  });
  return items;
}

/** The message shown for an object that does not exist (or could not be read). */
export function missing(kind, name, err) {
  const text = err.status === 404
    ? `${kind} "${name}" does not exist.`
    : `${kind} "${name}" could not be read: ${err.message}`;
  return h("div", { class: "notice not-found", role: "alert" }, text,
    err.status === 404 ? h("small", {}, ` (${err.message})`) : null);
}

/** The newest time an Event says it happened at (ms), for ordering. */
export function eventTime(ev) {
  for (const t of [ev.lastTimestamp, ev.eventTime, ev.firstTimestamp, ev.metadata && ev.metadata.creationTimestamp]) {
    const ms = typeof t === "string" ? Date.parse(t) : NaN;
    if (Number.isFinite(ms)) return ms;
  }
  return 0;
}

/** A name filter box; `onInput(text)` as the user types. */
export function filterBox(placeholder, state, onInput) {
  return h("input", {
    type: "search", class: "filter", placeholder, value: state.filter || "",
    "aria-label": placeholder,
    oninput: (e) => { state.filter = e.target.value.trim().toLowerCase(); state.page = 0; onInput(); },
  });
}
