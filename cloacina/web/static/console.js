// cloacina console: live regions and actions. Hand-written, no dependencies.
//
// Live regions: an element with data-live-url is refreshed every data-live-interval ms (default 2000) with the
// HTML fragment the server renders at that URL, without reloading the page. Refreshes pause while the tab is
// hidden or while focus is inside the region (so a switch being toggled is never swapped under the user).
//
// Actions go to the JSON API (/api/v1) with the same credentials the page was loaded with:
//   <button data-api-method="POST" data-api-url="/api/v1/runs/ID/cancel" data-confirm="...">
//   <input type="checkbox" role="switch" data-api-method="PATCH" data-api-url="/api/v1/triggers/NAME" data-api-field="enabled">
//   <form data-start-run>  (workflow select + context JSON textarea) -> POST /api/v1/workflows/{name}/runs
// Every state-changing request is JSON with the X-Cloacina-CSRF header (see cloacina/web/auth.py).
(function () {
  "use strict";

  // Absolute URL on the page's origin: a page opened as http://user:password@host/ has credentials in its own
  // URL, and fetch() refuses relative URLs resolved against it.
  function absolute(url) {
    return new URL(url, window.location.origin).href;
  }

  function notice(text, kind) {
    var el = document.getElementById("notice");
    if (!el) { return; }
    el.textContent = text;
    el.className = "notice " + (kind || "");
  }

  // cloacina.web.auth's CSRF rule: a state-changing request from the console carries this header.
  function apiHeaders() {
    return { "Content-Type": "application/json", "Accept": "application/json", "X-Cloacina-CSRF": "1" };
  }

  function describeFailure(response, body) {
    var detail = body && (body.detail || body.error);
    if (detail && typeof detail !== "string") { detail = JSON.stringify(detail); }
    return response.status + " " + (detail || response.statusText);
  }

  function callApi(method, url, payload) {
    var init = { method: method, headers: apiHeaders(), credentials: "same-origin" };
    if (payload !== undefined) { init.body = JSON.stringify(payload); }
    return fetch(absolute(url), init).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (!response.ok) { throw new Error(describeFailure(response, body)); }
        return body;
      });
    });
  }

  // -- live regions -------------------------------------------------------------------------------------
  function refresh(region) {
    if (document.hidden || region.contains(document.activeElement) || region.dataset.busy === "1") {
      return Promise.resolve();
    }
    region.dataset.busy = "1";
    return fetch(absolute(region.dataset.liveUrl), { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error(response.status + " " + response.statusText); }
        return response.text();
      })
      .then(function (html) {
        if (html !== region.dataset.lastHtml) {
          var before = {};
          region.querySelectorAll("[data-row-key]").forEach(function (row) { before[row.dataset.rowKey] = true; });
          region.innerHTML = html;
          region.dataset.lastHtml = html;
          region.querySelectorAll("[data-row-key]").forEach(function (row) {
            if (!before[row.dataset.rowKey]) { row.classList.add("new-row"); }
          });
        }
        region.removeAttribute("aria-busy");
        var stamp = document.getElementById("live-stamp");
        if (stamp) { stamp.textContent = "updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function (err) { notice("Live update failed: " + err.message, "error"); })
      .finally(function () { region.dataset.busy = "0"; });
  }

  // A region whose content holds [data-live-stop] (a run that ended) stops refreshing itself.
  function startLive() {
    document.querySelectorAll("[data-live-url]").forEach(function (region) {
      region.dataset.lastHtml = region.innerHTML;
      var every = parseInt(region.dataset.liveInterval || "2000", 10);
      if (region.querySelector("[data-live-stop]")) { return; }
      var timer = window.setInterval(function () {
        refresh(region).then(function () {
          if (region.querySelector("[data-live-stop]")) { window.clearInterval(timer); }
        });
      }, every);
    });
  }

  function refreshAll() {
    document.querySelectorAll("[data-live-url]").forEach(function (region) { refresh(region); });
  }

  // -- actions ------------------------------------------------------------------------------------------
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-api-url]");
    if (!button) { return; }
    event.preventDefault();
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) { return; }
    button.disabled = true;
    callApi(button.dataset.apiMethod || "POST", button.dataset.apiUrl, {})
      .then(function (body) {
        if (body && body.run_id && button.dataset.goToRun) {
          window.location.assign(absolute("/runs/" + encodeURIComponent(body.run_id)));
          return;
        }
        notice(button.dataset.done || "Done.", "ok");
        refreshAll();
      })
      .catch(function (err) { notice(err.message, "error"); })
      .finally(function () { button.disabled = false; });
  });

  document.addEventListener("change", function (event) {
    var input = event.target;
    if (!input.matches || !input.matches("input[type=checkbox][data-api-url]")) { return; }
    var payload = {};
    payload[input.dataset.apiField || "enabled"] = input.checked;
    input.disabled = true;
    callApi(input.dataset.apiMethod || "PATCH", input.dataset.apiUrl, payload)
      .then(function () {
        notice((input.dataset.label || "Switch") + (input.checked ? " enabled." : " disabled."), "ok");
        var state = input.closest("label") && input.closest("label").querySelector(".state");
        if (state) { state.textContent = input.checked ? "on" : "off"; }
      })
      .catch(function (err) {
        input.checked = !input.checked;
        notice(err.message, "error");
      })
      .finally(function () {
        input.disabled = false;
        input.blur();
        refreshAll();
      });
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches("form[data-start-run]")) { return; }
    event.preventDefault();
    var workflow = form.elements.workflow.value;
    var text = form.elements.context.value.trim() || "{}";
    var context;
    try { context = JSON.parse(text); } catch (e) {
      notice("The context is not valid JSON: " + e.message, "error");
      return;
    }
    var submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    callApi("POST", "/api/v1/workflows/" + encodeURIComponent(workflow) + "/runs", { context: context })
      .then(function (body) { window.location.assign(absolute("/runs/" + encodeURIComponent(body.run_id))); })
      .catch(function (err) { notice(err.message, "error"); submit.disabled = false; });
  });

  // Filters apply as soon as they change (the form still works without JavaScript).
  document.addEventListener("change", function (event) {
    var form = event.target.form;
    if (form && form.matches("form[data-auto-submit]")) { form.requestSubmit(); }
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startLive);
  } else {
    startLive();
  }
})();
