// berth console: live updates without polling. One EventSource on /console/stream; on a
// `change`, every element with a data-fragment="URL" attribute is re-fetched and its
// content replaced (debounced, so a burst of events costs one fetch per fragment). Pages
// may register more: window.berthConsole.onChange(fn) gets each {kind, deployment}.
(function () {
  "use strict";
  var listeners = [];
  var pending = null;

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function refreshFragments() {
    pending = null;
    document.querySelectorAll("[data-fragment]").forEach(function (el) {
      var url = el.getAttribute("data-fragment");
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null) {
            el.innerHTML = html;
            el.dispatchEvent(new CustomEvent("berth:fragment", { bubbles: true }));
          }
        })
        .catch(function () {});
    });
  }

  function onChange(data) {
    listeners.forEach(function (fn) {
      try { fn(data); } catch (e) { /* one page script's fault stays its own */ }
    });
    if (pending === null) {
      pending = setTimeout(refreshFragments, 250);
    }
  }

  function connect() {
    if (!window.EventSource || !csrfToken()) {
      return; // signed out: nothing to follow
    }
    var source = new EventSource("/console/stream");
    source.addEventListener("change", function (ev) {
      var data = {};
      try { data = JSON.parse(ev.data); } catch (e) {}
      onChange(data);
    });
    // EventSource reconnects by itself (the server's retry:); after a reconnect the
    // page may have missed changes, so refresh once.
    source.addEventListener("open", function () {
      if (source.berthOpened) { refreshFragments(); }
      source.berthOpened = true;
    });
  }

  window.berthConsole = {
    onChange: function (fn) { listeners.push(fn); },
    csrfToken: csrfToken,
    refresh: refreshFragments
  };
  document.addEventListener("DOMContentLoaded", connect);
})();
