/* HematoVision pages: progressive enhancement only. Every form works without this file. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var csrf = (document.getElementById("main") || {}).dataset ? document.getElementById("main").dataset.csrf : "";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  /* ---------- upload: folders (drag and drop keeps subfolders), files, a zip; progress ---------- */
  var form = $("#upload-form");
  if (form) {
    var chosen = [];  // [{file, path}]
    var zone = $("#dropzone"), label = $("#chosen"), errorBox = $("#upload-error");
    var showChosen = function () {
      errorBox.hidden = true;  // a new choice: the last attempt's error no longer applies
      var bytes = chosen.reduce(function (n, c) { return n + c.file.size; }, 0);
      var slides = {};
      chosen.forEach(function (c) { var i = c.path.lastIndexOf("/"); slides[i > 0 ? c.path.slice(0, i) : ""] = 1; });
      label.textContent = chosen.length ? chosen.length + " file(s), " + (bytes / 1048576).toFixed(1) + " MB, " +
        Object.keys(slides).length + " folder(s)" : "Nothing chosen yet.";
    };
    var fromInput = function (input) {
      chosen = Array.prototype.map.call(input.files, function (f) { return { file: f, path: f.webkitRelativePath || f.name }; });
      showChosen();
    };
    $("#folder-input").addEventListener("change", function () { fromInput(this); });
    $("#files-input").addEventListener("change", function () { fromInput(this); });
    var readAll = function (reader) {
      return new Promise(function (resolve, reject) {
        var out = [];
        (function next() {
          reader.readEntries(function (batch) { if (!batch.length) { resolve(out); } else { out = out.concat(batch); next(); } }, reject);
        })();
      });
    };
    var walk = function (entry, prefix) {
      if (entry.isFile) {
        return new Promise(function (resolve, reject) {
          entry.file(function (f) { resolve([{ file: f, path: prefix + f.name }]); }, reject);
        });
      }
      return readAll(entry.createReader()).then(function (children) {
        return Promise.all(children.map(function (c) { return walk(c, prefix + entry.name + "/"); }));
      }).then(function (lists) { return [].concat.apply([], lists); });
    };
    ["dragenter", "dragover"].forEach(function (t) {
      zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.add("over"); });
    });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      zone.classList.remove("over");
      var entries = Array.prototype.map.call(e.dataTransfer.items || [], function (i) { return i.webkitGetAsEntry && i.webkitGetAsEntry(); })
        .filter(Boolean);
      if (!entries.length) {
        chosen = Array.prototype.map.call(e.dataTransfer.files, function (f) { return { file: f, path: f.name }; });
        showChosen();
        return;
      }
      Promise.all(entries.map(function (en) { return walk(en, ""); })).then(function (lists) {
        chosen = [].concat.apply([], lists);
        showChosen();
      });
    });
    zone.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#folder-input").click(); } });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      errorBox.hidden = true;
      if (!chosen.length) { errorBox.textContent = "Choose a folder, some images or a .zip first."; errorBox.hidden = false; return; }
      var data = new FormData();
      chosen.forEach(function (c) { data.append("files", c.file, c.path); });
      data.append("kind", (form.querySelector("input[name=kind]:checked") || {}).value || "auto");
      data.append("name", $("#name").value);
      var bar = $("#upload-progress"), button = $("#upload-button");
      bar.hidden = false;
      button.disabled = true;
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.upload.onprogress = function (ev) {
        if (!ev.lengthComputable) { return; }
        var pct = Math.round(100 * ev.loaded / ev.total);
        $(".bar", bar).style.width = pct + "%";
        $(".progress-text", bar).textContent = pct < 100 ? "uploading " + pct + " %" : "checking the files...";
      };
      xhr.onload = function () {
        var body = {};
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = {}; }
        if (xhr.status >= 200 && xhr.status < 300 && body.location) { window.location.assign(body.location); return; }
        var msg = (body.error && body.error.message) || ("The upload failed (HTTP " + xhr.status + ").");
        if (body.error && body.error.files) {
          msg += ": " + body.error.files.slice(0, 5).map(function (f) { return f.path + ": " + f.error; }).join("; ");
        }
        errorBox.textContent = msg;
        errorBox.hidden = false;
        bar.hidden = true;
        button.disabled = false;
      };
      xhr.onerror = function () { errorBox.textContent = "The server could not be reached."; errorBox.hidden = false; button.disabled = false; };
      xhr.send(data);
    });
  }

  /* ---------- jobs list: refresh the rows while a job is queued or running ---------- */
  var table = $("#jobs-table");
  if (table) {
    var pollRows = function () {
      if (!$all("tr[data-status=queued], tr[data-status=running]", table).length) { return; }
      fetch(table.dataset.poll, { credentials: "same-origin" }).then(function (r) { return r.ok ? r.text() : null; }).then(function (html) {
        if (html !== null) { $("#job-rows").innerHTML = html; }
        setTimeout(pollRows, 1500);
      }, function () { setTimeout(pollRows, 4000); });
    };
    setTimeout(pollRows, 1500);
  }

  /* ---------- job page: live progress, reload when finished ---------- */
  var live = $("#live");
  if (live) {
    var pollJob = function () {
      fetch(live.dataset.progress, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json(); }).then(function (job) {
          var done = job.images.done + job.images.failed, total = job.images.total || 1;
          $(".bar", live).style.width = (100 * done / total).toFixed(1) + "%";
          $(".progress-text", live).textContent = done + " / " + job.images.total + " images";
          $("[role=progressbar]", live).setAttribute("aria-valuenow", Math.round(100 * done / total));
          $("#job-status").textContent = job.status;
          if (job.status === "queued" || job.status === "running") { setTimeout(pollJob, 1000); } else { window.location.reload(); }
        }, function () { setTimeout(pollJob, 3000); });
    };
    setTimeout(pollJob, 1000);
  }

  /* ---------- review: number keys reclassify the focused cell, Enter confirms; saved without leaving the page ---------- */
  var gallery = $("#gallery");
  if (gallery && $(".review-form", gallery)) {
    var reviewer = $("#reviewer");
    var cards = $all("li.cell", gallery);
    var send = function (card, labelValue) {
      var f = $(".review-form", card);
      if (!f) { return; }
      var name = reviewer ? reviewer.value.trim() : "";
      if (!name) { reviewer.focus(); reviewer.setCustomValidity("Type your name first"); reviewer.reportValidity(); return; }
      reviewer.setCustomValidity("");
      if (labelValue) { f.elements.label.value = labelValue; }
      f.elements.reviewer.value = name;
      var data = new FormData(f);
      fetch(f.action, { method: "POST", body: data, credentials: "same-origin",
                        headers: { Accept: "application/json", "X-CSRF-Token": csrf, "X-Requested-With": "fetch" } })
        .then(function (r) { return r.json().then(function (b) { return { ok: r.ok, body: b }; }); })
        .then(function (res) {
          if (!res.ok) { window.alert(res.body.error ? res.body.error.message : "The review was not saved."); return; }
          card.classList.add("reviewed");
          card.dataset.label = res.body.label;
          $(".cell-label", card).textContent = res.body.label;
          var badge = $(".badge", card) || card.querySelector(".cell-info").insertBefore(document.createElement("span"), $(".probs", card));
          badge.className = res.body.label === card.dataset.modelLabel ? "badge ok" : "badge";
          badge.textContent = res.body.label === card.dataset.modelLabel ? "confirmed" : "was " + card.dataset.modelLabel;
          $("#review-counts").textContent = res.body.review.n_reviewed + " reviewed, " + res.body.review.n_changed + " changed";
          var i = cards.indexOf(card);
          if (i >= 0 && i + 1 < cards.length) { cards[i + 1].focus(); }
        });
    };
    gallery.addEventListener("submit", function (e) {
      var card = e.target.closest("li.cell");
      if (card) { e.preventDefault(); send(card, null); }
    });
    gallery.addEventListener("keydown", function (e) {
      var card = e.target.closest && e.target.closest("li.cell");
      if (!card || e.target !== card) { return; }
      var options = $all(".review-form select option", card);
      var n = parseInt(e.key, 10);
      if (n >= 1 && n <= options.length) { e.preventDefault(); send(card, options[n - 1].value); }
      else if (e.key === "Enter") { e.preventDefault(); send(card, card.dataset.label); }
      else if (e.key === "ArrowRight" || e.key === "ArrowDown") { e.preventDefault(); var nx = cards[cards.indexOf(card) + 1]; if (nx) { nx.focus(); } }
      else if (e.key === "ArrowLeft" || e.key === "ArrowUp") { e.preventDefault(); var pv = cards[cards.indexOf(card) - 1]; if (pv) { pv.focus(); } }
    });
  }
})();
