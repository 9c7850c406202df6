// Devices (devices.kubeedge.io): each property's reported and desired value,
// a live plot of each numeric one, and a form to set a desired value.

import { ApiError, listAndWatch } from "./api.js";
import { h, fill, when, coalesce } from "./dom.js";
import { chart } from "./chart.js";
import { absorb, deviceKey, forget, numeric } from "./series.js";
import { missing } from "./live.js";

const GROUP = "/apis/devices.kubeedge.io/v1beta1";
const PAGE = 25; // devices per page, read from the API page by page (limit/continue)

function twinsOf(dev) {
  const out = new Map();
  for (const t of (dev.status || {}).twins || []) if (t && typeof t.propertyName === "string") out.set(t.propertyName, t);
  return out;
}

/** Property names: the spec's in order, then any only the status reports. */
function propertyNames(dev) {
  const names = ((dev.spec || {}).properties || []).map((p) => p && p.name).filter((n) => typeof n === "string");
  for (const n of twinsOf(dev).keys()) if (!names.includes(n)) names.push(n);
  return names;
}

function desiredOf(dev, name) {
  const p = ((dev.spec || {}).properties || []).find((q) => q && q.name === name);
  const d = p && p.desired && p.desired.value;
  return typeof d === "string" ? d : null;
}

function valueText(v) {
  return v === null || v === undefined ? h("span", { class: "muted" }, "–") : String(v);
}

function reportedAt(twin) {
  const ts = twin && twin.reported && twin.reported.metadata && twin.reported.metadata.timestamp;
  return typeof ts === "string" && /^\d{1,15}$/.test(ts) ? Number(ts) : null;
}

function deviceLink(dev) {
  const ns = dev.metadata.namespace || "default";
  return `#/devices/${encodeURIComponent(ns)}/${encodeURIComponent(dev.metadata.name)}`;
}

function stateBadge(dev) {
  const state = (dev.status || {}).state;
  return h("span", { class: `badge state ${state === "online" || state === "ok" ? "ok" : state ? "warn" : ""}` }, state || "no state");
}

function deviceCard(dev, series) {
  const twins = twinsOf(dev);
  return h("article", { class: "card device", "data-name": deviceKey(dev) },
    h("div", { class: "card-head" },
      h("a", { class: "name", href: deviceLink(dev) }, dev.metadata.name),
      h("span", { class: "muted" }, dev.metadata.namespace || ""), stateBadge(dev)),
    h("p", { class: "muted" }, `node ${(dev.spec || {}).nodeName || "none"}`),
    h("table", { class: "props" },
      h("thead", {}, h("tr", {}, h("th", {}, "property"), h("th", {}, "reported"), h("th", {}, "desired"), h("th", {}, ""))),
      h("tbody", {}, propertyNames(dev).map((name) => {
        const r = twins.get(name)?.reported?.value;
        const points = series.get(name) || [];
        return h("tr", { class: "prop", "data-prop": name },
          h("td", {}, name),
          h("td", { class: "reported" }, valueText(r)),
          h("td", { class: "desired" }, valueText(desiredOf(dev, name))),
          h("td", { class: "spark-cell" }, numeric(r) !== null || points.length ? chart(points, { small: true, title: name }) : null));
      }))));
}

/** The devices of all namespaces, a page at a time, each page kept live. */
export function mountDevices(root, ctx) {
  const tokens = [""]; // continue token of each page seen (page 0: none)
  let index = 0;
  let pageAbort = null;
  const items = new Map();
  let more = false;
  const summary = h("p", { class: "summary muted" }, "loading…");
  const list = h("div", { class: "cards" });
  const notice = h("p", { class: "notice", hidden: true, role: "status" });
  const prev = h("button", { type: "button", class: "prev", onclick: () => show(index - 1) }, "‹ previous");
  const next = h("button", { type: "button", class: "next", onclick: () => show(index + 1) }, "next ›");
  const where = h("span", { class: "muted" });
  fill(root, h("h2", {}, "Devices"), summary, notice, list, h("nav", { class: "pager" }, prev, where, next));

  const draw = coalesce(() => {
    if (ctx.signal.aborted) return;
    const devs = [...items.values()].sort((a, b) => deviceKey(a).localeCompare(deviceKey(b)));
    summary.textContent = `page ${index + 1}: ${devs.length} device${devs.length === 1 ? "" : "s"}${more ? ", more on the next pages" : ""}`;
    fill(list, devs.length ? devs.map((d) => deviceCard(d, absorb(d))) : h("p", { class: "muted" }, "no devices"));
    prev.disabled = index === 0;
    next.disabled = !more;
    where.textContent = `page ${index + 1}`;
  });

  function show(i) {
    if (pageAbort) pageAbort.abort();
    pageAbort = new AbortController();
    const signal = pageAbort.signal;
    ctx.signal.addEventListener("abort", () => pageAbort.abort(), { once: true });
    index = i;
    listAndWatch(ctx.api, `${GROUP}/devices`, {
      signal,
      list: async () => {
        let page;
        try {
          page = await ctx.api.page(`${GROUP}/devices`, { limit: PAGE, cont: tokens[index], signal });
        } catch (err) {
          if (!(err instanceof ApiError && err.status === 410 && index > 0)) throw err;
          // the pages' revision was compacted away: start again from the first
          notice.hidden = false;
          notice.textContent = "The device list changed too much meanwhile: back to the first page.";
          index = 0;
          tokens.length = 1;
          page = await ctx.api.page(`${GROUP}/devices`, { limit: PAGE, signal });
        }
        tokens.length = index + 1;
        if (page.next) tokens.push(page.next);
        more = Boolean(page.next);
        items.clear();
        for (const d of page.items) items.set(deviceKey(d), d);
        return { items: page.items, rv: page.rv };
      },
      onList: draw,
      onEvent(type, dev) {
        const key = deviceKey(dev);
        if (!items.has(key)) return; // another page's (or a new device: it shows when paged to)
        if (type === "DELETED") { items.delete(key); forget(key); } else items.set(key, dev);
        draw();
      },
      onState: (state, why) => ctx.live("devices", state, why),
    });
  }
  show(0);
}

function propertyPanel(ctx, name, model, submit) {
  const spec = model.get(name) || {};
  const writable = spec.accessMode !== "ReadOnly";
  const input = h("input", { name: "value", "aria-label": `desired ${name}`, autocomplete: "off", required: true });
  const message = h("span", { class: "form-message", role: "status" });
  const form = writable
    ? h("form", { class: "desired-form", "data-prop": name },
        h("label", {}, "set desired ", input), h("button", { type: "submit" }, "Set"), message)
    : h("p", { class: "muted" }, "read-only property");
  if (writable) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      message.className = "form-message";
      message.textContent = "saving…";
      try {
        await submit(name, input.value);
        message.textContent = `desired ${name} = ${input.value} saved; the board applies it`;
      } catch (err) {
        if (ctx.signal.aborted) return;
        message.className = "form-message error";
        message.textContent = `not saved: ${err.message}`;
      }
    });
  }
  const el = {
    root: null, input,
    reported: h("dd", { class: "reported" }),
    at: h("dd", { class: "reported-at" }),
    desired: h("dd", { class: "desired" }),
    observed: h("dd", { class: "observed" }),
    plot: h("div", { class: "plot" }),
  };
  el.root = h("section", { class: "card prop-panel", "data-prop": name },
    h("h3", {}, name, spec.type ? h("small", { class: "muted" }, ` ${spec.type.toLowerCase()}`) : null,
      spec.unit ? h("small", { class: "muted" }, ` (${spec.unit})`) : null),
    h("dl", {},
      h("dt", {}, "reported"), el.reported,
      h("dt", {}, "at"), el.at,
      h("dt", {}, "desired"), el.desired,
      h("dt", {}, "applied desired"), el.observed),
    el.plot, form);
  return el;
}

/** One device: its values, a plot per numeric property, the desired-value forms. */
export async function mountDevice(root, ctx, ns, name) {
  const path = `${GROUP}/namespaces/${encodeURIComponent(ns)}/devices`;
  const title = h("h2", {}, `Device ${ns}/${name}`);
  fill(root, title, h("p", { class: "muted" }, "loading…"));
  let dev;
  try {
    dev = await ctx.api.get(`${path}/${encodeURIComponent(name)}`, null, ctx.signal);
  } catch (err) {
    if (!ctx.signal.aborted) fill(root, title, missing("Device", `${ns}/${name}`, err));
    return;
  }
  const model = new Map(); // property → the DeviceModel's description (type, accessMode, unit)
  const modelName = (dev.spec || {}).deviceModelRef && dev.spec.deviceModelRef.name;
  if (modelName) {
    try {
      const m = await ctx.api.get(`${GROUP}/namespaces/${encodeURIComponent(ns)}/devicemodels/${encodeURIComponent(modelName)}`, null, ctx.signal);
      for (const p of (m.spec || {}).properties || []) if (p && p.name) model.set(p.name, p);
    } catch { /* no model: every property is offered as writable, the API decides */ }
  }
  const info = h("dl", { class: "device-info" });
  const gone = h("div", { class: "notice not-found", role: "alert", hidden: true });
  const panels = new Map();
  const grid = h("div", { class: "cards wide" });
  fill(root, title, gone, info, grid);

  async function submit(prop, value) {
    const props = (dev.spec || {}).properties || [];
    const i = props.findIndex((p) => p && p.name === prop);
    if (i < 0) throw new Error(`the device has no property ${prop} in its spec`);
    // kubectl patch --type=json: the test guards against the list having moved
    const ops = [{ op: "test", path: `/spec/properties/${i}/name`, value: prop }];
    ops.push(props[i].desired && typeof props[i].desired === "object"
      ? { op: "add", path: `/spec/properties/${i}/desired/value`, value }
      : { op: "add", path: `/spec/properties/${i}/desired`, value: { value } });
    dev = await ctx.api.request("PATCH", `${path}/${encodeURIComponent(name)}`, {
      body: ops, contentType: "application/json-patch+json", signal: ctx.signal,
    });
    draw();
  }

  const draw = coalesce(() => {
    if (ctx.signal.aborted || !dev) return;
    const series = absorb(dev);
    const twins = twinsOf(dev);
    const st = dev.status || {};
    fill(info,
      h("dt", {}, "node"), h("dd", {}, (dev.spec || {}).nodeName
        ? h("a", { href: `#/nodes/${encodeURIComponent(dev.spec.nodeName)}` }, dev.spec.nodeName) : "none"),
      h("dt", {}, "model"), h("dd", {}, modelName || "none"),
      h("dt", {}, "state"), h("dd", {}, stateBadge(dev)),
      st.lastOnlineTime ? [h("dt", {}, "last online"), h("dd", {}, st.lastOnlineTime)] : null);
    for (const prop of propertyNames(dev)) {
      let p = panels.get(prop);
      if (!p) {
        p = propertyPanel(ctx, prop, model, submit);
        panels.set(prop, p);
        grid.append(p.root);
        const d = desiredOf(dev, prop);
        if (d !== null) p.input.value = d;
      }
      const twin = twins.get(prop);
      fill(p.reported, valueText(twin?.reported?.value));
      fill(p.at, when(reportedAt(twin)));
      fill(p.desired, valueText(desiredOf(dev, prop)));
      fill(p.observed, valueText(twin?.observedDesired?.value));
      const points = series.get(prop) || [];
      fill(p.plot, numeric(twin?.reported?.value) !== null || points.length
        ? chart(points, { title: prop }) : h("p", { class: "muted" }, "not numeric: no plot"));
    }
  });

  listAndWatch(ctx.api, path, {
    params: { fieldSelector: `metadata.name=${name}` },
    signal: ctx.signal,
    onList(list) {
      if (list.length) { dev = list[0]; gone.hidden = true; draw(); } else deleted();
    },
    onEvent(type, obj) {
      if (type === "DELETED") { deleted(); return; }
      dev = obj;
      gone.hidden = true;
      draw();
    },
    onState: (state, why) => ctx.live("device", state, why),
  });

  function deleted() {
    gone.hidden = false;
    gone.textContent = `Device ${ns}/${name} was deleted.`;
    forget(`${ns}/${name}`);
  }
}
