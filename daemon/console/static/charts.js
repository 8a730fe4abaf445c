// berth console: the deployment page's charts, drawn by the vendored uPlot
// (vendor/uplot/). The container [data-series-src] names the JSON
// (/console/d/NAME/data/series?window=1h|1d: uPlot's columns, one block per chart);
// each [data-metric] root inside it becomes one chart and gets data-points="N" (the
// buckets with a value) once drawn. The data is fetched again once a bucket (the JSON's
// `step`: a minute for the hour, five for the day), just after it turns and its rollup is
// in, and only while the tab is visible (no fetch at all while it is hidden).
(function () {
  "use strict";
  var COLORS = ["#2e5bff", "#e8590c", "#2f9e44", "#ae3ec9"];
  var HEIGHT = 200;
  var plots = {};
  var step = 60; // seconds per point, from the last answer

  function bytes(v) {
    if (v === null || v === undefined) { return ""; }
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }

  function number(v) {
    if (v === null || v === undefined) { return ""; }
    return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  function formatter(unit) {
    if (unit === "bytes") { return bytes; }
    return function (v) { return v === null || v === undefined ? "" : number(v) + (unit === "%" ? " %" : unit === "ms" ? " ms" : ""); };
  }

  function options(chart, width) {
    var fmt = formatter(chart.unit);
    var series = [{}];
    chart.labels.forEach(function (label, i) {
      series.push({ label: label, stroke: COLORS[i % COLORS.length], width: 1.5,
                    spanGaps: false, value: function (u, v) { return fmt(v); } });
    });
    return {
      width: width,
      height: HEIGHT,
      series: series,
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [Math.min(0, min || 0), max > 0 ? max * 1.1 : 1]; } } },
      axes: [{}, { size: 70, values: function (u, splits) { return splits.map(fmt); } }],
      legend: { show: true }
    };
  }

  function draw(root, chart) {
    var id = root.getAttribute("data-metric");
    var width = Math.max(root.clientWidth || 400, 300);
    root.setAttribute("data-points", String(chart.points));
    // Nothing measured in the window (no GPU, a new deployment): say so, draw no empty axes.
    root.classList.toggle("no-data", chart.points === 0 && !plots[id]);
    if (plots[id]) {
      plots[id].setData(chart.data);
    } else if (chart.points > 0) {
      root.textContent = "";
      plots[id] = new uPlot(options(chart, width), chart.data, root);
    }
  }

  function load(container) {
    var url = container.getAttribute("data-series-src");
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body || !body.charts) { return; }
        if (body.step > 0) { step = body.step; }
        container.querySelectorAll("[data-metric]").forEach(function (root) {
          var chart = body.charts[root.getAttribute("data-metric")];
          if (chart) { draw(root, chart); }
        });
      })
      .catch(function () {});
  }

  function loadAll() {
    document.querySelectorAll("[data-series-src]").forEach(load);
  }

  function scheduleNextBucket() {
    var period = step * 1000;
    var wait = period - (Date.now() % period) + 5000; // the minute just ended is rolled up
    setTimeout(function () {
      if (document.visibilityState !== "hidden") { loadAll(); }
      scheduleNextBucket();
    }, wait);
  }

  function resize() {
    Object.keys(plots).forEach(function (id) {
      var root = plots[id].root.parentNode;
      if (root) { plots[id].setSize({ width: Math.max(root.clientWidth, 300), height: HEIGHT }); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.uPlot || !document.querySelector("[data-series-src]")) { return; }
    loadAll();
    scheduleNextBucket();
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") { loadAll(); }
    });
    var timer = null;
    window.addEventListener("resize", function () {
      clearTimeout(timer);
      timer = setTimeout(resize, 150);
    });
  });
})();
