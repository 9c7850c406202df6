// The gateway's Kubernetes-shaped API, with the admin token as Bearer: requests,
// paged lists (limit/continue) and watches (?watch=1: one JSON event per line,
// read as the chunks arrive).

export class ApiError extends Error {
  constructor(status, reason, message) {
    super(message);
    this.status = status; // the HTTP status, 0 when the gateway could not be reached
    this.reason = reason; // the Status reason ("NotFound", "Expired", ...)
  }
}

async function failure(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON */ }
  const message = (body && body.message) || `${resp.status} ${resp.statusText}`;
  return new ApiError(resp.status, (body && body.reason) || "", message);
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

export class Api {
  /** `onUnauthorized(error)` runs when the gateway refuses the token (401). */
  constructor(token, onUnauthorized) {
    this.token = token;
    this.onUnauthorized = onUnauthorized || (() => {});
  }

  async fetch(method, path, { body, contentType, signal } = {}) {
    const headers = { Authorization: `Bearer ${this.token}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = contentType || "application/json";
    let resp;
    try {
      resp = await fetch(path, {
        method, headers, signal, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new ApiError(0, "Unreachable", `cannot reach the gateway (${err.message})`);
    }
    if (!resp.ok) {
      const err = await failure(resp);
      if (resp.status === 401) this.onUnauthorized(err);
      throw err;
    }
    return resp;
  }

  async request(method, path, options = {}) {
    const resp = await this.fetch(method, path, options);
    return resp.status === 204 ? null : resp.json();
  }

  get(path, params, signal) {
    return this.request("GET", path + query(params), { signal });
  }

  /** One page: {items, rv, next} (`next`: the continue token of the rest, if any). */
  async page(path, { limit, cont, params, signal } = {}) {
    const list = await this.get(path, { ...params, limit, continue: cont }, signal);
    return { items: list.items || [], rv: list.metadata.resourceVersion, next: list.metadata.continue || "" };
  }

  /** The whole list, read in pages of 500 at one revision: {items, rv}. */
  async list(path, params, signal) {
    const items = [];
    let cont = "";
    let rv = "";
    do {
      const p = await this.page(path, { limit: 500, cont, params, signal });
      items.push(...p.items);
      if (!rv) rv = p.rv;
      cont = p.next;
    } while (cont);
    return { items, rv };
  }

  /** Stream the watch of `path` from `rv`, calling `onEvent({type, object})`
   * per line, until the server ends it (resolves) or it fails (throws). */
  async watchOnce(path, rv, params, onEvent, signal) {
    const resp = await this.fetch("GET", path + query({ ...params, watch: "1", resourceVersion: rv }), { signal });
    const reader = resp.body.getReader();
    const text = new TextDecoder();
    let buffered = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffered += text.decode(value, { stream: true });
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (line) onEvent(JSON.parse(line));
        }
      }
    } finally {
      reader.cancel().catch(() => {}); // a handler that threw: let the connection go
    }
  }
}

/** List `path` then keep it current through its watch until `signal` aborts:
 * `onList(items)` with the whole list (again after a watch fell too far behind:
 * 410 Expired), `onEvent(type, object)` per change, `onState("live"|"retrying", why)`.
 * A watch that ends or breaks is resumed from the last revision seen. `list`,
 * if given, lists instead (one page of a paged list: {items, rv}). */
export async function listAndWatch(api, path, { params, signal, onList, onEvent, onState, list }) {
  const lister = list || (() => api.list(path, params, signal)); // {items, rv}
  let rv = "";
  let failures = 0;
  while (!signal.aborted) {
    try {
      if (!rv) {
        const listed = await lister();
        rv = listed.rv;
        onList(listed.items);
      }
      onState("live");
      await api.watchOnce(path, rv, params, (ev) => {
        failures = 0;
        if (ev.type === "ERROR") {
          const e = new ApiError(ev.object?.code || 500, ev.object?.reason || "", ev.object?.message || "watch error");
          throw e;
        }
        rv = ev.object?.metadata?.resourceVersion || rv;
        onEvent(ev.type, ev.object);
      }, signal);
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 401) return;
      if (err instanceof ApiError && err.status === 410) rv = ""; // too old: list again
      failures += 1;
      onState("retrying", err.message);
    }
    if (signal.aborted) return;
    await sleep(Math.min(10000, 250 * 2 ** Math.min(failures, 6)), signal);
  }
}
