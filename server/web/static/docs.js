// The interactive API page, driven by /openapi.json: every operation with its parameters, an example body
// and a "Send" button that shows the answer. Built from elements and text nodes only.
"use strict";

let spec = null;

function resolve(schema) {
  let s = schema || {};
  for (let hops = 0; s.$ref && hops < 8; hops += 1) {
    const name = s.$ref.split("/").pop();
    s = spec.components.schemas[name] || {};
  }
  return s;
}

function example(schema, depth) {
  const s = resolve(schema);
  if ((depth || 0) > 6) return null;
  if (Array.isArray(s.examples) && s.examples.length) return s.examples[0];
  if (s.default !== undefined) return s.default;
  if (s.anyOf) return example(s.anyOf.find((x) => x.type !== "null") || s.anyOf[0], (depth || 0) + 1);
  if (s.enum) return s.enum[0];
  switch (s.type) {
    case "object": {
      const out = {};
      for (const name of s.required || []) out[name] = example(s.properties[name], (depth || 0) + 1);
      return out;
    }
    case "array":
      return [example(s.items, (depth || 0) + 1)];
    case "integer":
      return 1;
    case "number":
      return 0.5;
    case "boolean":
      return false;
    default:
      return "";
  }
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function paramInputs(op) {
  const inputs = [];
  const grid = el("div", { className: "params" });
  for (const p of op.parameters || []) {
    const s = resolve(p.schema);
    const isArray = s.type === "array";
    const input = el("input", {
      attrs: {
        type: "text",
        placeholder: (isArray ? "comma-separated " : "") + (s.type || "value") + (p.required ? " (required)" : ""),
        "aria-label": p.name,
      },
      dataset: { name: p.name, where: p.in, array: isArray ? "1" : "" },
    });
    if (s.default !== undefined && !isArray) input.value = String(s.default);
    grid.append(el("label", { text: p.name + " (" + p.in + ")" }), input);
    inputs.push(input);
  }
  return { grid, inputs };
}

function bodyEditor(op) {
  const content = (op.requestBody && op.requestBody.content) || {};
  if (content["application/json"]) {
    const area = el("textarea", { attrs: { "aria-label": "request body (JSON)", spellcheck: "false" } });
    area.value = pretty(example(content["application/json"].schema));
    return { node: area, build: () => ({ body: area.value, headers: { "content-type": "application/json" } }) };
  }
  if (content["multipart/form-data"]) {
    const s = resolve(content["multipart/form-data"].schema);
    const grid = el("div", { className: "params" });
    const fields = [];
    for (const [name, prop] of Object.entries(s.properties || {})) {
      const p = resolve(prop);
      const binary = p.format === "binary" || p.contentMediaType === "application/octet-stream";
      const input = el("input", { attrs: { type: binary ? "file" : "text", "aria-label": name } });
      if (!binary && p.default !== undefined) input.value = String(p.default);
      grid.append(el("label", { text: name }), input);
      fields.push([name, input, binary]);
    }
    const build = () => {
      const form = new FormData();
      for (const [name, input, binary] of fields) {
        if (binary && input.files[0]) form.append(name, input.files[0]);
        else if (!binary && input.value !== "") form.append(name, input.value);
      }
      return { body: form, headers: {} };
    };
    return { node: grid, build };
  }
  return null;
}

async function send(method, path, inputs, editor, out) {
  let url = path;
  const query = new URLSearchParams();
  for (const input of inputs) {
    const { name, where, array } = input.dataset;
    const value = input.value.trim();
    if (value === "") continue;
    if (where === "path") url = url.replace("{" + name + "}", encodeURIComponent(value));
    else if (array) value.split(",").forEach((v) => query.append(name, v.trim()));
    else query.append(name, value);
  }
  if ([...query.keys()].length) url += "?" + query.toString();
  const init = { method: method.toUpperCase() };
  if (editor) {
    const built = editor.build();
    init.body = built.body;
    init.headers = built.headers;
  }
  out.replaceChildren(el("p", { className: "muted", text: "Sending " + init.method + " " + url + " …" }));
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    out.replaceChildren(el("p", { className: "status-err", text: "no answer: " + err.message }));
    return;
  }
  const type = response.headers.get("content-type") || "";
  const head = el("p", {
    className: response.ok ? "status-ok" : "status-err",
    text: response.status + " " + response.statusText + " · " + type + " · request " + (response.headers.get("x-request-id") || ""),
  });
  let body;
  if (type.startsWith("image/")) {
    body = el("img", { attrs: { src: URL.createObjectURL(await response.blob()), alt: "response image" } });
  } else if (type.includes("json")) {
    body = el("pre", { text: pretty(await response.json()) });
  } else {
    body = el("pre", { text: await response.text() });
  }
  out.replaceChildren(head, body);
}

function operation(path, method, op) {
  const { grid, inputs } = paramInputs(op);
  const editor = bodyEditor(op);
  const out = el("div", { className: "response" });
  const sendButton = el("button", { text: "Send", attrs: { type: "button" } });
  sendButton.addEventListener("click", () => send(method, path, inputs, editor, out));
  const statuses = Object.entries(op.responses || {}).map(([code, r]) => code + " " + (r.description || ""));
  return el(
    "details",
    { className: "op", dataset: { path, method } },
    el(
      "summary",
      {},
      el("span", { className: "method", text: method.toUpperCase() }),
      el("span", { className: "path", text: path }),
      el("span", { className: "muted", text: op.summary || "" })
    ),
    el(
      "div",
      { className: "body" },
      op.description ? el("p", { text: op.description }) : null,
      inputs.length ? grid : null,
      editor ? editor.node : null,
      el("div", { className: "row" }, sendButton),
      out,
      el("details", {}, el("summary", { className: "muted small", text: "responses" }), el("pre", { text: statuses.join("\n") }))
    )
  );
}

async function start() {
  try {
    loadInfo().catch(() => {}); // the header line only: the API page works without a server
    const response = await fetch("/openapi.json");
    spec = await response.json();
    document.getElementById("api-title").textContent = spec.info.title + " " + spec.info.version;
    document.getElementById("api-description").textContent = spec.info.description || "";
    const ops = [];
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) ops.push(operation(path, method, op));
    }
    document.getElementById("operations").replaceChildren(...ops);
    document.body.dataset.ready = "1";
  } catch (err) {
    showError(err);
  }
}

start();
