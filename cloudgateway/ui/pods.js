// Pods: phase (or the reason a container waits or ended), restarts, node, and
// the last Event about each.

import { h, fill, when, pager, coalesce } from "./dom.js";
import { watchCollection, eventTime, filterBox, objectKey } from "./live.js";

const PAGE = 50;

/** What `kubectl get pods` shows as STATUS. */
export function podStatus(pod) {
  if (pod.metadata.deletionTimestamp) return "Terminating";
  const st = pod.status || {};
  let reason = st.reason || st.phase || "Pending";
  for (const c of st.containerStatuses || []) {
    for (const k of ["waiting", "terminated"]) {
      const d = c && c.state && c.state[k];
      if (d && d.reason && !c.ready) reason = d.reason;
    }
  }
  return reason;
}

export function restarts(pod) {
  return ((pod.status || {}).containerStatuses || [])
    .reduce((n, c) => n + (Number.isInteger(c && c.restartCount) ? c.restartCount : 0), 0);
}

function podCard(pod, last) {
  const ns = pod.metadata.namespace;
  const name = pod.metadata.name;
  const phase = (pod.status || {}).phase || "Pending";
  const node = (pod.spec || {}).nodeName;
  const n = restarts(pod);
  return h("article", { class: `card pod phase-${phase}`, "data-name": `${ns}/${name}` },
    h("div", { class: "card-head" },
      h("span", { class: "name" }, name), h("span", { class: "muted" }, ns),
      h("span", { class: `badge phase ${phase === "Running" || phase === "Succeeded" ? "ok" : phase === "Failed" ? "bad" : "warn"}` }, podStatus(pod))),
    h("dl", {},
      h("dt", {}, "phase"), h("dd", { class: "phase" }, phase),
      h("dt", {}, "restarts"), h("dd", { class: `restarts${n ? " warn" : ""}` }, String(n)),
      h("dt", {}, "node"), h("dd", {}, node ? h("a", { href: `#/nodes/${encodeURIComponent(node)}` }, node) : h("span", { class: "muted" }, "not bound")),
      h("dt", {}, "last event"),
      h("dd", { class: "last-event" }, last
        ? [h("span", { class: `event-type ${last.type === "Warning" ? "warn" : ""}` }, last.reason || last.type || "Event"), " ",
           last.message || "", " ", when(eventTime(last))]
        : h("span", { class: "muted" }, "none"))));
}

export function mountPods(root, ctx) {
  const state = { page: 0, filter: "" };
  const summary = h("p", { class: "summary muted" }, "loading…");
  const list = h("div", { class: "cards" });
  fill(root, h("h2", {}, "Pods"), summary, filterBox("filter by name, namespace or node", state, () => draw()), list);
  let listed = false;
  const draw = coalesce(() => {
    if (ctx.signal.aborted || !listed) return;
    const lastEvent = new Map();
    for (const ev of events.values()) {
      const o = ev.involvedObject || {};
      if (o.kind !== "Pod") continue;
      const key = `${o.namespace || ev.metadata.namespace || ""}/${o.name}`;
      const prev = lastEvent.get(key);
      if (!prev || eventTime(ev) >= eventTime(prev)) lastEvent.set(key, ev);
    }
    const all = [...pods.values()];
    const phases = {};
    for (const p of all) { const ph = (p.status || {}).phase || "Pending"; phases[ph] = (phases[ph] || 0) + 1; }
    summary.textContent = `${all.length} pod${all.length === 1 ? "" : "s"}` +
      (all.length ? `: ${Object.entries(phases).sort().map(([k, v]) => `${v} ${k}`).join(", ")}` : "");
    const f = state.filter;
    const shown = all.filter((p) => !f || objectKey(p).toLowerCase().includes(f) || ((p.spec || {}).nodeName || "").toLowerCase().includes(f))
      .sort((a, b) => objectKey(a).localeCompare(objectKey(b)));
    const [cards, nav] = pager(shown, state, PAGE, (p) => podCard(p, lastEvent.get(objectKey(p))), draw);
    fill(list, cards.length ? cards : h("p", { class: "muted" }, "no pods"), nav);
  });
  const pods = watchCollection(ctx, "/api/v1/pods", { onChange: () => { listed = true; draw(); } });
  const events = watchCollection(ctx, "/api/v1/events", { params: { fieldSelector: "involvedObject.kind=Pod" }, onChange: draw });
}
