// The dashboard: login with the admin token (kept in sessionStorage only), a
// view per hash route, each kept live by the API's watches while it is shown.

import { Api } from "./api.js";
import { h, fill, tickClocks } from "./dom.js";
import { mountNodes } from "./nodes.js";
import { mountPods } from "./pods.js";
import { mountDevices, mountDevice } from "./devices.js";
import { mountEvents } from "./events.js";

const TOKEN = "edgeflock.token";
const $ = (id) => document.getElementById(id);
let api = null;
let current = null; // {abort: AbortController, watches: Map}

const ROUTES = [
  [/^nodes$/, "nodes", (root, ctx) => mountNodes(root, ctx)],
  [/^nodes\/([^/]+)$/, "nodes", (root, ctx, [name]) => mountNodes(root, ctx, name)],
  [/^pods$/, "pods", (root, ctx) => mountPods(root, ctx)],
  [/^devices$/, "devices", (root, ctx) => mountDevices(root, ctx)],
  [/^devices\/([^/]+)\/([^/]+)$/, "devices", (root, ctx, [ns, name]) => mountDevice(root, ctx, ns, name)],
  [/^events$/, "events", (root, ctx) => mountEvents(root, ctx)],
];

function stopView() {
  if (current) current.abort.abort();
  current = null;
}

function showLogin(message) {
  stopView();
  api = null;
  sessionStorage.removeItem(TOKEN);
  $("app").hidden = true;
  $("login").hidden = false;
  const err = $("login-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("login-token").focus();
}

function showLive() {
  const el = $("live");
  const states = current ? [...current.watches.values()] : [];
  const down = states.find((s) => s.state !== "live");
  el.className = `live ${down ? "retrying" : "ok"}`;
  el.textContent = down ? "reconnecting…" : "live";
  el.title = down ? down.why || "" : "every list on this page is kept current by a watch";
}

function route() {
  if (!api) return;
  const path = decodeURIComponent(location.hash.replace(/^#\/?/, "")).replace(/\/+$/, "");
  if (!path) { location.replace("#/nodes"); return; }
  stopView();
  const view = { abort: new AbortController(), watches: new Map() };
  current = view;
  const root = $("view");
  fill(root);
  const ctx = {
    api,
    signal: view.abort.signal,
    live(key, state, why) {
      if (view !== current) return;
      view.watches.set(key, { state, why });
      showLive();
    },
  };
  showLive();
  for (const [re, name, mount] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
    document.title = `edgeflock · ${path}`;
    mount(root, ctx, m.slice(1));
    return;
  }
  fill(root, h("div", { class: "notice not-found", role: "alert" }, `There is no page "${path}" here.`));
}

async function login(token) {
  const candidate = new Api(token);
  const button = $("login-submit");
  button.disabled = true;
  try {
    await candidate.get("/api");
  } catch (err) {
    showLogin(err.status === 401
      ? "The gateway refused this token (401 Unauthorized)."
      : `Could not log in: ${err.message}`);
    return;
  } finally {
    button.disabled = false;
  }
  sessionStorage.setItem(TOKEN, token);
  start(token);
}

function start(token) {
  api = new Api(token, () => showLogin("The gateway no longer accepts this token: log in again."));
  $("login").hidden = true;
  $("app").hidden = false;
  $("login-token").value = "";
  route();
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("login-token").value.trim();
  if (token) login(token);
});
$("logout").addEventListener("click", () => showLogin(""));
window.addEventListener("hashchange", route);
setInterval(() => tickClocks(document), 5000);

const saved = sessionStorage.getItem(TOKEN);
if (saved) start(saved);
else showLogin("");
