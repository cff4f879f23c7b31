/* aetrain report: copy buttons, the run page's epoch picker, and the sweep page's sortable and filterable
   table, parallel coordinates with brushing, and overlaid validation curves. Hand-written, no library:
   the page must work from disk with no network. */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent, text) {
    var node = document.createElementNS(SVG, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-4)) return v.toExponential(1).replace("e+", "e");
    return String(parseFloat(v.toPrecision(3)));
  }

  /* --- copy buttons ----------------------------------------------------------------------------------- */
  function copyText(text, button) {
    function done() {
      button.textContent = "copied";
      button.classList.add("done");
      setTimeout(function () { button.textContent = "copy"; button.classList.remove("done"); }, 1200);
    }
    function fallback() {
      var area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selectable */ }
      document.body.removeChild(area);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  }
  document.querySelectorAll(".cmd .copy").forEach(function (button) {
    button.addEventListener("click", function () {
      copyText(button.parentNode.querySelector("code").textContent, button);
    });
  });

  /* --- scales and a line chart, for both pages ------------------------------------------------------ */
  function niceTicks(lo, hi, count) {
    var span = hi - lo;
    if (!(span > 0)) return [lo];
    var step = Math.pow(10, Math.floor(Math.log10(span / count))), err = span / count / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(parseFloat(v.toPrecision(12)));
    return out;
  }
  function logTicks(lo, hi) {
    var out = [], a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    var mult = b - a <= 2 ? [1, 2, 5] : [1];
    for (var e = a; e <= b; e++) mult.forEach(function (m) {
      var v = m * Math.pow(10, e);
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(parseFloat(v.toPrecision(6)));
    });
    return out.length >= 2 ? out : [lo, hi];
  }
  // a scale maps a value to a fraction of the axis (0 = bottom, 1 = top)
  // few distinct values (a grid's): ticks at those values
  function numericScale(values, log, atValues) {
    var v = values.filter(function (x) { return x !== null && isFinite(x) && (!log || x > 0); });
    var distinct = v.filter(function (x, i) { return v.indexOf(x) === i; }).sort(function (a, b) { return a - b; });
    var lo = Math.min.apply(null, v), hi = Math.max.apply(null, v);
    var t = log ? Math.log : function (x) { return x; };
    if (!(hi > lo)) { lo = lo - (Math.abs(lo) || 1) * 0.1; hi = hi + (Math.abs(hi) || 1) * 0.1; }
    var a = t(lo), b = t(hi), pad = (b - a) * 0.06;
    a -= pad; b += pad;
    return {
      at: function (x) { return x === null || !isFinite(x) || (log && x <= 0) ? null : (t(x) - a) / (b - a); },
      ticks: atValues && distinct.length <= 8 && distinct.length < v.length ? distinct  // a grid's repeated values
        : log ? logTicks(lo, hi) : niceTicks(lo, hi, 5),
      label: fmt
    };
  }
  function categoryScale(categories) {
    var n = categories.length;
    return {
      at: function (x) { var i = categories.indexOf(x); return i < 0 ? null : n === 1 ? 0.5 : 0.08 + 0.84 * i / (n - 1); },
      ticks: categories,
      label: function (x) { return String(x); }
    };
  }

  /* a line chart: series of (x, y) points; log y when the values that set the scale span a decade */
  function lineChart(box, spec) {
    box.innerHTML = "";
    var H = spec.height || 360, top = 16, bottom = 40, left = 64, right = spec.right || 170;
    var W = Math.max(520, box.clientWidth), plotW = W - left - right, plotH = H - top - bottom;
    var series = spec.series.filter(function (s) { return s.xs.length; });
    if (!series.length) { box.textContent = spec.empty || "Nothing to draw."; return; }
    var basis = series.filter(function (s) { return !spec.basis || spec.basis(s); });
    if (!basis.length) basis = series;
    var values = [], xsAll = [];
    basis.forEach(function (s) { s.ys.forEach(function (v) { if (v !== null && isFinite(v) && v > 0) values.push(v); }); });
    series.forEach(function (s) { xsAll = xsAll.concat(s.xs); });
    if (!values.length) { box.textContent = spec.empty || "Nothing to draw."; return; }
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values), log = hi / lo >= 10;
    var ys = numericScale(values, log), xs = numericScale([Math.min.apply(null, xsAll), Math.max.apply(null, xsAll)], false);
    var svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H }, box);
    function X(x) { return left + plotW * xs.at(x); }
    function Y(v) { var f = ys.at(v); return f === null ? null : top + plotH * (1 - f); }
    var grid = el("g", { "class": "grid" }, svg), axis = el("g", { "class": "axis" }, svg);
    ys.ticks.forEach(function (t) {
      var yy = Y(t);
      if (yy === null || yy < top - 1 || yy > top + plotH + 1) return;
      el("line", { x1: left, x2: left + plotW, y1: yy, y2: yy }, grid);
      el("text", { x: left - 6, y: yy + 3.5, "text-anchor": "end" }, axis, fmt(t));
    });
    xs.ticks.filter(function (t) { return Math.round(t) === t; }).forEach(function (t) {
      var xx = X(t);
      el("line", { x1: xx, x2: xx, y1: top + plotH, y2: top + plotH + 4 }, axis);
      el("text", { x: xx, y: top + plotH + 16, "text-anchor": "middle" }, axis, String(t));
    });
    el("line", { x1: left, x2: left + plotW, y1: top + plotH, y2: top + plotH }, axis);
    el("line", { x1: left, x2: left, y1: top, y2: top + plotH }, axis);
    el("text", { x: left + plotW / 2, y: H - 6, "text-anchor": "middle", "class": "title" }, svg, spec.xLabel);
    el("text", { x: 14, y: top + plotH / 2, transform: "rotate(-90 14 " + (top + plotH / 2) + ")",
                 "text-anchor": "middle", "class": "title" }, svg, spec.yLabel + (log ? " (log scale)" : ""));
    var clip = el("clipPath", { id: box.id + "-clip" }, el("defs", {}, svg));
    el("rect", { x: left, y: top - 2, width: plotW, height: plotH + 4 }, clip);
    var lines = el("g", { "clip-path": "url(#" + box.id + "-clip)" }, svg);
    series.forEach(function (s) {
      var d = "", pen = false;
      s.xs.forEach(function (x, k) {
        var v = s.ys[k], yy = v === null ? null : Y(v);
        if (yy === null) { pen = false; return; }
        d += (pen ? "L" : "M") + X(x).toFixed(1) + "," + Math.max(-1000, Math.min(H + 1000, yy)).toFixed(1);
        pen = true;
      });
      var p = el("path", { d: d, "class": "job " + (s.cls || ""), stroke: s.colour }, lines);
      if (s.id !== undefined) p.setAttribute("data-job", s.id);
      if (s.points) {
        s.xs.forEach(function (x, k) {
          var yy = s.ys[k] === null ? null : Y(s.ys[k]);
          if (yy !== null) el("circle", { cx: X(x), cy: yy, r: 2.5, fill: s.colour }, lines);
        });
      }
      if (spec.hover) {
        p.addEventListener("mousemove", function (e) { spec.hover(s, true, e); });
        p.addEventListener("mouseleave", function () { spec.hover(s, false); });
      }
    });
    (spec.marks || []).forEach(function (m) {
      var mx = X(m.x), my = Y(m.y);
      if (my === null) return;
      el("path", { d: "M" + mx + "," + (my - 7) + "l2,5h5l-4,3l2,6l-5,-4l-5,4l2,-6l-4,-3h5z", fill: m.colour,
                   stroke: "#000", "stroke-width": 0.6 }, svg).appendChild(el("title", {}, null, m.title));
    });
    var used = [];
    (spec.names || []).forEach(function (n) {
      var yy = Y(n.y);
      if (yy === null) return;
      yy = Math.max(top + 8, Math.min(top + plotH, yy)) + 4;
      while (used.some(function (u) { return Math.abs(u - yy) < 13; })) yy += 13;
      used.push(yy);
      el("text", { x: left + plotW + 8, y: yy, style: "fill:" + n.colour, "font-weight": 600 }, svg, n.text);
    });
    if (spec.note) el("text", { x: left + plotW + 8, y: top + plotH, style: "fill:#636c76" }, svg, spec.note(hi));
  }

  /* --- the run page: loss curves from metrics.csv when the run drew no loss_curve.png ---------------- */
  var runData = document.getElementById("run-data");
  if (runData) {
    var m = JSON.parse(runData.textContent), names = [];
    var series = [{ xs: m.epochs, ys: m.train, colour: "#1f77b4", points: m.epochs.length <= 30 },
                  { xs: m.epochs, ys: m.val, colour: "#d62728", points: m.epochs.length <= 30 }];
    [["train loss", m.train, "#1f77b4"], ["validation loss", m.val, "#d62728"]].forEach(function (t) {
      var last = t[1].filter(function (v) { return v !== null; }).pop();
      if (last !== undefined) names.push({ y: last, text: t[0], colour: t[2] });
    });
    var k = m.best_index, marks = k === null ? [] : [{ x: m.epochs[k], y: m.val[k], colour: "#d62728",
                                                      title: "best validation loss, epoch " + m.epochs[k] }];
    lineChart(document.getElementById("loss-chart"), { series: series, xLabel: "epoch", yLabel: "loss",
                                                      names: names, marks: marks, right: 130 });
  }

  /* --- the run page: pick an epoch ------------------------------------------------------------------- */
  document.querySelectorAll(".picker").forEach(function (picker) {
    var epochs = picker.getAttribute("data-epochs").split(",").map(Number);
    var range = picker.querySelector("input[type=range]");
    var shown = picker.querySelector(".epoch");
    var section = picker.closest("section");
    function show(i) {
      i = Math.max(0, Math.min(epochs.length - 1, i));
      range.value = i;
      var epoch = epochs[i];
      shown.textContent = "epoch " + epoch;
      section.querySelectorAll("figure.frames").forEach(function (figure) {
        var imgs = Array.prototype.slice.call(figure.querySelectorAll("img"));
        var pick = null;  // the latest picture not after the chosen epoch
        imgs.forEach(function (img) { if (Number(img.getAttribute("data-epoch")) <= epoch) pick = img; });
        pick = pick || imgs[0];
        imgs.forEach(function (img) { img.hidden = img !== pick; });
      });
    }
    range.addEventListener("input", function () { show(Number(range.value)); });
    picker.querySelectorAll("button").forEach(function (b) {
      b.addEventListener("click", function () {
        var step = b.getAttribute("data-step"), epoch = b.getAttribute("data-epoch");
        if (epoch !== null) show(epochs.indexOf(Number(epoch)));
        else if (step === "first") show(0);
        else if (step === "last") show(epochs.length - 1);
        else show(Number(range.value) + Number(step));
      });
    });
    document.addEventListener("keydown", function (e) {
      var r = section.getBoundingClientRect();
      if (r.bottom < 0 || r.top > window.innerHeight || e.target.tagName === "INPUT") return;
      if (e.key === "ArrowLeft") show(Number(range.value) - 1);
      if (e.key === "ArrowRight") show(Number(range.value) + 1);
    });
  });

  /* --- the sweep page ---------------------------------------------------------------------------------- */
  var blob = document.getElementById("sweep-data");
  if (!blob) return;
  var data = JSON.parse(blob.textContent);
  var table = document.getElementById("jobs-table");
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  var rowOf = {}, initial = {};  // ties keep the page's own order (best first, failed jobs by number)
  rows.forEach(function (r, i) { rowOf[r.getAttribute("data-job")] = r; initial[r.getAttribute("data-job")] = i; });
  var jobs = data.jobs;
  var state = { words: [], brushes: {}, hover: null };
  var tip = document.createElement("div");
  tip.className = "tip";
  tip.hidden = true;
  document.body.appendChild(tip);

  // colour by rank of the objective: dark green (best) through blue to grey (worst); failed jobs red
  var ranked = jobs.filter(function (j) { return j.objective !== null; })
                   .sort(function (a, b) { return a.objective - b.objective; });
  var rankOf = {};
  ranked.forEach(function (j, i) { rankOf[j.num] = ranked.length > 1 ? i / (ranked.length - 1) : 0; });
  var stops = [[26, 127, 55], [31, 119, 180], [165, 180, 196]];
  function colour(job) {
    if (job.status === "running") return "#bf8700";
    if (job.objective === null) return "#d62728";
    var t = rankOf[job.num] * 2, i = Math.min(1, Math.floor(t)), f = t - i;
    var c = stops[i].map(function (v, k) { return Math.round(v + (stops[i + 1][k] - v) * f); });
    return "rgb(" + c.join(",") + ")";
  }

  function searchText(row) {
    var extra = Array.prototype.map.call(row.querySelectorAll("[data-text]"), function (td) {
      return td.getAttribute("data-text");
    });
    return (row.textContent + " " + extra.join(" ")).toLowerCase();
  }
  var texts = {};
  rows.forEach(function (r) { texts[r.getAttribute("data-job")] = searchText(r); });

  function passes(job) {
    var text = texts[job.num] || "";
    for (var i = 0; i < state.words.length; i++) if (text.indexOf(state.words[i]) < 0) return false;
    for (var axis in state.brushes) {
      var b = state.brushes[axis], f = parcoords.fraction(job, Number(axis));
      if (f === null || f < b[0] || f > b[1]) return false;
    }
    return true;
  }

  function update() {
    var shown = 0;
    jobs.forEach(function (job) {
      var ok = passes(job), row = rowOf[job.num];
      if (row) row.hidden = !ok;
      shown += ok ? 1 : 0;
      document.querySelectorAll('path.job[data-job="' + job.num + '"]').forEach(function (p) {
        p.classList.toggle("off", !ok);
      });
    });
    document.getElementById("shown").textContent = shown === jobs.length ? jobs.length + " jobs"
      : "showing " + shown + " of " + jobs.length + " jobs";
    document.getElementById("reset").hidden = !(state.words.length || Object.keys(state.brushes).length);
  }

  function hover(num, on, event) {
    state.hover = on ? num : null;
    var row = rowOf[num];
    if (row) row.classList.toggle("hover", on);
    document.querySelectorAll('path.job[data-job="' + num + '"]').forEach(function (p) {
      p.classList.toggle("hover", on);
      if (on) p.parentNode.appendChild(p);  // on top of the others
    });
    if (on && event) {
      var job = jobs.filter(function (j) { return j.num === num; })[0];
      tip.textContent = "job " + num + ": " + job.label + " · " + (job.objective === null ? job.status : fmt(job.objective));
      tip.style.left = (event.clientX + 12) + "px";
      tip.style.top = (event.clientY + 12) + "px";
      tip.hidden = false;
    } else {
      tip.hidden = true;
    }
  }

  /* the table: sort by a column, filter by words */
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  heads.forEach(function (th, column) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      heads.forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var keyed = rows.map(function (r) {
        var cell = r.cells[column], raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
        var n = raw === "" ? NaN : Number(raw);
        return { row: r, i: initial[r.getAttribute("data-job")], num: isNaN(n) ? null : n, text: raw.toLowerCase(),
                 empty: raw === "" || raw === "-" };
      });
      keyed.sort(function (a, b) {
        if (a.empty !== b.empty) return a.empty ? 1 : -1;  // empty cells last, either way
        var c;
        if (a.num !== null && b.num !== null) c = a.num - b.num;
        else if (a.num !== null || b.num !== null) c = a.num !== null ? -1 : 1;
        else c = a.text < b.text ? -1 : (a.text > b.text ? 1 : 0);
        return (asc ? c : -c) || a.i - b.i;
      });
      var body = table.tBodies[0];
      keyed.forEach(function (k) { body.appendChild(k.row); });
      rows = keyed.map(function (k) { return k.row; });
    });
  });
  var filter = document.getElementById("filter");
  filter.addEventListener("input", function () {
    state.words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    update();
  });
  document.getElementById("reset").addEventListener("click", function () {
    filter.value = "";
    state.words = [];
    state.brushes = {};
    parcoords.draw();
    update();
  });
  rows.forEach(function (r) {
    var num = Number(r.getAttribute("data-job"));
    r.addEventListener("mouseenter", function () { hover(num, true); });
    r.addEventListener("mouseleave", function () { hover(num, false); });
  });

  /* parallel coordinates */
  var parcoords = (function () {
    var box = document.getElementById("parcoords");
    var axes = data.axes.map(function (a, i) {
      var values = jobs.map(function (j) { return j.values[i]; });
      return { label: a.label, key: a.key, scale: a.numeric ? numericScale(values, a.log, true) : categoryScale(a.categories),
               value: function (j) { return j.values[i]; } };
    });
    axes.push({ label: "best val/loss", key: "objective",
                scale: numericScale(jobs.map(function (j) { return j.objective; }), data.objective_log),
                value: function (j) { return j.objective; } });
    var H = 330, top = 46, bottom = 24, plot = H - top - bottom;
    function fraction(job, axis) { return axes[axis].scale.at(axes[axis].value(job)); }
    function draw() {
      box.innerHTML = "";
      var W = Math.max(560, box.clientWidth), left = 70, right = 90;
      var svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H }, box);
      var xs = axes.map(function (a, i) { return left + (W - left - right) * (axes.length > 1 ? i / (axes.length - 1) : 0.5); });
      function y(f) { return top + plot * (1 - f); }
      var lines = el("g", {}, svg);
      jobs.forEach(function (job) {
        var d = "", pen = false;
        axes.forEach(function (a, i) {
          var f = fraction(job, i);
          if (f === null && i === axes.length - 1 && job.status === "failed") f = 1.09;  // failed: above the scale
          if (f === null) { pen = false; return; }
          d += (pen ? "L" : "M") + xs[i].toFixed(1) + "," + y(f).toFixed(1);
          pen = true;
        });
        var cls = "job" + (job.num === data.best ? " best" : "") + (job.status !== "ok" ? " failed" : "");
        var p = el("path", { d: d, "class": cls, "data-job": job.num, stroke: colour(job) }, lines);
        p.addEventListener("mousemove", function (e) { hover(job.num, true, e); });
        p.addEventListener("mouseleave", function () { hover(job.num, false); });
      });
      var best = lines.querySelector("path.best");
      if (best) lines.appendChild(best);
      axes.forEach(function (a, i) {
        var g = el("g", { "class": "axis" }, svg);
        el("line", { x1: xs[i], x2: xs[i], y1: top, y2: top + plot }, g);
        el("text", { x: xs[i], y: top - 26, "text-anchor": "middle", "class": "title" }, g, a.label).appendChild(
          el("title", {}, null, a.key));
        var last = i === axes.length - 1, side = last ? 1 : -1;  // the objective's labels on its right
        a.scale.ticks.forEach(function (t) {
          var f = a.scale.at(t);
          if (f === null || f < -0.01 || f > 1.01) return;
          el("line", { x1: xs[i] + 4 * side, x2: xs[i], y1: y(f), y2: y(f) }, g);
          el("text", { x: xs[i] + 7 * side, y: y(f) + 3.5, "text-anchor": last ? "start" : "end" }, g, a.scale.label(t));
        });
        if (i === axes.length - 1 && jobs.some(function (j) { return j.status === "failed"; })) {
          el("text", { x: xs[i] + 7, y: y(1.09) + 3.5, style: "fill:#d62728" }, g, "failed");
          el("line", { x1: xs[i] - 4, x2: xs[i] + 4, y1: y(1.09), y2: y(1.09), stroke: "#d62728" }, g);
        }
        var b = state.brushes[i];
        var rect = el("rect", { "class": "brush", x: xs[i] - 9, width: 18, y: 0, height: 0, rx: 2 }, g);
        function paint(b) {
          rect.setAttribute("y", b ? y(b[1]) : 0);
          rect.setAttribute("height", b ? Math.max(1, y(b[0]) - y(b[1])) : 0);
        }
        paint(b);
        var hit = el("rect", { "class": "hit", x: xs[i] - 14, width: 28, y: top - 8, height: plot + 16,
                               "data-axis": i }, g);
        var start = null;
        function at(e) { var r = svg.getBoundingClientRect(); return 1 - (e.clientY - r.top - top) / plot; }
        hit.addEventListener("pointerdown", function (e) {
          start = at(e);
          hit.setPointerCapture(e.pointerId);
          e.preventDefault();
        });
        hit.addEventListener("pointermove", function (e) {
          if (start === null) return;
          var f = at(e);
          paint([Math.min(start, f), Math.max(start, f)]);
        });
        hit.addEventListener("pointerup", function (e) {
          if (start === null) return;
          var f = at(e);
          if (Math.abs(f - start) * plot < 3) delete state.brushes[i];  // a click: clear this axis
          else state.brushes[i] = [Math.min(start, f), Math.max(start, f)];
          start = null;
          paint(state.brushes[i]);
          update();
        });
      });
    }
    return { draw: draw, fraction: fraction };
  })();

  /* validation curves */
  function drawCurves() {
    var withCurves = jobs.filter(function (j) { return j.epochs.length; });
    var best = jobs.filter(function (j) { return j.num === data.best; })[0];
    var series = withCurves.slice().reverse().map(function (j) {  // the best drawn last, on top
      return { id: j.num, xs: j.epochs, ys: j.val, colour: colour(j), job: j,
               cls: (j.num === data.best ? "best" : "") + (j.status !== "ok" ? " failed" : "") };
    });
    var marks = [], names = [];
    if (best && best.epochs.length) {
      var k = best.val.indexOf(best.objective);
      if (k < 0) k = best.val.length - 1;
      marks.push({ x: best.epochs[k], y: best.val[k], colour: "#2ca02c", title: "best: job " + best.num + ", epoch " + best.epochs[k] });
      names.push({ y: best.val[best.val.length - 1], text: "best: job " + best.num, colour: "#1a7f37" });
    }
    lineChart(document.getElementById("curves-chart"), {
      series: series, xLabel: "epoch", yLabel: "val/loss", marks: marks, names: names, height: 380,
      empty: "No job finished an epoch.",
      basis: function (s) { return s.job.status === "ok"; },  // a failed job's blow-up must not flatten the rest
      hover: function (s, on, e) { hover(s.id, on, e); },
      note: function (hi) {
        var above = withCurves.filter(function (j) {
          return j.status !== "ok" && j.val.every(function (v) { return v === null || v > hi * 1.2; });
        });
        return withCurves.length + " job" + (withCurves.length === 1 ? "" : "s") +
          (above.length ? ", " + above.length + " failed above the scale" : "");
      }
    });
  }

  function drawAll() {
    parcoords.draw();
    drawCurves();
    update();
  }
  drawAll();
  var timer = null, width = window.innerWidth;
  window.addEventListener("resize", function () {
    if (window.innerWidth === width) return;
    width = window.innerWidth;
    clearTimeout(timer);
    timer = setTimeout(drawAll, 150);
  });
})();
