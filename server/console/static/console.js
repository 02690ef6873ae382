// The undervdi console's script: it sends every action to the
// broker's REST API (with the login's CSRF token), and keeps the page live:
// when the broker's server-sent events say something changed, the page
// fetches its own content again.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf"]').content;

function flash(text, error) {
  const box = document.getElementById("flash");
  const div = document.createElement("div");
  div.textContent = text;
  if (error) div.className = "error";
  box.replaceChildren(div);
  if (!error) setTimeout(() => { if (box.firstChild === div) box.replaceChildren(); }, 4000);
}

// api calls the REST API and returns the answer's JSON (or null); an
// error answer throws its message.
async function api(method, url, body, type) {
  const opts = { method, headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.body = type ? body : JSON.stringify(body);
    opts.headers["Content-Type"] = type || "application/json";
  }
  const resp = await fetch(url, opts);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    if (resp.status === 401) { location.href = "/console/login?next=" + encodeURIComponent(location.pathname + location.search); }
    throw new Error((data && data.message) || resp.status + " " + resp.statusText);
  }
  return data;
}

// formBody is a form's fields as JSON: numbers as numbers.
function formBody(form) {
  const body = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    body[el.name] = el.type === "number" || (el.type === "hidden" && /^\d+$/.test(el.value)) ? Number(el.value) : el.value;
  }
  return body;
}

async function act(el, body) {
  const [method, url] = el.dataset.act.split(" ");
  el.disabled = true;
  try {
    await api(method, url, body);
    if (el.dataset.then) { location.href = el.dataset.then; return; }
    flash("Done: " + (el.textContent || el.querySelector("button").textContent).trim());
    refresh(true);
  } catch (e) {
    flash(e.message, true);
  } finally {
    el.disabled = false;
  }
}

document.addEventListener("click", (ev) => {
  const el = ev.target.closest("button[data-act]");
  if (el) { ev.preventDefault(); act(el); }
});

document.addEventListener("submit", async (ev) => {
  const form = ev.target;
  if (form.dataset.upload !== undefined) {
    ev.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    try {
      await api("PUT", "/v1/ads/" + encodeURIComponent(file.name), file, file.type || "application/octet-stream");
      flash("Uploaded " + file.name + "; the kiosks mirror it now");
      form.reset();
      refresh(true);
    } catch (e) { flash(e.message, true); }
    return;
  }
  if (form.dataset.act) {
    ev.preventDefault();
    act(form, formBody(form));
  }
});

// refresh fetches the page's content again, unless someone is typing in it.
let busy = false;
async function refresh(force) {
  const main = document.getElementById("content");
  const a = document.activeElement;
  if (!force && a && main.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA") && a.value !== a.defaultValue) return;
  if (busy) return;
  busy = true;
  try {
    const resp = await fetch(location.href, { headers: { "X-Fragment": "1" }, credentials: "same-origin" });
    if (resp.redirected || resp.status === 401) { location.href = "/console/login"; return; }
    if (resp.ok) {
      main.innerHTML = await resp.text();
      document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
    }
  } finally { busy = false; }
}

if (document.body.dataset.live) {
  const events = new EventSource("/console/events");
  let first = true;
  events.onmessage = () => { if (first) { first = false; return; } refresh(false); };
}
