// Reads the runtime config the sync agent renders on every host (/_sync/env.js sets window.__ENV__).
(function () {
  var env = window.__ENV__ || { release: "unknown", label: "", data: {} };
  var byId = function (id) { return document.getElementById(id); };
  byId("release").textContent = env.release;
  byId("label").textContent = env.label || "-";
  byId("data").textContent = JSON.stringify(env.data, null, 2);
  var banner = env.data && env.data.banner;
  byId("banner").textContent = banner && banner.text ? banner.text : "";
  document.documentElement.dataset.ready = "true";
})();
