// berth console: the deployment page's live log tail. The <pre data-log-src> reads the
// page's server-sent events (/console/d/NAME/logs: `line` events, one log line each; `end`
// when every replica's log stream has ended; it starts again on the next `change` of the
// deployment) and keeps the last LOG_LINES lines. It
// follows the bottom unless the reader has scrolled up. The live tables (replicas,
// revisions, events) are console.js's [data-fragment] parts, re-fetched on a `change`.
(function () {
  "use strict";
  var LOG_LINES = 500;

  function follow(pre) {
    var lines = [];
    var dirty = false;
    var opened = false;
    var source = new EventSource(pre.getAttribute("data-log-src"));

    function paint() {
      dirty = false;
      var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = lines.join("\n");
      pre.setAttribute("data-lines", String(lines.length));
      if (atBottom) { pre.scrollTop = pre.scrollHeight; }
    }

    function changed() {
      if (!dirty) {
        dirty = true;
        window.requestAnimationFrame(paint);
      }
    }

    source.addEventListener("open", function () {
      // A reconnect sends the tail again: start over rather than show it twice.
      if (opened) { lines = []; changed(); }
      opened = true;
    });
    source.addEventListener("line", function (ev) {
      lines.push(ev.data);
      if (lines.length > LOG_LINES) { lines.splice(0, lines.length - LOG_LINES); }
      changed();
    });
    source.addEventListener("end", function (ev) {
      source.close();
      lines.push("-- " + ev.data + " --");
      changed();
      // No replica left to follow: start again when this deployment changes (a scale-up).
      if (window.berthConsole) {
        var name = pre.getAttribute("data-deployment");
        var again = false;
        window.berthConsole.onChange(function (data) {
          if (!again && data && data.deployment === name) {
            again = true;
            follow(pre);
          }
        });
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.EventSource) { return; }
    document.querySelectorAll("pre[data-log-src]").forEach(follow);
  });
})();
