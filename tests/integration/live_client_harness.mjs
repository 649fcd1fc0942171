// Runs sync_agent/host/static/frontfleet.js in node against an agent's unix socket and prints what its callbacks
// receive, one JSON line each. MODE=tab: one tab with its own stream (shared: false). MODE=tabs: two tabs (two
// instances of the module) sharing one stream through a leader: node has BroadcastChannel; the Web Locks API is
// faked (the first request holds the lock; "handover" on stdin grants it to the next, as when the leader's tab
// closes). EventSource is the few lines of it the client uses: events by type, lastEventId, Last-Event-ID on its
// own reconnects, CLOSED after a refusal; each one opened prints {"opened": its query}.
import http from "node:http";

const socketPath = process.env.LIVE_SOCKET;

class EventSource {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 2;

  constructor(url) {
    this.url = new URL(url);
    this.readyState = EventSource.CONNECTING;
    this.listeners = {};
    this.lastEventId = "";
    out({ opened: this.url.search });
    this.connect();
  }

  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }

  connect() {
    const headers = this.lastEventId ? { "Last-Event-ID": this.lastEventId } : {};
    const request = http.get({ socketPath, path: this.url.pathname + this.url.search, headers }, (response) => {
      if (response.statusCode !== 200) {
        this.readyState = EventSource.CLOSED;
        response.resume();
        this.onerror?.({});
        return;
      }
      this.readyState = EventSource.OPEN;
      let buffer = "";
      response.setEncoding("utf8");
      response.on("data", (chunk) => {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this.dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      });
      response.on("end", () => this.retry());
      response.on("error", () => this.retry());
    });
    request.on("error", () => this.retry());
  }

  retry() {
    if (this.readyState === EventSource.CLOSED) return;
    this.readyState = EventSource.CONNECTING;
    this.onerror?.({});
    setTimeout(() => this.connect(), 200);
  }

  dispatch(block) {
    let type = "message", id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const at = line.indexOf(":");
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    if (id !== null) this.lastEventId = id;
    if (!data.length) return;
    for (const fn of this.listeners[type] || []) fn({ data: data.join("\n"), lastEventId: this.lastEventId });
  }
}

globalThis.EventSource = EventSource;
globalThis.self = globalThis;
globalThis.location = { href: "http://web/" };
globalThis.__ENV__ = { release: process.env.PAGE_RELEASE };

function out(line) { process.stdout.write(JSON.stringify(line) + "\n"); }

if (process.env.MODE === "tabs") {
  const waiting = [];
  let held = false;
  Object.defineProperty(globalThis, "navigator", { value: { locks: { request(name, granted) {
    if (held) waiting.push(granted); else { held = true; granted(); }
    return new Promise(() => {});
  } } } });
  process.stdin.on("data", () => { const next = waiting.shift(); if (next) next(); });
  for (const tab of [1, 2]) {
    const live = await import(`${process.env.CLIENT}?tab=${tab}`);  // a module instance per tab
    live.subscribe("banner", (value) => out({ tab, banner: value ?? null }));
  }
} else {
  const live = await import(process.env.CLIENT);
  live.start({ shared: false, url: "/_sync/events" });
  live.subscribe("banner", (value) => out({ banner: value ?? null }));
  live.subscribe("*", (all) => out({ keys: Object.keys(all).sort() }));
  live.onRelease((now, before) => out({ release: now, before }));
}
