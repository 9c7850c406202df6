// Nodes: Ready or NotReady, last heartbeat, offline since, architecture,
// labels, and the pods bound to each.

import { h, fill, when, parseTime, pager, coalesce } from "./dom.js";
import { watchCollection, missing, filterBox } from "./live.js";
import { podStatus } from "./pods.js";

const PAGE = 50;

function readyCondition(node) {
  return ((node.status || {}).conditions || []).find((c) => c && c.type === "Ready") || null;
}

export function isReady(node) {
  const c = readyCondition(node);
  return Boolean(c && c.status === "True");
}

function nodeCard(node, pods, detail) {
  const name = node.metadata.name;
  const cond = readyCondition(node);
  const ready = isReady(node);
  const labels = node.metadata.labels || {};
  const info = (node.status || {}).nodeInfo || {};
  const arch = info.architecture || labels["kubernetes.io/arch"] || "unknown";
  const mine = pods.filter((p) => (p.spec || {}).nodeName === name)
    .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  return h("article", { class: `card node ${ready ? "is-ready" : "is-not-ready"}`, "data-name": name },
    h("div", { class: "card-head" },
      h("a", { href: `#/nodes/${encodeURIComponent(name)}`, class: "name" }, name),
      h("span", { class: `badge ready ${ready ? "ok" : "bad"}`,
        title: cond ? `Ready=${cond.status}${cond.reason ? ` (${cond.reason})` : ""}${cond.message ? `: ${cond.message}` : ""}` : "no Ready condition yet" },
        ready ? "Ready" : "NotReady")),
    h("dl", {},
      h("dt", {}, "architecture"), h("dd", { class: "arch" }, arch),
      // The gateway writes Ready on transitions only: while a node is Ready its
      // heartbeats arrive (else it would be NotReady); once it is not, the
      // condition says when it was last heard from and when it went offline.
      ready
        ? [h("dt", {}, "last heartbeat"), h("dd", { class: "heartbeat" }, "connected"),
           h("dt", {}, "Ready since"), h("dd", { class: "ready-since" }, when(parseTime(cond && cond.lastTransitionTime)))]
        : [h("dt", {}, "last heartbeat"), h("dd", { class: "heartbeat" }, when(parseTime(cond && cond.lastHeartbeatTime))),
           h("dt", {}, "offline since"), h("dd", { class: "offline-since" }, when(parseTime(cond && cond.lastTransitionTime)))],
      detail ? [
        h("dt", {}, "OS image"), h("dd", {}, info.osImage || "unknown"),
        h("dt", {}, "kernel"), h("dd", {}, info.kernelVersion || "unknown"),
        h("dt", {}, "agent"), h("dd", {}, info.kubeletVersion || "unknown"),
        h("dt", {}, "addresses"), h("dd", {}, ((node.status || {}).addresses || []).map((a) => `${a.address} (${a.type})`).join(", ") || "none"),
      ] : null),
    h("div", { class: "labels" }, Object.entries(labels).sort().map(([k, v]) => h("span", { class: "label" }, v ? `${k}=${v}` : k))),
    h("div", { class: "pods" },
      h("span", { class: "muted" }, `${mine.length} pod${mine.length === 1 ? "" : "s"}`),
      mine.map((p) => {
        const st = podStatus(p);
        return h("span", { class: `pod-chip phase-${(p.status || {}).phase || "Pending"}`, "data-name": p.metadata.name,
          title: `${p.metadata.namespace}/${p.metadata.name}: ${st}` }, `${p.metadata.name} · ${st}`);
      })),
    detail && node.status && node.status.conditions ? h("table", { class: "conditions" },
      h("thead", {}, h("tr", {}, ["condition", "status", "reason", "since"].map((t) => h("th", {}, t)))),
      h("tbody", {}, node.status.conditions.map((c) => h("tr", {},
        h("td", {}, c.type), h("td", {}, c.status), h("td", {}, c.reason || ""),
        h("td", {}, when(parseTime(c.lastTransitionTime))))))) : null);
}

/** All nodes (paged, filtered by name), or with `name` that node alone. */
export async function mountNodes(root, ctx, name) {
  const state = { page: 0, filter: "" };
  const title = h("h2", {}, name ? `Node ${name}` : "Nodes");
  const summary = h("p", { class: "summary muted" }, "loading…");
  const list = h("div", { class: name ? "cards one" : "cards" });
  fill(root, title, summary, name ? null : filterBox("filter by name or label", state, () => draw()), list);
  if (name) {
    try {
      await ctx.api.get(`/api/v1/nodes/${encodeURIComponent(name)}`, null, ctx.signal);
    } catch (err) {
      if (ctx.signal.aborted) return;
      fill(root, title, missing("Node", name, err));
      return;
    }
  }
  let listed = false;
  const draw = coalesce(() => {
    if (ctx.signal.aborted || !listed) return;
    const all = [...nodes.values()];
    const notReady = all.filter((n) => !isReady(n)).length;
    summary.textContent = `${all.length} node${all.length === 1 ? "" : "s"}: ${all.length - notReady} Ready, ${notReady} NotReady`;
    if (name && !nodes.size) {
      fill(list, h("div", { class: "notice not-found", role: "alert" }, `Node "${name}" was deleted.`));
      return;
    }
    const shown = all.filter((n) => !state.filter || n.metadata.name.toLowerCase().includes(state.filter)
      || Object.entries(n.metadata.labels || {}).some(([k, v]) => `${k}=${v}`.toLowerCase().includes(state.filter)))
      .sort((a, b) => (isReady(a) - isReady(b)) || a.metadata.name.localeCompare(b.metadata.name));
    const podList = [...pods.values()];
    const [cards, nav] = pager(shown, state, PAGE, (n) => nodeCard(n, podList, Boolean(name)), draw);
    fill(list, cards, nav);
  });
  const byName = name ? { fieldSelector: `metadata.name=${name}` } : undefined;
  const onNode = name ? { fieldSelector: `spec.nodeName=${name}` } : undefined;
  const nodes = watchCollection(ctx, "/api/v1/nodes", { params: byName, onChange: () => { listed = true; draw(); } });
  const pods = watchCollection(ctx, "/api/v1/pods", { params: onNode, onChange: draw });
}
