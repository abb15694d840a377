/* uisbench report.html: sorting, filtering, column toggle, plot and gallery switches; plain
   JavaScript, no network. Opened as report.html#selftest the page also exercises itself and
   records the outcome in <body data-selftest="pass|fail" data-selftest-log="...">. */
(function () {
  "use strict";
  var body = document.body;
  var board = document.getElementById("board");

  function value(td) { return td ? td.getAttribute("data-v") : ""; }

  function sortBy(col, dir, type) {
    if (!board) return;
    board.querySelectorAll("tbody.rows").forEach(function (tb) {
      var rows = Array.prototype.slice.call(tb.rows);
      rows.sort(function (a, b) {
        var x = value(a.cells[col]), y = value(b.cells[col]);
        if (x === "" || x === null) return (y === "" || y === null) ? a.dataset.i - b.dataset.i : 1;
        if (y === "" || y === null) return -1;
        var c = type === "num" ? parseFloat(x) - parseFloat(y) : String(x).localeCompare(String(y));
        return c === 0 ? a.dataset.i - b.dataset.i : dir * c;
      });
      rows.forEach(function (r) { tb.appendChild(r); });
    });
    board.querySelectorAll("thead th").forEach(function (th) { th.classList.remove("sorted-asc", "sorted-desc"); });
    var th = board.querySelector("thead th[data-col='" + col + "']");
    if (th) th.classList.add(dir > 0 ? "sorted-asc" : "sorted-desc");
    if (th) board.dataset.sorted = col + ":" + (dir > 0 ? "asc" : "desc");
  }

  function onHeader(th) {
    var col = +th.dataset.col, type = th.dataset.type;
    var first = th.dataset.better === "hi" ? -1 : 1;
    var dir = th.classList.contains("sorted-asc") ? -1 : th.classList.contains("sorted-desc") ? 1 : first;
    sortBy(col, dir, type);
    return dir;
  }

  function applyFilter() {
    var input = document.getElementById("filter");
    if (!board || !input) return;
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0, total = 0;
    board.querySelectorAll("tbody.rows tr[data-text]").forEach(function (tr) {
      var ok = terms.every(function (t) { return tr.dataset.text.indexOf(t) >= 0; });
      tr.classList.toggle("hidden", !ok);
      total += 1; shown += ok ? 1 : 0;
    });
    var count = document.getElementById("count");
    if (count) count.textContent = terms.length ? shown + " of " + total + " rows" : total + " rows";
  }

  /* ---- gallery ---- */
  var layers = {};
  var data = document.getElementById("layers");
  if (data) { try { layers = JSON.parse(data.textContent); } catch (e) { layers = {}; } }

  function pick(id) { var el = document.getElementById(id); return el ? el.value : ""; }

  function updateGallery() {
    var m = pick("gm"), show = pick("gs") || "pm";
    [["a", pick("ga")], ["b", pick("gb")]].forEach(function (side) {
      var role = side[0], bb = side[1];
      var key = show === "pm" ? "pm|" + bb + "|" + m : "st|" + bb + "|" + m + "|" + show.slice(3);
      var what = show === "pm" ? "pseudo-masks" : show.slice(3) + " predictions";
      document.querySelectorAll(".gimg").forEach(function (g) {
        var item = (layers[g.dataset.id] || {})[key];
        var img = g.querySelector(".p-" + role + " img.layer");
        var cap = g.querySelector(".p-" + role + " figcaption");
        if (img) { if (item && item.src) img.setAttribute("src", item.src); else img.removeAttribute("src"); }
        if (cap) {
          cap.textContent = role.toUpperCase() + ": " + bb + " · " + m + " — " +
            (item ? what + ": " + item.n + (item.shown < item.n ? " (best " + item.shown + " shown)" : "") : "no " + what + " for this pair");
        }
      });
    });
  }

  /* ---- wiring ---- */
  if (board) {
    board.querySelectorAll("tbody.rows").forEach(function (tb) {
      Array.prototype.forEach.call(tb.rows, function (r, i) { r.dataset.i = i; });
    });
    board.querySelectorAll("thead th[data-col]").forEach(function (th) {
      th.addEventListener("click", function () { onHeader(th); });
    });
  }
  var filter = document.getElementById("filter");
  if (filter) filter.addEventListener("input", applyFilter);
  var allcols = document.getElementById("allcols");
  if (allcols) allcols.addEventListener("change", function () { body.classList.toggle("allcols", allcols.checked); });
  document.querySelectorAll("a.bb").forEach(function (a) {
    a.addEventListener("click", function () {
      var d = document.getElementById(a.getAttribute("href").slice(1));
      if (d) d.open = true;
    });
  });
  var costsel = document.getElementById("costsel");
  if (costsel) costsel.addEventListener("change", function () {
    document.querySelectorAll(".costvar").forEach(function (v) { v.hidden = v.dataset.cost !== costsel.value; });
  });
  ["ga", "gb", "gm", "gs"].forEach(function (id) {
    var el = document.getElementById(id);
    if (el) el.addEventListener("change", updateGallery);
  });
  applyFilter();
  updateGallery();
  body.dataset.js = "ready";

  /* ---- self-test ---- */
  function selfTest() {
    var log = [], ok = true;
    function fail(msg) { ok = false; log.push("FAIL " + msg); }
    function visible(tb) { return Array.prototype.filter.call(tb.rows, function (r) { return !r.classList.contains("hidden"); }); }
    if (!board) { fail("no leaderboard table"); }
    else {
      var bodies = Array.prototype.slice.call(board.querySelectorAll("tbody.rows"));
      var tb = bodies.sort(function (a, b) { return b.rows.length - a.rows.length; })[0];
      var ths = Array.prototype.filter.call(board.querySelectorAll("thead th[data-type=num][data-col]"), function (th) {
        if (th.classList.contains("extra") || th.textContent.indexOf("rank") === 0) return false;
        var seen = {};
        Array.prototype.forEach.call(tb.rows, function (r) { var v = value(r.cells[+th.dataset.col]); if (v) seen[v] = 1; });
        return Object.keys(seen).length >= 2;
      });
      if (!ths.length) log.push("sort: no column with two distinct values (" + tb.rows.length + " rows)");
      else {
        var th = ths.filter(function (h) { return h.classList.contains("rankcol"); })[0] || ths[0], col = +th.dataset.col;
        [0, 1].forEach(function () {
          var dir = onHeader(th);
          var vals = Array.prototype.map.call(tb.rows, function (r) { return value(r.cells[col]); })
            .filter(function (v) { return v !== ""; }).map(parseFloat);
          for (var i = 1; i < vals.length; i++) {
            if (dir * (vals[i] - vals[i - 1]) < 0) { fail("sort " + th.textContent + " " + dir + ": " + vals.join(",")); break; }
          }
          log.push("sorted '" + th.textContent.trim() + "' " + (dir > 0 ? "asc" : "desc") + ": " + vals.join(","));
        });
        var rank = board.querySelector("thead th[data-col='0']");
        if (rank) {
          if (rank.classList.contains("sorted-asc")) onHeader(rank);
          onHeader(rank);
          var pos = Array.prototype.map.call(tb.rows, function (r) { return parseFloat(value(r.cells[0])); });
          for (var j = 1; j < pos.length; j++) if (pos[j] < pos[j - 1]) { fail("rank order not restored: " + pos.join(",")); break; }
          board.querySelectorAll("thead th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
        }
      }
      if (filter) {
        var first = tb.rows[0], name = first ? value(first.cells[1]) : "";
        filter.value = name; applyFilter();
        var shown = visible(tb);
        if (!shown.length || shown.some(function (r) { return r.dataset.text.indexOf(name.toLowerCase()) < 0; })) fail("filter '" + name + "'");
        filter.value = "no-such-row-zz"; applyFilter();
        if (bodies.some(function (b) { return visible(b).length; })) fail("filter hides nothing");
        filter.value = ""; applyFilter();
        log.push("filter '" + name + "': " + shown.length + " of " + tb.rows.length + " rows");
      }
      if (allcols) {
        var extra = board.querySelector("thead th.extra");
        allcols.checked = true; allcols.dispatchEvent(new Event("change"));
        var on = !extra || extra.offsetParent !== null;
        allcols.checked = false; allcols.dispatchEvent(new Event("change"));
        var off = !extra || extra.offsetParent === null;
        if (!on || !off) fail("column toggle"); else log.push("column toggle ok");
      }
    }
    var ga = document.getElementById("ga");
    if (ga && ga.options.length > 1) {
      var cap = document.querySelector(".gimg .p-a figcaption"), before = cap ? cap.textContent : "";
      var old = ga.selectedIndex;
      ga.selectedIndex = (old + 1) % ga.options.length; ga.dispatchEvent(new Event("change"));
      var after = cap ? cap.textContent : "";
      if (before === after) fail("gallery select did not switch"); else log.push("gallery switched to " + ga.value);
      ga.selectedIndex = old; ga.dispatchEvent(new Event("change"));
    }
    var layersShown = document.querySelectorAll(".gimg img.layer[src]").length;
    log.push("gallery layers shown: " + layersShown);
    body.dataset.selftest = ok ? "pass" : "fail";
    body.dataset.selftestLog = log.join(" | ");
  }
  if (location.hash.indexOf("selftest") >= 0) {
    try { selfTest(); } catch (e) { body.dataset.selftest = "fail"; body.dataset.selftestLog = "exception: " + e; }
  }
})();
