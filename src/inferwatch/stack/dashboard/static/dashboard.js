// The built-in dashboard: draws the panels described by /api/dashboard with uPlot.
// No PromQL lives here: the page names a panel and the variable values, the server queries.
"use strict";

(function () {
  const PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2",
                   "#b877d9", "#37872d", "#fade2a", "#c4162a"];
  const NAMED = {green: "#73bf69", yellow: "#fade2a", orange: "#ff9830", red: "#f2495c",
                 blue: "#5794f2"};
  const CHART_HEIGHT = 190;
  const params = new URLSearchParams(location.search);
  const state = {
    dashboard: null, values: {}, range: 900, refresh: 10, timer: null, generation: 0,
    charts: new Map(),
  };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  async function getJSON(url) {
    const response = await fetch(url, {headers: {Accept: "application/json"}});
    let body = {};
    try {
      body = await response.json();
    } catch (err) {
      body = {error: `HTTP ${response.status}, not JSON`};
    }
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  // Units: the Grafana unit ids that panels.py uses.
  function num(v) {
    const a = Math.abs(v);
    if (Number.isInteger(v) && a < 1e4) return String(v);  // counts: "1", not "1.00"
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    return Number(v.toPrecision(2)).toString();
  }

  function bytes(v) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return num(v) + " " + units[i];
  }

  function format(v, unit) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    switch (unit) {
      case "s": {
        const a = Math.abs(v);
        if (a === 0) return "0 s";
        if (a < 1e-3) return num(v * 1e6) + " µs";
        if (a < 1) return num(v * 1e3) + " ms";
        return num(v) + " s";
      }
      case "percentunit": return num(v * 100) + "%";
      case "percent": return num(v) + "%";
      case "reqps": return num(v) + " req/s";
      case "bytes": return bytes(v);
      case "Bps": return bytes(v) + "/s";
      default: return num(v);
    }
  }

  function colour(name) { return NAMED[name] || name; }

  function thresholdColour(panel, v) {
    let found = null;
    for (const t of panel.thresholds) {
      if (t.value === null || (Number.isFinite(v) && v >= t.value)) found = t.color;
    }
    return found ? colour(found) : null;
  }

  function legendText(template, metric) {
    const text = template.replace(/\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g,
                                  (_, name) => metric[name] || "");
    return text.trim() || JSON.stringify(metric);
  }

  // Prometheus matrix -> uPlot columns on the query's step grid; gaps stay null.
  function columns(result, start, end, step) {
    const xs = [];
    for (let t = start; t <= end + 1e-9; t += step) xs.push(Math.round(t * 1000) / 1000);
    const index = new Map(xs.map((t, i) => [t, i]));
    let points = 0;
    const ys = result.map((series) => {
      const ys = new Array(xs.length).fill(null);
      for (const [t, raw] of series.values) {
        const i = index.get(Math.round(t * 1000) / 1000);
        const v = parseFloat(raw);
        if (i !== undefined && Number.isFinite(v)) { ys[i] = v; points++; }
      }
      return ys;
    });
    return {data: [xs, ...ys], points};
  }

  function drawThresholds(panel) {
    return (u) => {
      const ctx = u.ctx;
      const {left, top, width, height} = u.bbox;
      for (const t of panel.thresholds) {
        if (t.value === null) continue;
        const y = u.valToPos(t.value, "y", true);
        if (!(y >= top && y <= top + height)) continue;
        ctx.save();
        ctx.strokeStyle = colour(t.color);
        ctx.lineWidth = devicePixelRatio;
        ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
        ctx.beginPath();
        ctx.moveTo(left, y);
        ctx.lineTo(left + width, y);
        ctx.stroke();
        ctx.restore();
      }
    };
  }

  function lastValue(ys) {
    for (let i = ys.length - 1; i >= 0; i--) if (ys[i] !== null) return ys[i];
    return null;
  }

  // Rates, latencies and ratios read best from zero; a flat line gets a small span.
  function yRange(panel) {
    const flat = {percentunit: 0.1, percent: 10}[panel.unit] || 1;
    return (u, min, max) => {
      if (min === null || max === null) return [0, flat];
      const lo = Math.min(0, min);
      const hi = max > lo ? max : lo + flat;
      return uPlot.rangeNum(lo, hi, 0.1, true);
    };
  }

  const AXIS_FONT = "11px system-ui, sans-serif";
  const measure = document.createElement("canvas").getContext("2d");

  // The y axis as wide as its longest label.
  function axisWidth(u, values) {
    measure.font = AXIS_FONT;
    const widest = Math.max(24, ...(values || []).map((v) => measure.measureText(v).width));
    return Math.ceil(widest) + 16;
  }

  function chartOptions(panel, labels, width) {
    const axis = {stroke: "#9da5b0", grid: {stroke: "#2a2f36", width: 1},
                  ticks: {stroke: "#2a2f36", width: 1}, font: AXIS_FONT};
    return {
      width, height: CHART_HEIGHT,
      cursor: {points: {size: 5}},
      legend: {live: true},
      scales: {x: {time: true}, y: {range: yRange(panel)}},
      series: [{},
        ...labels.map((label, i) => ({
          label, stroke: PALETTE[i % PALETTE.length], width: 1.5,
          fill: PALETTE[i % PALETTE.length] + "1f", points: {show: false},
          // Off the chart, the legend shows each series' latest value.
          value: (u, v, s, idx) => format(idx === null ? lastValue(u.data[s]) : v, panel.unit),
        }))],
      axes: [{...axis, space: 70}, {
        ...axis, size: axisWidth, values: (u, vals) => vals.map((v) => format(v, panel.unit)),
      }],
      hooks: {draw: [drawThresholds(panel)]},
    };
  }

  function setMessage(card, text, cls) {
    const chart = state.charts.get(card.dataset.panel);
    if (chart) { chart.plot.destroy(); state.charts.delete(card.dataset.panel); }
    const body = card.querySelector(".panel-body");
    body.replaceChildren(el("p", {class: "message " + cls, text}));
  }

  function renderTimeseries(card, panel, result, cols) {
    const body = card.querySelector(".panel-body");
    const labels = result.map((s) => legendText(panel.legend, s.metric));
    const key = labels.join("\u0000");
    const existing = state.charts.get(panel.key);
    if (existing && existing.key === key) {
      existing.plot.setData(cols.data);
      return;
    }
    if (existing) existing.plot.destroy();
    body.replaceChildren();
    const plot = new uPlot(chartOptions(panel, labels, body.clientWidth || 300), cols.data, body);
    state.charts.set(panel.key, {plot, key});
  }

  function renderStat(card, panel, result) {
    const items = result.map((series) => {
      const values = series.values.map(([, raw]) => parseFloat(raw)).filter(Number.isFinite);
      const last = values.length ? values[values.length - 1] : null;
      const value = el("span", {class: "stat-value", text: format(last, panel.unit)});
      const c = thresholdColour(panel, last);
      if (c) value.style.color = c;
      return el("div", {class: "stat"}, value,
                el("span", {class: "stat-label", text: legendText(panel.legend, series.metric)}));
    });
    card.querySelector(".panel-body").replaceChildren(...items);
  }

  async function refreshPanel(card, panel, span, generation) {
    const query = new URLSearchParams({panel: panel.key, ...span});
    for (const [name, value] of Object.entries(state.values)) query.set(name, value);
    let body;
    try {
      body = await getJSON("api/query_range?" + query);
    } catch (err) {
      if (generation !== state.generation) return;
      card.dataset.state = "error";
      setMessage(card, err.message, "error");
      return;
    }
    if (generation !== state.generation) return;
    Object.assign(card.dataset, {model: state.values.model || "", instance:
                                 state.values.instance || ""});
    if (body.unavailable) {
      card.dataset.state = "unavailable";
      card.dataset.points = "0";
      setMessage(card, body.unavailable, "unavailable");
      return;
    }
    const result = body.data.result;
    const cols = columns(result, Number(span.start), Number(span.end), Number(span.step));
    card.dataset.points = String(cols.points);
    card.dataset.series = JSON.stringify(result.map((s) => legendText(panel.legend, s.metric)));
    if (!cols.points) {
      card.dataset.state = "empty";
      setMessage(card, "No data in this range", "empty");
      return;
    }
    if (panel.kind === "stat") renderStat(card, panel, result);
    else renderTimeseries(card, panel, result, cols);
    card.dataset.state = "ok";
  }

  function since(iso) {
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  async function refreshAlerts(card, generation) {
    let body;
    try {
      body = await getJSON("api/alerts");
    } catch (err) {
      if (generation !== state.generation) return;
      card.dataset.state = "error";
      card.querySelector(".panel-body").replaceChildren(
        el("p", {class: "message error", text: err.message}));
      return;
    }
    if (generation !== state.generation) return;
    card.dataset.state = "ok";
    card.dataset.count = String(body.alerts.length);
    const list = body.alerts.map((a) => {
      const severity = a.labels.severity || "none";
      const where = ["model", "instance"].filter((k) => a.labels[k])
        .map((k) => `${k}=${a.labels[k]}`).join(" ");
      return el("li", {},
        el("span", {class: "badge " + severity, text: severity}),
        el("strong", {text: a.labels.alertname || "?"}),
        el("span", {class: "muted", text: ` ${where} · for ${since(a.startsAt)}`}),
        el("div", {class: "summary", text: a.annotations.summary || ""}));
    });
    const content = body.alertmanager === null
      ? [el("p", {class: "message empty", text: "No Alertmanager configured"})]
      : list.length ? [el("ul", {class: "alerts"}, ...list)]
        : [el("p", {class: "message ok", text: "No alerts firing"})];
    card.querySelector(".panel-body").replaceChildren(...content);
  }

  async function refreshAll() {
    const generation = ++state.generation;
    const scrape = state.dashboard.profile.scrape_seconds;
    const step = Math.max(scrape, Math.ceil(state.range / 300));
    const end = Math.floor(Date.now() / 1000 / step) * step;
    const span = {start: String(end - state.range), end: String(end), step: String(step)};
    const jobs = [];
    for (const card of document.querySelectorAll(".panel[data-kind]")) {
      if (card.dataset.kind === "alertmanager") jobs.push(refreshAlerts(card, generation));
      else jobs.push(refreshPanel(card, state.panels.get(card.dataset.panel), span, generation));
    }
    await Promise.all(jobs);
    if (generation === state.generation) {
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.generation = String(generation);
    }
  }

  function schedule() {
    if (state.timer) clearInterval(state.timer);
    state.timer = state.refresh > 0 ? setInterval(refreshAll, state.refresh * 1000) : null;
  }

  function saveToURL() {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(state.values)) if (value) query.set(name, value);
    query.set("range", String(state.range));
    query.set("refresh", String(state.refresh));
    history.replaceState(null, "", "?" + query);
  }

  function panelCard(panel) {
    const title = el("h3", {text: panel.title});
    title.title = (panel.description ? panel.description + "\n\n" : "") + panel.expr;
    const card = el("section", {class: "panel", "data-panel": panel.key,
                                "data-kind": panel.kind, "data-state": "loading"},
                    el("header", {}, title),
                    el("div", {class: "panel-body"}, el("p", {class: "message", text: "loading…"})));
    card.style.gridColumn = `span ${panel.width}`;
    return card;
  }

  function build(dashboard) {
    document.title = dashboard.title + " · inferwatch";
    $("title").textContent = dashboard.title;
    $("source").textContent = dashboard.prometheus +
      (dashboard.alertmanager ? " and " + dashboard.alertmanager : "") +
      ` (rate window ${dashboard.profile.rate_window})`;
    state.panels = new Map();
    const rows = dashboard.rows.map((row) => {
      const grid = el("div", {class: "grid"});
      for (const panel of row.panels) {
        state.panels.set(panel.key, panel);
        grid.append(panelCard(panel));
      }
      if (row.key === "alerts") {
        const card = el("section", {class: "panel", "data-panel": "alertmanager",
                                    "data-kind": "alertmanager", "data-state": "loading"},
                        el("header", {}, el("h3", {text: "Active alerts in Alertmanager"})),
                        el("div", {class: "panel-body"}));
        card.style.gridColumn = "span 24";
        grid.append(card);
      }
      return el("section", {class: "row", "data-row": row.key},
                el("h2", {text: row.title}), grid);
    });
    $("rows").replaceChildren(...rows);
  }

  async function buildVariables(dashboard) {
    const options = await getJSON("api/variables");
    const holder = $("variables");
    holder.replaceChildren();
    for (const variable of dashboard.variables) {
      const select = el("select", {"data-variable": variable.name, id: "var-" + variable.name});
      select.append(el("option", {value: "", text: "All"}));
      for (const value of options[variable.name] || []) {
        select.append(el("option", {value, text: value}));
      }
      const wanted = params.get(variable.name) || "";
      select.value = [...select.options].some((o) => o.value === wanted) ? wanted : "";
      state.values[variable.name] = select.value;
      select.addEventListener("change", () => {
        state.values[variable.name] = select.value;
        saveToURL();
        refreshAll();
      });
      holder.append(el("label", {text: variable.title + " "}, select));
    }
  }

  function choose(select, wanted, apply) {
    if (wanted !== null && [...select.options].some((o) => o.value === wanted)) {
      select.value = wanted;
    }
    apply(Number(select.value));
    select.addEventListener("change", () => {
      apply(Number(select.value));
      saveToURL();
      schedule();
      refreshAll();
    });
  }

  function resize() {
    for (const [key, chart] of state.charts) {
      const body = document.querySelector(`.panel[data-panel="${key}"] .panel-body`);
      if (body) chart.plot.setSize({width: body.clientWidth, height: CHART_HEIGHT});
    }
  }

  async function main() {
    $("controls").addEventListener("submit", (e) => e.preventDefault());
    try {
      state.dashboard = await getJSON("api/dashboard");
      build(state.dashboard);
      await buildVariables(state.dashboard);
    } catch (err) {
      const problem = $("problem");
      problem.textContent = "Cannot load the dashboard: " + err.message;
      problem.hidden = false;
      return;
    }
    choose($("range"), params.get("range"), (v) => { state.range = v; });
    choose($("refresh"), params.get("refresh"), (v) => { state.refresh = v; });
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(resize, 100);
    });
    schedule();
    await refreshAll();
  }

  main();
})();
