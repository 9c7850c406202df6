// Recent Events (the gateway keeps them an hour), newest first.

import { h, fill, when, pager, coalesce } from "./dom.js";
import { watchCollection, eventTime, filterBox } from "./live.js";

const PAGE = 100;

function row(ev) {
  const o = ev.involvedObject || {};
  return h("tr", { class: `event ${ev.type === "Warning" ? "warn" : ""}`, "data-name": ev.metadata.name },
    h("td", { "data-label": "when" }, when(eventTime(ev))),
    h("td", { "data-label": "type" }, ev.type || ""),
    h("td", { "data-label": "reason" }, ev.reason || ""),
    h("td", { "data-label": "object" }, `${(o.kind || "").toLowerCase()}/${o.name || ""}`),
    h("td", { "data-label": "message", class: "message" }, ev.message || ""),
    h("td", { "data-label": "count" }, String(ev.count || 1)));
}

export function mountEvents(root, ctx) {
  const state = { page: 0, filter: "" };
  const summary = h("p", { class: "summary muted" }, "loading…");
  const body = h("div", {});
  fill(root, h("h2", {}, "Events"), summary, filterBox("filter by object, reason or message", state, () => draw()), body);
  let listed = false;
  const draw = coalesce(() => {
    if (ctx.signal.aborted || !listed) return;
    const f = state.filter;
    const all = [...events.values()].sort((a, b) => eventTime(b) - eventTime(a));
    summary.textContent = `${all.length} event${all.length === 1 ? "" : "s"} in the last hour`;
    const shown = all.filter((ev) => !f || [ev.reason, ev.message, (ev.involvedObject || {}).name, (ev.involvedObject || {}).kind]
      .some((t) => (t || "").toLowerCase().includes(f)));
    const [rows, nav] = pager(shown, state, PAGE, row, draw);
    fill(body, rows.length
      ? h("table", { class: "events" },
          h("thead", {}, h("tr", {}, ["when", "type", "reason", "object", "message", "count"].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows))
      : h("p", { class: "muted" }, "no events"), nav);
  });
  const events = watchCollection(ctx, "/api/v1/events", { onChange: () => { listed = true; draw(); } });
}
