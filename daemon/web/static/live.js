// The urgent list refreshes its rows every few seconds, in place; without
// JavaScript the page is the same list, refreshed by reloading it.
(function () {
  "use strict";
  var table = document.querySelector("table[data-live]");
  if (!table) { return; }
  var url = table.getAttribute("data-live");
  function refresh() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401 || response.redirected) { window.location.reload(); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html === null) { return; }
        var rows = new DOMParser().parseFromString("<table>" + html + "</table>", "text/html")
          .querySelector("tbody");
        var old = document.getElementById("study-rows");
        if (rows && old) { old.replaceWith(rows); }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  window.setInterval(refresh, 5000);
})();
