// Progressive enhancement for the valet console. Every page works without
// this file: it only asks before bulk revocations, shows times in the
// viewer's time zone, and refreshes the grants page while it sits idle.
(function () {
  "use strict";

  // Forms with data-confirm ask first (e.g. "Revoke all of this agent").
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) {
      e.preventDefault();
    }
  });

  // <time datetime> gets the local time as its tooltip.
  var times = document.querySelectorAll("time[datetime]");
  for (var i = 0; i < times.length; i++) {
    var d = new Date(times[i].getAttribute("datetime"));
    if (!isNaN(d.getTime())) {
      times[i].title = d.toLocaleString();
    }
  }

  // The grants page reloads every 30s to show new requests, unless the
  // operator is typing or a form field holds text. The reload carries
  // refresh=auto: it is not an operator action, so it does not keep the
  // session from ending after console.session_idle.
  if (location.pathname === "/ui/grants") {
    window.setInterval(function () {
      var a = document.activeElement;
      if (a && (a.tagName === "TEXTAREA" || a.tagName === "INPUT" || a.tagName === "SELECT")) {
        return;
      }
      var fields = document.querySelectorAll("textarea");
      for (var j = 0; j < fields.length; j++) {
        if (fields[j].value !== "") {
          return;
        }
      }
      var u = new URL(location.href);
      u.searchParams.set("refresh", "auto");
      location.replace(u.toString());
    }, 30000);
  }
})();
