// Each numeric device property's values over time, gathered from what the API
// shows: status.twinHistory (values a board reported while it was offline,
// kept by the gateway) and each status.twins[].reported value with its
// timestamp, as the list and the watch deliver new versions of the Device.

export const KEEP = 500; // values kept per property (the gateway keeps 100 of history)
const MAX_DEVICES = 300; // devices whose values are kept (the least recently seen go)

const devices = new Map(); // "ns/name" → Map(property → Map(ms → number))

/** The number a twin value reads as, or null if it is not one. */
export function numeric(value) {
  if (typeof value !== "string" || value.trim() === "") return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

function stamp(meta, fallback) {
  const ts = meta && meta.timestamp;
  return typeof ts === "string" && /^\d{1,15}$/.test(ts) ? Number(ts) : fallback;
}

export function deviceKey(dev) {
  return `${dev.metadata.namespace || ""}/${dev.metadata.name}`;
}

/** Take in one version of a Device; returns its series (property → [[ms, v], ...]). */
export function absorb(dev) {
  const key = deviceKey(dev);
  let props = devices.get(key);
  if (props) devices.delete(key); // re-inserted below: most recently seen last
  props = props || new Map();
  devices.set(key, props);
  while (devices.size > MAX_DEVICES) devices.delete(devices.keys().next().value);
  const status = dev.status || {};
  const add = (name, ms, value) => {
    const v = numeric(value);
    if (v === null || ms === null) return;
    let values = props.get(name);
    if (!values) props.set(name, (values = new Map()));
    values.set(ms, v);
  };
  for (const [name, ring] of Object.entries(status.twinHistory || {})) {
    for (const item of Array.isArray(ring) ? ring : []) add(name, stamp(item, null), item && item.value);
  }
  for (const twin of status.twins || []) {
    const r = twin && twin.reported;
    if (!r) continue;
    const values = props.get(twin.propertyName);
    // no timestamp: a new value counts from when it was seen
    const last = values && values.size ? [...values.values()].pop() : null;
    const ms = stamp(r.metadata, last === numeric(r.value) ? null : Date.now());
    add(twin.propertyName, ms, r.value);
  }
  const out = new Map();
  for (const [name, values] of props) {
    let points = [...values.entries()].sort((a, b) => a[0] - b[0]);
    if (points.length > KEEP) {
      points = points.slice(-KEEP);
      props.set(name, new Map(points));
    }
    out.set(name, points);
  }
  return out;
}

/** Forget a deleted device's values. */
export function forget(key) {
  devices.delete(key);
}
