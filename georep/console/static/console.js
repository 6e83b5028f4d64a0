// Refreshes a [data-refresh] region in place from its URL (the server renders and escapes it), and says how
// old the figures are. Every page is complete without this script.
"use strict";
(function () {
  function age() {
    document.querySelectorAll("[data-updated]").forEach(function (el) {
      var seconds = Math.max(0, Math.round((Date.now() - Date.parse(el.getAttribute("datetime"))) / 1000));
      var out = el.parentElement.querySelector("[data-age]");
      if (out) { out.textContent = "(" + seconds + " s ago)"; }
    });
  }
  function refresh(box) {
    fetch(box.getAttribute("data-refresh"), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (html) { box.innerHTML = html; age(); })
      .catch(function () { /* the figures shown keep their age; the next refresh tries again */ });
  }
  document.querySelectorAll("[data-refresh]").forEach(function (box) {
    var every = 1000 * Number(box.getAttribute("data-every") || 5);
    setInterval(function () { refresh(box); }, every);
  });
  age();
  setInterval(age, 1000);
})();
