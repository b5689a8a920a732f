// Shared helpers of the posters-web pages. Every value from the catalog or the server is untrusted text:
// it goes into the page through textContent / setAttribute only, never through innerHTML.
"use strict";

const API = "/api/v1";

class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

// el("div", {className: "x", dataset: {id: 3}, attrs: {alt: "t"}, on: {click: fn}}, "text", child, ...)
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  const p = props || {};
  if (p.className) node.className = p.className;
  if (p.text !== undefined) node.textContent = String(p.text);
  for (const [k, v] of Object.entries(p.attrs || {})) {
    if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const [k, v] of Object.entries(p.dataset || {})) node.dataset[k] = String(v);
  for (const [k, v] of Object.entries(p.on || {})) node.addEventListener(k, v);
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(API + path, options);
  } catch (err) {
    throw new ApiError(0, "UNAVAILABLE", "the gateway did not answer: " + err.message, "");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    const e = (body && body.error) || {};
    throw new ApiError(
      response.status,
      e.code || String(response.status),
      e.message || response.statusText,
      e.request_id || response.headers.get("x-request-id") || ""
    );
  }
  return body;
}

function postJson(path, payload) {
  return api(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(payload),
  });
}

function showError(err) {
  const box = document.getElementById("error");
  if (!box) return;
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const code = err.code ? err.code + (err.status ? " (" + err.status + ")" : "") + ": " : "";
  box.textContent = code + err.message + (err.requestId ? " [request " + err.requestId + "]" : "");
  box.hidden = false;
}

function thumbnailUrl(itemId) {
  return API + "/thumbnails/" + encodeURIComponent(String(itemId));
}

async function loadInfo() {
  const info = await api("/info");
  const label = document.getElementById("bundle");
  if (label) {
    label.textContent =
      "bundle " + info.bundle_version + " · " + info.item_count + " posters · " + info.model + " · " + info.index_type;
  }
  return info;
}
