// The demo app: the shared data and the release, live. env.js (rendered by the agent) paints the page at load;
// the live client (/_sync/frontfleet.js, served by the host) keeps it current and says when a new version is live.
import { onRelease, release, start, subscribe } from "/_sync/frontfleet.js";

const env = window.__ENV__ || { release: "unknown", label: "", data: {} };
const byId = (id) => document.getElementById(id);

function showData(data) {
  byId("data").textContent = JSON.stringify(data, null, 2);
  const banner = data.banner;
  byId("banner").textContent = banner && banner.text ? banner.text : "";
}

function showLive(now) {
  byId("live").textContent = now ? `${now.label || now.id} (${now.id})` : "none";
}

byId("release").textContent = env.release;
byId("label").textContent = env.label || "-";
showData(env.data || {});
document.documentElement.dataset.ready = "true";

start({ notice: "A new version ({label}) is live — reload to get it." });
subscribe("*", showData);
onRelease(showLive);
// The client calls back on changes; the first event it gets (the host's snapshot) says the stream is open.
const opened = setInterval(() => {
  if (release() === undefined) return;
  clearInterval(opened);
  showLive(release());
  document.documentElement.dataset.live = "true";
}, 50);
