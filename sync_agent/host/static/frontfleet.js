// frontfleet's live client: the host's shared data and release, kept live from /_sync/events (docs/frontend.md).
// An ES module without dependencies. One stream per browser and origin, shared by its tabs: a SharedWorker where
// there is one, else one tab elected with the Web Locks API relays to the others over a BroadcastChannel.
const NAME = "frontfleet-live";
const isWorker = typeof SharedWorkerGlobalScope !== "undefined" && self instanceof SharedWorkerGlobalScope;

// One stream with resume: EventSource sends Last-Event-ID when it reconnects by itself; after a refusal (503, a
// proxy's 502) it gives up, and this opens a new one with the last id in the query, after a growing pause.
function stream(url, deliver, from = "") {
  let source, lastId = from, pause = 1000;
  const open = () => {
    const full = new URL(url, self.location.href);
    if (lastId) full.searchParams.set("last_event_id", lastId);
    source = new EventSource(full);
    for (const type of ["snapshot", "data", "release"]) {
      source.addEventListener(type, (e) => {
        pause = 1000;
        if (e.lastEventId) lastId = e.lastEventId;
        deliver({ t: type, body: JSON.parse(e.data), id: lastId });
      });
    }
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) return;
      setTimeout(open, pause * (0.5 + Math.random()));
      pause = Math.min(pause * 2, 30000);
    };
  };
  open();
}

// What a tab holds: the data, the release, the last id; apply() returns the keys an event changed.
function holder() {
  const s = { data: {}, release: undefined, id: "" };
  s.apply = (m) => {
    const b = m.body, changed = [];
    if (m.id) s.id = m.id;
    if (m.t === "snapshot" || m.t === "state") {
      for (const k of new Set([...Object.keys(s.data), ...Object.keys(b.data)])) {
        if (JSON.stringify(s.data[k]) !== JSON.stringify(b.data[k])) changed.push(k);
      }
      s.data = { ...b.data };
    } else if (m.t === "data") {
      if (b.op === "set") s.data[b.key] = b.value; else delete s.data[b.key];
      changed.push(b.key);
    }
    if ("release" in b) s.release = b.release;
    return changed;
  };
  s.state = () => ({ t: "state", body: { data: s.data, release: s.release }, id: s.id });
  return s;
}

if (isWorker) {  // the shared worker: one stream, every tab's port
  const ports = new Set(), s = holder();
  let started = false;
  self.onconnect = (e) => {
    const port = e.ports[0];
    ports.add(port);
    port.onmessage = (m) => {
      if (m.data.t === "bye") { ports.delete(port); return; }
      if (m.data.t !== "open") return;
      ports.add(port);  // again, for a page back from the back-forward cache
      if (s.release !== undefined) port.postMessage(s.state());
      if (started) return;
      started = true;
      stream(m.data.url, (msg) => { s.apply(msg); for (const p of ports) p.postMessage(msg); });
    };
    port.start();
  };
}

const local = holder();
const keyed = new Map(), everyKey = new Set(), releaseCbs = new Set();
let options = null, pageRelease, noticeText;

/** The live copy of the shared data (read only: the stream replaces it). */
export const data = new Proxy({}, { get: (_, k) => local.data[k], has: (_, k) => k in local.data,
  ownKeys: () => Reflect.ownKeys(local.data),
  getOwnPropertyDescriptor: (_, k) => Reflect.getOwnPropertyDescriptor(local.data, k) });

/** The release this page's host serves now: {id, label}, or null/undefined before the first event. */
export const release = () => local.release;

function receive(m) {
  const before = local.release;
  const changed = local.apply(m);
  for (const k of changed) {
    for (const cb of keyed.get(k) || []) cb(local.data[k], k);
  }
  if (changed.length) for (const cb of everyKey) cb(local.data);
  const now = local.release;
  if (now === undefined || (before !== undefined && (before && before.id) === (now && now.id))) return;
  if (pageRelease === undefined) pageRelease = now ? now.id : null;
  if (before !== undefined) for (const cb of releaseCbs) cb(now, before);
  if (noticeText && now && now.id !== pageRelease) notice(now);
}

function notice(rel) {
  if (typeof document === "undefined" || document.getElementById(NAME)) return;
  const box = document.createElement("div");
  box.id = NAME;
  box.setAttribute("role", "status");
  box.style.cssText = "position:fixed;bottom:1em;right:1em;z-index:2147483647;padding:.75em 1em;border-radius:6px;"
    + "background:#222;color:#fff;font:14px system-ui,sans-serif;box-shadow:0 2px 8px #0005";
  box.textContent = noticeText.replace("{label}", rel.label) + " ";
  const button = document.createElement("button");
  button.textContent = "Reload";
  button.onclick = () => location.reload();
  box.append(button);
  document.body.append(box);
}

/** Start the stream (subscribe/onRelease call this for you). options: {url: "/_sync/events", notice: false | true |
 *  "text, {label} for the release's label", shared: true (false: one stream per tab)}. */
export function start(opts = {}) {
  if (options) return;
  options = { url: "/_sync/events", shared: true, ...opts };
  const env = globalThis.__ENV__;
  if (env && typeof env.release === "string") pageRelease = env.release;
  if (options.notice) noticeText = options.notice === true ? "A new version ({label}) is live." : options.notice;
  const alone = () => stream(options.url, receive, local.id);
  if (!options.shared) return alone();
  const elect = () => {
    if (typeof BroadcastChannel === "undefined" || !navigator.locks) return alone();
    const channel = new BroadcastChannel(NAME);
    let leader = false;
    channel.onmessage = (e) => {
      if (e.data.t === "hello") { if (leader && local.release !== undefined) channel.postMessage(local.state()); }
      else if (!leader) receive(e.data);
    };
    navigator.locks.request(NAME, () => {
      leader = true;  // the tab before held the stream (or none did): resume where this tab is
      stream(options.url, (m) => { receive(m); channel.postMessage(m); }, local.id);
      return new Promise(() => {});  // held until this tab goes away; then the next tab takes over
    });
    channel.postMessage({ t: "hello" });
  };
  if (typeof SharedWorker === "undefined") return elect();
  try {
    const worker = new SharedWorker(new URL(import.meta.url), { type: "module", name: NAME });
    const open = { t: "open", url: new URL(options.url, location.href).href };
    worker.onerror = () => { worker.onerror = null; elect(); };  // the module worker did not load
    worker.port.onmessage = (e) => receive(e.data);
    worker.port.postMessage(open);
    addEventListener("pagehide", () => worker.port.postMessage({ t: "bye" }));
    addEventListener("pageshow", (e) => { if (e.persisted) worker.port.postMessage(open); });
  } catch (err) {
    elect();  // no module workers here: elect a leader instead
  }
}

/** Call cb(value, key) now (when the value is known) and whenever key changes; "*" calls cb(data) on every
 *  change. Returns a function that unsubscribes. */
export function subscribe(key, cb) {
  start();
  if (key === "*") {
    everyKey.add(cb);
    if (local.release !== undefined) cb(local.data);
    return () => everyKey.delete(cb);
  }
  if (!keyed.has(key)) keyed.set(key, new Set());
  keyed.get(key).add(cb);
  if (local.release !== undefined) cb(local.data[key], key);
  return () => keyed.get(key).delete(cb);
}

/** Call cb(release, previous) when the host switches to another release ({id, label}). */
export function onRelease(cb) {
  start();
  releaseCbs.add(cb);
  return () => releaseCbs.delete(cb);
}
