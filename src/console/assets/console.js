// pdq console: live refresh of the overview, and confirmation of destructive buttons.
// No inline script anywhere (the Content-Security-Policy forbids it).
(function () {
  "use strict";
  var live = document.querySelector("[data-refresh]");
  if (live && window.fetch && window.DOMParser) {
    var every = parseInt(live.getAttribute("data-refresh"), 10);
    if (every > 0) {
      window.setInterval(function () {
        if (document.hidden) { return; }
        fetch(window.location.href, { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.text() : null; })
          .then(function (text) {
            if (!text) { return; }
            var doc = new DOMParser().parseFromString(text, "text/html");
            var fresh = doc.querySelector("[data-refresh]");
            if (fresh) { live.replaceWith(fresh); live = fresh; }
          })
          .catch(function () {});
      }, every * 1000);
    }
  }
  // Select-all checkbox on the dead-letter list.
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=id]").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  }
})();
