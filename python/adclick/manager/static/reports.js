// adclick manager: the clicks / conversions / money chart (Chart.js, served from our own static files): money is
// revenue for staff and payout for affiliates, as the series names it in `money`.
"use strict";
(function () {
  function isoDay(date) {
    return date.getFullYear() + "-" + String(date.getMonth() + 1).padStart(2, "0") + "-" + String(date.getDate()).padStart(2, "0");
  }

  function seriesUrl(canvas) {
    var url = new URL(canvas.getAttribute("data-series-url"), window.location.origin);
    var days = canvas.getAttribute("data-series-days");
    if (canvas.getAttribute("data-series-browser-zone")) {
      var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
      if (zone) url.searchParams.set("tz", zone);
    }
    if (days) {
      var to = new Date();
      var from = new Date(to.getTime() - (Number(days) - 1) * 86400000);
      url.searchParams.set("from", isoDay(from));
      url.searchParams.set("to", isoDay(to));
    }
    return url;
  }

  function draw(canvas, data) {
    var money = data.money === "payout" ? "payout" : "revenue";
    var moneyLabel = money === "payout" ? "Payout" : "Revenue";
    var zoneLabel = document.querySelector(".series-zone");
    if (zoneLabel) zoneLabel.textContent = "(" + data.tz + ")";
    return new window.Chart(canvas, {
      type: "line",
      data: {
        labels: data.labels,
        datasets: [
          { label: "Clicks", data: data.clicks, yAxisID: "count", borderColor: "#2b59c3", backgroundColor: "#2b59c3", tension: 0.2 },
          { label: "Conversions", data: data.conversions, yAxisID: "count", borderColor: "#137333", backgroundColor: "#137333", tension: 0.2 },
          { label: moneyLabel, data: data[money].map(Number), yAxisID: "money", borderColor: "#b06000", backgroundColor: "#b06000", borderDash: [6, 4], tension: 0.2 }
        ]
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          count: { type: "linear", position: "left", beginAtZero: true, title: { display: true, text: "clicks, conversions" } },
          money: { type: "linear", position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: money } }
        }
      }
    });
  }

  function start() {
    var canvas = document.getElementById("series-chart");
    if (!canvas || !window.Chart) return;
    fetch(seriesUrl(canvas), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        canvas.chart = draw(canvas, data);
        canvas.setAttribute("data-points", String(data.labels.length));
      })
      .catch(function (error) {
        canvas.insertAdjacentText("afterend", "Chart unavailable: " + error.message);
      });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
