// The moe-swarm dashboard page: one WebSocket (/live) delivers a snapshot of the swarm per tick
// (src/observe/live-feed.ts); recent traces come from /api/traces. Plain DOM, SVG and canvas, no
// dependencies, nothing loaded from another origin. Untrusted strings (names, messages) are only
// ever set as textContent.

const historyPointsMax = 240;
const tracesRefreshMs = 2000;
const reconnectDelayMsMax = 10000;

/**
 * Where each region sits on the schematic map (x, y in a 720 × 330 box) and its metro. Roughly
 * geographic (west to east, north to south) but spread out so the US regions do not overlap.
 */
const regionPlaces = {
  SJC: [80, 120, "San Jose"],
  ORD: [250, 60, "Chicago"],
  IAD: [320, 200, "Ashburn"],
  AMS: [540, 70, "Amsterdam"],
  SYD: [640, 285, "Sydney"],
};

const $ = (id) => document.getElementById(id);
const svgNs = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtSeconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  if (s === 0) return "0";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

function fmtNumber(n, digits = 1) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(digits)}M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(digits)}k`;
  return Number.isInteger(n) ? String(n) : n.toFixed(digits);
}

// ---- charts --------------------------------------------------------------------------------------

function sizeCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = Number(canvas.getAttribute("height"));
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.height = `${height}px`;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width, height };
}

/** Line chart; each series has its own axis side ("left" or "right"). */
function drawChart(canvas, series, options = {}) {
  const { ctx, width, height } = sizeCanvas(canvas);
  const pad = { l: 44, r: 62, t: 8, b: 18 };
  ctx.clearRect(0, 0, width, height);
  const css = getComputedStyle(document.documentElement);
  ctx.strokeStyle = css.getPropertyValue("--line");
  ctx.fillStyle = css.getPropertyValue("--muted");
  ctx.font = "11px system-ui, sans-serif";
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const axes = {};
  for (const side of ["left", "right"]) {
    const values = series
      .filter((s) => s.axis === side)
      .flatMap((s) => s.points.map((p) => p[1]))
      .filter(Number.isFinite);
    if (values.length === 0) continue;
    const max = Math.max(...values) * 1.1 || 1;
    const min = options.zeroBased === false ? Math.min(...values) * 0.95 : 0;
    axes[side] = { min, max };
    for (let i = 0; i <= 4; i++) {
      const v = min + ((max - min) * i) / 4;
      const y = pad.t + h - (h * i) / 4;
      if (side === "left") {
        ctx.beginPath();
        ctx.moveTo(pad.l, y);
        ctx.lineTo(pad.l + w, y);
        ctx.stroke();
      }
      const label =
        (side === "left" ? options.leftFormat : options.rightFormat)?.(v) ?? fmtNumber(v, 2);
      ctx.textAlign = side === "left" ? "right" : "left";
      ctx.fillText(label, side === "left" ? pad.l - 4 : pad.l + w + 4, y + 4);
    }
  }
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  if (xs.length < 2) {
    ctx.textAlign = "center";
    ctx.fillText(options.empty ?? "waiting for data", width / 2, height / 2);
    return;
  }
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs);
  const xScale = (x) => pad.l + (x1 === x0 ? w : ((x - x0) / (x1 - x0)) * w);
  ctx.textAlign = "center";
  if (options.xFormat) {
    ctx.fillText(options.xFormat(x0), pad.l + 20, height - 4);
    ctx.fillText(options.xFormat(x1), pad.l + w - 20, height - 4);
  }
  for (const s of series) {
    const axis = axes[s.axis];
    if (!axis || s.points.length === 0) continue;
    ctx.strokeStyle = css.getPropertyValue(s.color);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    for (const [x, y] of s.points) {
      if (!Number.isFinite(y)) {
        started = false;
        continue;
      }
      const px = xScale(x);
      const py = pad.t + h - ((y - axis.min) / (axis.max - axis.min || 1)) * h;
      if (started) ctx.lineTo(px, py);
      else ctx.moveTo(px, py);
      started = true;
    }
    ctx.stroke();
  }
}

// ---- map -----------------------------------------------------------------------------------------

function rttColor(s) {
  if (s === null) return "var(--muted)";
  if (s < 0.05) return "var(--ok)";
  if (s < 0.15) return "var(--warn)";
  return "var(--bad)";
}

function drawMap(snapshot) {
  const map = $("map");
  map.replaceChildren();
  map.appendChild(svg("rect", { x: 0, y: 0, width: 720, height: 330, fill: "#121a22", rx: 6 }));
  const pos = {};
  for (const r of snapshot.regions) {
    const place = regionPlaces[r.code];
    pos[r.code] = place ? [place[0], place[1]] : [360, 165];
  }
  for (const link of snapshot.links) {
    const a = pos[link.a];
    const b = pos[link.b];
    if (!a || !b) continue;
    const measured = link.measuredRttSeconds;
    const line = svg("line", {
      x1: a[0],
      y1: a[1],
      x2: b[0],
      y2: b[1],
      stroke: rttColor(measured),
      "stroke-width": measured === null ? 1 : 2,
      "stroke-dasharray": measured === null ? "4 4" : "",
      opacity: measured === null ? 0.5 : 0.9,
    });
    line.appendChild(svg("title", {}, `${link.a}–${link.b}`));
    map.appendChild(line);
    const value = measured ?? link.configuredRttSeconds;
    if (value !== null) {
      // At the middle of the link, unless a region's name sits there: then a third of the way.
      const near = (t) =>
        Object.values(pos).some(
          (p) => Math.hypot(a[0] + (b[0] - a[0]) * t - p[0], a[1] + (b[1] - a[1]) * t - p[1]) < 45,
        );
      const t = near(0.5) ? (near(0.3) ? 0.7 : 0.3) : 0.5;
      const label = svg(
        "text",
        {
          x: a[0] + (b[0] - a[0]) * t,
          y: a[1] + (b[1] - a[1]) * t - 3,
          "font-size": 11,
          "text-anchor": "middle",
          fill: measured === null ? "#6b7785" : "#d8dee6",
          "data-link": `${link.a}-${link.b}`,
        },
        `${(value * 1000).toFixed(0)} ms`,
      );
      map.appendChild(label);
    }
  }
  const nodesByRegion = {};
  for (const n of snapshot.nodes) {
    nodesByRegion[n.region] ??= [];
    nodesByRegion[n.region].push(n);
  }
  for (const r of snapshot.regions) {
    const [x, y] = pos[r.code];
    const nodes = nodesByRegion[r.code] ?? [];
    const allUp = nodes.length > 0 && nodes.every((n) => n.up);
    const anyUp = nodes.some((n) => n.up);
    const fill = nodes.length === 0 ? "#3a4450" : allUp ? "#3fb950" : anyUp ? "#d29922" : "#f85149";
    const ring = svg("circle", {
      cx: x,
      cy: y,
      r: r.role === "global_coordinator" ? 11 : 8,
      fill,
      stroke: "#0f1419",
      "stroke-width": 2,
    });
    ring.appendChild(
      svg(
        "title",
        {},
        `${r.code} (${regionPlaces[r.code]?.[2] ?? "?"}) · ${r.role} · ${nodes.length} node(s)`,
      ),
    );
    map.appendChild(ring);
    map.appendChild(
      svg(
        "text",
        { x: x + 13, y: y + 4, "font-size": 13, fill: "#d8dee6", "font-weight": 600 },
        r.code,
      ),
    );
    nodes.forEach((n, i) => {
      map.appendChild(
        svg("rect", {
          x: x - 12 + i * 8,
          y: y + 14,
          width: 6,
          height: 6,
          fill: n.up ? "#3fb950" : "#f85149",
        }),
      );
    });
  }
}

// ---- heatmaps ------------------------------------------------------------------------------------

let previousTiers = null;

function drawHeatmaps(snapshot) {
  const root = $("heatmaps");
  snapshot.tiers.forEach((tier, t) => {
    let box = root.children[t];
    if (!box) {
      box = el("div", { class: "heat", "data-tier": tier.name });
      box.appendChild(el("h3"));
      box.appendChild(el("canvas", { height: String(Math.max(24, tier.activations.length * 22)) }));
      root.appendChild(box);
    }
    const before = previousTiers?.[t]?.activations;
    // Live shares: the change since the last snapshot; when idle, the cumulative shares, dimmed.
    let rows = tier.activations.map((row, l) => row.map((v, e) => v - (before?.[l]?.[e] ?? 0)));
    const live = rows.some((row) => row.some((v) => v > 0));
    if (!live) rows = tier.activations;
    const total = rows.reduce((a, row) => a + row.reduce((x, y) => x + y, 0), 0);
    box.querySelector("h3").textContent =
      `${tier.name} · ${tier.gpuType} · ${tier.activation} · ${tier.experts} experts × ${tier.activations.length} layer(s) · dropped ${fmtNumber(tier.droppedTokens)} tokens`;
    const canvas = box.querySelector("canvas");
    const { ctx, width, height } = sizeCanvas(canvas);
    ctx.clearRect(0, 0, width, height);
    const cw = width / tier.experts;
    const ch = height / rows.length;
    rows.forEach((row, l) => {
      const sum = row.reduce((x, y) => x + y, 0) || 1;
      row.forEach((v, e) => {
        // Share relative to a uniform split: 1/E is mid-scale, 2/E or more is full.
        const share = (v / sum) * tier.experts * 0.5;
        const a = Math.min(1, share);
        ctx.fillStyle = `rgba(88, 166, 255, ${live ? 0.08 + 0.92 * a : 0.05 + 0.45 * a})`;
        ctx.fillRect(e * cw + 0.5, l * ch + 0.5, Math.max(1, cw - 1), Math.max(1, ch - 1));
      });
    });
    canvas.dataset.total = String(total);
    canvas.title = `${tier.name}: ${live ? "live" : "cumulative"} activation shares`;
  });
  previousTiers = snapshot.tiers;
}

// ---- panels --------------------------------------------------------------------------------------

const history = { requests: [], p50: [], p99: [] };

function pushHistory(list, point) {
  list.push(point);
  if (list.length > historyPointsMax) list.shift();
}

function renderConsensus(c) {
  const root = $("consensus");
  root.replaceChildren();
  const l = c?.commitLatency ?? null;
  const rows = c
    ? [
        ["leader", c.leader || "–"],
        ["view", fmtNumber(c.view)],
        ["height", fmtNumber(c.height)],
        ...(l
          ? [
              ["coordinators", `${l.coordinatorsUp} / ${l.coordinators} up`],
              // Request arrival → commit, median of the coordinators' own percentiles.
              ["commit p50", fmtSeconds(l.p50Seconds)],
              ["commit p99", fmtSeconds(l.p99Seconds)],
              ["blocks", fmtNumber(l.blocksCommitted)],
              ["requests", fmtNumber(l.requestsCommitted)],
            ]
          : [
              ["commits", fmtNumber(c.commits)],
              ["last commit", fmtSeconds(c.lastCommitLatencySeconds)],
            ]),
      ]
    : [["status", "no coordinator has reported"]];
  for (const [k, v] of rows) {
    const div = el("div");
    div.appendChild(el("dt", {}, k));
    div.appendChild(el("dd", { id: `consensus-${k.replaceAll(" ", "-")}` }, v));
    root.appendChild(div);
  }
}

function renderEvidence(e) {
  const body = $("evidence").querySelector("tbody");
  body.replaceChildren();
  const recent = $("evidence-recent");
  recent.replaceChildren();
  if (!e || e.coordinatorsUp === 0) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: "3", class: "muted" }, "no coordinator has reported"));
    body.appendChild(tr);
    return;
  }
  for (const a of e.against) {
    const tr = el("tr", { "data-accused": a.region });
    tr.appendChild(el("td", {}, a.region));
    tr.appendChild(
      el(
        "td",
        { class: a.reporters >= 2 ? "down" : a.reporters === 1 ? "warn" : "" },
        `${a.reporters} of ${e.coordinatorsUp}`,
      ),
    );
    tr.appendChild(el("td", {}, fmtNumber(a.countMax, 0)));
    body.appendChild(tr);
  }
  for (const r of e.recent) {
    const li = el("li");
    li.appendChild(el("span", { class: "muted" }, `${new Date(r.atMs).toLocaleTimeString()} `));
    li.appendChild(el("span", { class: "kind evidence" }, `${r.reporter} → ${r.against}`));
    li.appendChild(document.createTextNode(` view ${r.view}: ${r.reason}`));
    recent.appendChild(li);
  }
}

function renderEvents(events) {
  const root = $("events");
  if (events.length === 0) return;
  root.replaceChildren();
  for (const e of [...events].reverse().slice(0, 50)) {
    const li = el("li");
    li.appendChild(el("span", { class: "muted" }, `${new Date(e.at).toLocaleTimeString()} `));
    li.appendChild(el("span", { class: `kind ${e.kind}` }, e.kind.replace("_", " ")));
    li.appendChild(document.createTextNode(` ${e.message}`));
    root.appendChild(li);
  }
}

function renderNodes(nodes) {
  const body = $("nodes").querySelector("tbody");
  body.replaceChildren();
  if (nodes.length === 0) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: "5", class: "muted" }, "no node has reported"));
    body.appendChild(tr);
    return;
  }
  for (const n of [...nodes].sort((a, b) => a.id.localeCompare(b.id))) {
    const tr = el("tr");
    tr.appendChild(el("td", {}, n.id));
    tr.appendChild(el("td", {}, n.region));
    tr.appendChild(el("td", { class: n.up ? "up" : "down" }, n.up ? "up" : "down"));
    const experts = el("td", {}, String(n.experts.length));
    experts.title = n.experts.join(" ");
    tr.appendChild(experts);
    // A replica the gateway never picked (a nearer one serves its experts) has no latency yet.
    tr.appendChild(
      el(
        "td",
        {},
        n.latencyP50Seconds === null && n.up ? "no calls" : fmtSeconds(n.latencyP50Seconds),
      ),
    );
    body.appendChild(tr);
  }
}

function render(snapshot, events) {
  $("process").textContent = `process ${snapshot.process}`;
  const r = snapshot.requests;
  $("kpi-rate").textContent = fmtNumber(r.ratePerSecond, 1);
  $("kpi-p50").textContent = fmtSeconds(r.p50Seconds);
  $("kpi-p99").textContent = fmtSeconds(r.p99Seconds);
  $("kpi-tokens").textContent = fmtNumber(snapshot.tokens.ratePerSecond, 0);
  $("kpi-requests").textContent = fmtNumber(r.total, 0);
  $("kpi-errors").textContent = fmtNumber(r.errors, 0);
  $("kpi-failovers").textContent = fmtNumber(snapshot.failovers, 0);
  $("kpi-fidelity").textContent =
    snapshot.gradientFidelity === null ? "n/a" : snapshot.gradientFidelity.toFixed(4);

  const t = snapshot.at;
  pushHistory(history.requests, [t, r.ratePerSecond]);
  pushHistory(history.p50, [t, r.p50Seconds ?? Number.NaN]);
  pushHistory(history.p99, [t, r.p99Seconds ?? Number.NaN]);
  const clock = (ms) => new Date(ms).toLocaleTimeString();
  drawChart(
    $("chart-requests"),
    [
      { points: history.requests, axis: "left", color: "--accent" },
      { points: history.p50, axis: "right", color: "--ok" },
      { points: history.p99, axis: "right", color: "--p99" },
    ],
    { leftFormat: (v) => fmtNumber(v, 1), rightFormat: fmtSeconds, xFormat: clock },
  );
  const loss = snapshot.loss.map((p) => [p.step, p.loss]);
  drawChart($("chart-loss"), [{ points: loss, axis: "left", color: "--warn" }], {
    zeroBased: false,
    xFormat: (s) => `step ${s}`,
    empty: "no training running",
  });
  const last = snapshot.loss.at(-1);
  $("loss-last").textContent = last ? `step ${last.step}: ${last.loss.toFixed(4)} nats/token` : "";
  drawMap(snapshot);
  drawHeatmaps(snapshot);
  renderConsensus(snapshot.consensus);
  renderEvidence(snapshot.evidence);
  renderNodes(snapshot.nodes);
  renderEvents(events);
}

// ---- live feed -----------------------------------------------------------------------------------

let events = [];
let reconnectDelayMs = 500;

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/live`);
  const conn = $("conn");
  ws.onopen = () => {
    conn.textContent = "live";
    conn.className = "conn up";
    reconnectDelayMs = 500;
  };
  ws.onmessage = (message) => {
    const m = JSON.parse(message.data);
    if (m.type !== "update") return;
    if (events.length === 0) events = [...m.snapshot.events];
    else events = [...events, ...m.events].slice(-64);
    render(m.snapshot, events);
    document.body.dataset.seq = String(m.seq);
  };
  ws.onclose = () => {
    conn.textContent = "reconnecting…";
    conn.className = "conn down";
    setTimeout(connect, reconnectDelayMs);
    reconnectDelayMs = Math.min(reconnectDelayMsMax, reconnectDelayMs * 2);
  };
}

// ---- traces --------------------------------------------------------------------------------------

let selectedTrace = null;

function renderTree(trace) {
  const root = $("trace-tree");
  root.replaceChildren();
  root.classList.remove("muted");
  const t0 = trace.startMs;
  const total = trace.durationMs || 1;
  root.appendChild(
    el(
      "div",
      { class: "muted" },
      `trace ${trace.traceId} · ${trace.spanCount} spans · ${trace.services.join(", ")}`,
    ),
  );
  const walk = (node, depth) => {
    const s = node.span;
    const row = el("div", {
      class: `span${s.status === "error" ? " err" : ""}`,
      "data-span": s.spanId,
    });
    const label = el("span", { class: "label" });
    label.style.paddingLeft = `${depth * 14}px`;
    label.appendChild(document.createTextNode(`${s.name} `));
    label.appendChild(el("span", { class: "svc" }, `${s.service} · ${s.durationMs.toFixed(2)} ms`));
    for (const link of s.links) {
      const kind = link.attributes["moe.link"] ?? "link";
      label.appendChild(
        el("span", { class: "link", title: `${kind} → ${link.spanId}` }, ` ↗${kind}`),
      );
    }
    row.appendChild(label);
    const bar = el("span", { class: "bar" });
    const fill = el("i");
    fill.style.left = `${((s.startMs - t0) / total) * 100}%`;
    fill.style.width = `${(s.durationMs / total) * 100}%`;
    bar.appendChild(fill);
    row.appendChild(bar);
    root.appendChild(row);
    for (const child of node.children) walk(child, depth + 1);
  };
  for (const r of trace.roots) walk(r, 0);
}

async function refreshTraces() {
  if (document.visibilityState === "hidden") return;
  try {
    const res = await fetch("/api/traces?limit=20");
    if (!res.ok) return;
    const { traces, spansKept } = await res.json();
    $("traces-kept").textContent = `${spansKept} spans kept in this process`;
    const list = $("trace-list");
    list.replaceChildren();
    if (traces.length === 0) list.appendChild(el("li", { class: "muted" }, "no traces yet"));
    for (const t of traces) {
      const li = el("li", {
        class: `${t.error ? "err " : ""}${t.traceId === selectedTrace ? "sel" : ""}`,
        "data-trace": t.traceId,
      });
      li.appendChild(el("span", { class: "name" }, t.rootName));
      li.appendChild(
        el(
          "span",
          { class: "muted" },
          ` · ${t.durationMs.toFixed(1)} ms · ${t.spanCount} spans · ${t.services.join(", ")}`,
        ),
      );
      li.addEventListener("click", () => {
        selectedTrace = t.traceId;
        for (const other of list.children) other.classList.toggle("sel", other === li);
        renderTree(t);
      });
      list.appendChild(li);
    }
    const selected = traces.find((t) => t.traceId === selectedTrace);
    if (selected) renderTree(selected);
  } catch {
    // The server may be restarting; the next refresh tries again.
  }
}

connect();
refreshTraces();
setInterval(refreshTraces, tracesRefreshMs);
