// Live refresh: poll /ui/data.json and update every element marked data-live="key". No framework, no CDN.
(function () {
  "use strict";
  var stamp = document.getElementById("updated");
  var fmt = new Intl.NumberFormat("en");
  function refresh() {
    fetch("/ui/data.json", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location = "/ui/login"; return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (data) {
        if (!data) { return; }
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var key = el.getAttribute("data-live");
          if (key in data) {
            var text = data.display && key in data.display ? data.display[key] : fmt.format(data[key]);
            var changed = el.textContent !== text;
            el.textContent = text;
            if (changed && el.getAttribute("data-reload") === "1") { window.location.reload(); }
          }
        });
        if (stamp) { stamp.textContent = data.display ? data.display.now : new Date(data.now_ms).toISOString(); }
      })
      .catch(function () { if (stamp) { stamp.textContent = "offline"; } });
  }
  setInterval(refresh, 5000);
  refresh();
})();
