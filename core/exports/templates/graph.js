// lineage-ledger graph page: draws the views embedded in #graph-data. No network, no
// libraries; every text from a record goes through textContent, never innerHTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("graph-data").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var W = data.nodeWidth, H = data.nodeHeight;
  var svg = document.getElementById("canvas");
  var viewport = document.getElementById("viewport");
  var edgeLayer = document.getElementById("edges");
  var nodeLayer = document.getElementById("nodes");
  var details = document.getElementById("details");
  var select = document.getElementById("view");
  var search = document.getElementById("search");
  var current = null, byId = {}, everyNode = null, transform = { x: 20, y: 20, k: 1 };

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function html(name, text, parent, cls) {
    var node = document.createElement(name);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    if (parent) parent.appendChild(node);
    return node;
  }
  function colour(status) { return data.colours[status] || "#607d8b"; }
  function engineColour(engine) {
    var h = 0, s = String(engine || "");
    for (var i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) % 360;
    return "hsl(" + h + ",55%,45%)";
  }
  function shorten(text, max) { return text.length <= max ? text : "\u2026" + text.slice(text.length - max + 1); }

  function legend() {
    var box = document.getElementById("legend");
    ["OK", "MODIFIED", "MISSING", "broken", "superseded", "succeeded", "failed", "cached"].forEach(function (s) {
      var item = html("span", null, box);
      var sw = html("span", null, item, "swatch");
      sw.style.borderColor = colour(s); sw.style.background = colour(s) + "33";
      item.appendChild(document.createTextNode(s));
    });
    var engines = {};
    Object.keys(data.records).forEach(function (id) { engines[data.records[id].engine] = true; });
    Object.keys(engines).sort().forEach(function (e) {
      var item = html("span", null, box);
      var sw = html("span", null, item, "swatch");
      sw.style.borderColor = engineColour(e); sw.style.background = engineColour(e);
      item.appendChild(document.createTextNode("engine " + e));
    });
  }

  function applyTransform() {
    viewport.setAttribute("transform", "translate(" + transform.x + "," + transform.y + ") scale(" + transform.k + ")");
  }
  function fit() {
    var nodes = current.nodes;
    if (!nodes.length) return;
    var maxX = 0, maxY = 0;
    nodes.forEach(function (n) { maxX = Math.max(maxX, n.x + W); maxY = Math.max(maxY, n.y + H); });
    var box = svg.getBoundingClientRect();
    var byWidth = (box.width - 40) / maxX, byHeight = (box.height - 40) / maxY;
    var k = Math.min(byWidth, byHeight, 1.5);
    // A long, shallow chain would shrink to unreadable text to fit the width: fit its
    // height instead and let the reader pan along it.
    if (k < 0.7 && byHeight >= 0.7) k = Math.min(byHeight, 1);
    transform = { x: 20, y: 20, k: Math.max(k, 0.02) };
    applyTransform();
  }

  function draw(name) {
    current = data.views[name];
    byId = {};
    edgeLayer.textContent = ""; nodeLayer.textContent = "";
    current.nodes.forEach(function (n) { byId[n.id] = n; });
    current.edges.forEach(function (e) {
      var a = byId[e.from], b = byId[e.to];
      var x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mid = (x1 + x2) / 2;
      var path = el("path", { d: "M" + x1 + "," + y1 + " C" + mid + "," + y1 + " " + mid + "," + y2 + " " + x2 + "," + y2,
                              "class": "edge", "data-from": e.from, "data-to": e.to }, edgeLayer);
      if (e.count > 1) path.setAttribute("stroke-width", Math.min(1 + Math.log2(e.count), 6));
    });
    current.nodes.forEach(function (n) {
      var g = el("g", { "class": "node " + n.kind, "data-id": n.id, "data-kind": n.kind, "data-status": n.status,
                        transform: "translate(" + n.x + "," + n.y + ")" }, nodeLayer);
      var c = colour(n.status);
      el("rect", { "class": "box", width: W, height: H, rx: n.kind === "file" || n.of === "file" ? 14 : 4,
                   fill: c, "fill-opacity": 0.14, stroke: c }, g);
      if (n.engine) el("rect", { "class": "engine", x: 0, y: 0, width: 6, height: H, fill: engineColour(n.engine) }, g);
      var text = el("text", { x: 12, y: 14 }, g);
      text.textContent = shorten(n.label, 34);
      var sub = el("text", { x: 12, y: 28, "font-size": 10, fill: "#57606a" }, g);
      sub.textContent = n.status + (n.kind === "file" ? " \u00b7 " + n.digest.slice(0, 12) : "")
        + (n.kind === "task" ? " \u00b7 run " + n.run : "") + (n.kind === "group" ? " \u00b7 click to list" : "");
      var title = el("title", {}, g);
      title.textContent = n.label + " [" + n.status + "]";
      g.addEventListener("click", function (event) { event.stopPropagation(); show(n); });
    });
    document.getElementById("count").textContent = current.nodes.length + " nodes, " + current.edges.length + " edges";
    select.value = name;
    fit();
  }

  function highlight(id) {
    Array.prototype.forEach.call(nodeLayer.querySelectorAll("g.node.selected"), function (g) { g.classList.remove("selected"); });
    Array.prototype.forEach.call(edgeLayer.querySelectorAll("path.lit"), function (p) { p.classList.remove("lit"); });
    var g = nodeLayer.querySelector('g.node[data-id="' + CSS.escape(id) + '"]');
    if (g) g.classList.add("selected");
    Array.prototype.forEach.call(edgeLayer.querySelectorAll("path.edge"), function (p) {
      if (p.getAttribute("data-from") === id || p.getAttribute("data-to") === id) p.classList.add("lit");
    });
  }

  function field(list, name, value) {
    html("dt", name, list);
    html("dd", value, list);
  }

  function show(n) {
    highlight(n.id);
    details.textContent = "";
    html("h2", n.label, details);
    var status = html("p", null, details);
    status.appendChild(document.createTextNode("status: "));
    var s = html("span", n.status, status, "status"); s.style.color = colour(n.status);
    var list = html("dl", null, details);
    if (n.kind === "file") {
      field(list, "path", n.path);
      if (n.type === "dir") field(list, "type", "directory (BLAKE3 of its manifest)");
      if (n.aliases && n.aliases.length) field(list, "also named", n.aliases.join(", "));
      field(list, "BLAKE3", n.digest); field(list, "size", n.size + " bytes");
      if (n.producer) {
        var record = data.records[n.producer.slice(2)];
        field(list, "made by", record.engine + ":" + record.task_name + " (record " + record.id.slice(0, 12) + ")");
        html("pre", JSON.stringify(record, null, 2), details);
      } else {
        field(list, "made by", "no recorded task (a source)");
      }
    } else if (n.kind === "task") {
      var rec = data.records[n.id.slice(2)];
      field(list, "record", rec.id); field(list, "engine", rec.engine); field(list, "run", rec.run_id);
      html("pre", JSON.stringify(rec, null, 2), details);
    } else {
      field(list, "members", n.members.length + " " + (n.of === "task" ? "tasks" : "files"));
      html("p", "Open one in the full view:", details);
      if (!everyNode) {
        everyNode = {};
        data.views.all.nodes.forEach(function (m) { everyNode[m.id] = m; });
      }
      n.members.slice(0, 500).forEach(function (id) {
        var full = everyNode[id];
        var button = html("button", full ? full.label + " [" + full.status + "]" : id, details, "member");
        button.type = "button";
        button.addEventListener("click", function () { draw("all"); focus(id); });
      });
      if (n.members.length > 500) html("p", (n.members.length - 500) + " more", details);
    }
  }

  function focus(id) {
    var n = byId[id];
    if (!n) return;
    var box = svg.getBoundingClientRect();
    transform = { k: 1, x: box.width / 2 - n.x - W / 2, y: box.height / 2 - n.y - H / 2 };
    applyTransform();
    show(n);
  }

  // pan and zoom
  var drag = null;
  svg.addEventListener("mousedown", function (e) { drag = { x: e.clientX - transform.x, y: e.clientY - transform.y }; svg.classList.add("dragging"); });
  window.addEventListener("mousemove", function (e) { if (drag) { transform.x = e.clientX - drag.x; transform.y = e.clientY - drag.y; applyTransform(); } });
  window.addEventListener("mouseup", function () { drag = null; svg.classList.remove("dragging"); });
  svg.addEventListener("wheel", function (e) {
    e.preventDefault();
    var box = svg.getBoundingClientRect(), mx = e.clientX - box.left, my = e.clientY - box.top;
    var k = Math.min(Math.max(transform.k * (e.deltaY < 0 ? 1.15 : 1 / 1.15), 0.02), 4);
    transform.x = mx - (mx - transform.x) * k / transform.k;
    transform.y = my - (my - transform.y) * k / transform.k;
    transform.k = k;
    applyTransform();
  }, { passive: false });

  search.addEventListener("input", function () {
    var q = search.value.trim().toLowerCase();
    Array.prototype.forEach.call(nodeLayer.querySelectorAll("g.node"), function (g) {
      var n = byId[g.getAttribute("data-id")];
      var hit = q && (n.label.toLowerCase().indexOf(q) >= 0 || (n.path || "").toLowerCase().indexOf(q) >= 0);
      g.classList.toggle("hit", !!hit);
      g.classList.toggle("dim", !!q && !hit);
    });
  });
  select.addEventListener("change", function () { draw(select.value); });
  document.getElementById("fit").addEventListener("click", fit);
  document.getElementById("footer").textContent = "lineage-ledger graph of ledger " + data.head.origin + " at tree size "
    + data.head.size + " (root " + data.head.root.slice(0, 16) + "), drawn " + data.generated
    + ". Statuses compare each file's last recorded version with the disk when the page was made.";
  legend();
  draw(data.defaultView);
  document.body.setAttribute("data-ready", "1");
})();
