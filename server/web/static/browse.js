// The browse page: title search, poster grid, neighbours of a poster, filters, "more like these / less like
// that", image upload with the matched region drawn. Untrusted text reaches the page through el() only.
"use strict";

const DEFAULT_K = 12;
const FIND_PAGE_SIZE = 48;

const state = {
  info: null,
  view: null, // {kind: "find", q} | {kind: "item", id} | {kind: "like"} | {kind: "image", file}
  liked: new Map(), // item id -> title
  disliked: new Map(),
  generation: 0, // answers of superseded requests are dropped
  seq: 0, // bumped on every render (tests wait for it)
  previewUrl: null,
  activeBox: null,
};

const $ = (id) => document.getElementById(id);

// ---- options -----------------------------------------------------------------------------------------------

function intValue(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number.parseInt(text, 10);
}

function currentFilter() {
  const filter = {};
  const genres = [...document.querySelectorAll("#genres input:checked")].map((box) => box.value);
  if (genres.length) filter.genres_any = genres;
  const yearMin = intValue("year-min");
  const yearMax = intValue("year-max");
  const minRatings = intValue("min-ratings");
  if (yearMin !== null && !Number.isNaN(yearMin)) filter.year_min = yearMin;
  if (yearMax !== null && !Number.isNaN(yearMax)) filter.year_max = yearMax;
  if (minRatings !== null && !Number.isNaN(minRatings)) filter.min_ratings = minRatings;
  return filter;
}

function searchOptions() {
  const k = intValue("k");
  return { k: k === null || Number.isNaN(k) ? DEFAULT_K : k, filter: currentFilter() };
}

function describeFilter(filter) {
  const parts = [];
  if (filter.genres_any) parts.push(filter.genres_any.join(" or "));
  if (filter.year_min !== undefined || filter.year_max !== undefined) {
    parts.push((filter.year_min ?? "…") + "–" + (filter.year_max ?? "…"));
  }
  if (filter.min_ratings !== undefined) parts.push("≥ " + filter.min_ratings + " ratings");
  return parts.length ? "filtered: " + parts.join(", ") : "";
}

// ---- cards -------------------------------------------------------------------------------------------------

function posterImage(item, className) {
  const img = el("img", {
    className,
    attrs: { src: thumbnailUrl(item.item_id), alt: item.title, loading: "lazy", decoding: "async" },
  });
  img.addEventListener(
    "error",
    () => img.replaceWith(el("span", { className: "placeholder " + (className || ""), text: item.title })),
    { once: true }
  );
  return img;
}

function metaLine(item) {
  return [item.year ? String(item.year) : "", (item.genres || []).join(", ")].filter(Boolean).join(" · ");
}

function pickButton(kind, item) {
  const label = kind === "like" ? "more like " : "less like ";
  return el("button", {
    className: kind,
    text: kind === "like" ? "+" : "−",
    attrs: { type: "button", title: label + item.title, "aria-label": label + item.title, "aria-pressed": "false" },
    on: { click: () => togglePick(kind, item) },
  });
}

function card(item, hit) {
  const poster = el(
    "button",
    {
      className: "poster",
      attrs: { type: "button", title: "Posters like " + item.title },
      on: { click: () => go("item/" + item.item_id) },
    },
    posterImage(item)
  );
  const caption = el(
    "div",
    { className: "caption" },
    hit ? el("span", { className: "score", text: hit.score.toFixed(3), attrs: { title: "cosine similarity" } }) : null,
    el("h3", { className: "title", text: item.title }),
    el("p", { className: "meta", text: metaLine(item) })
  );
  const node = el(
    "article",
    { className: "card", dataset: { itemId: item.item_id } },
    poster,
    caption,
    el("div", { className: "pick" }, pickButton("like", item), pickButton("dislike", item))
  );
  if (hit && hit.query_box) {
    node.classList.add("located");
    caption.prepend(el("span", { className: "badge", text: "found in photo" }));
    const show = () => showBox(hit.query_box);
    node.addEventListener("mouseenter", show);
    node.addEventListener("focusin", show);
  }
  return node;
}

function render(viewKey, heading, summary, nodes, emptyText) {
  $("heading").textContent = heading;
  $("summary").textContent = summary;
  const grid = $("grid");
  grid.replaceChildren(...(nodes.length ? nodes : [el("p", { className: "empty", text: emptyText })]));
  refreshPicks();
  grid.dataset.view = viewKey;
  state.seq += 1;
  grid.dataset.seq = String(state.seq);
}

// ---- selection ---------------------------------------------------------------------------------------------

function togglePick(kind, item) {
  const mine = kind === "like" ? state.liked : state.disliked;
  const other = kind === "like" ? state.disliked : state.liked;
  if (mine.has(item.item_id)) {
    mine.delete(item.item_id);
  } else {
    mine.set(item.item_id, item.title);
    other.delete(item.item_id);
  }
  refreshPicks();
}

function chips(map, kind) {
  return [...map.entries()].map(([id, title]) =>
    el(
      "span",
      { className: "chip " + kind, dataset: { itemId: id } },
      title,
      el("button", {
        className: "remove",
        text: "×",
        attrs: { type: "button", "aria-label": "remove " + title },
        on: {
          click: () => {
            map.delete(id);
            refreshPicks();
          },
        },
      })
    )
  );
}

function refreshPicks() {
  $("selection").hidden = state.liked.size === 0 && state.disliked.size === 0;
  $("liked").replaceChildren(...chips(state.liked, "like"));
  $("disliked").replaceChildren(...chips(state.disliked, "dislike"));
  $("like-search").disabled = state.liked.size === 0;
  for (const node of document.querySelectorAll(".card")) {
    const id = Number(node.dataset.itemId);
    node.querySelector("button.like").setAttribute("aria-pressed", String(state.liked.has(id)));
    node.querySelector("button.dislike").setAttribute("aria-pressed", String(state.disliked.has(id)));
  }
}

// ---- the query panel (the poster asked about, or the uploaded image with the matched box) -----------------

function showQueryItem(item) {
  $("query").replaceChildren(
    el(
      "div",
      { className: "query-item" },
      posterImage(item, "large"),
      el(
        "div",
        {},
        el("h2", { className: "title", text: item.title }),
        el("p", { className: "meta", text: metaLine(item) }),
        el("p", { className: "muted", text: "item " + item.item_id })
      )
    )
  );
  $("query").hidden = false;
}

function showUpload(file) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  state.activeBox = null;
  const img = el("img", { attrs: { src: state.previewUrl, alt: "your image" } });
  img.addEventListener("load", () => showBox(state.activeBox));
  const frame = el("div", { className: "frame" }, img, el("div", { className: "box", attrs: { hidden: true } }));
  const size = Math.round(file.size / 1024) + " KB";
  $("query").replaceChildren(el("div", { className: "query-image" }, frame, el("p", { className: "muted", text: file.name + " · " + size })));
  $("query").hidden = false;
}

function showBox(box) {
  state.activeBox = box;
  const img = document.querySelector("#query .frame img");
  const overlay = document.querySelector("#query .frame .box");
  if (!img || !overlay) return;
  if (!box || !img.naturalWidth || !img.naturalHeight) {
    overlay.hidden = true;
    return;
  }
  const w = img.naturalWidth;
  const h = img.naturalHeight;
  overlay.style.left = (100 * box.x0) / w + "%";
  overlay.style.top = (100 * box.y0) / h + "%";
  overlay.style.width = (100 * (box.x1 - box.x0)) / w + "%";
  overlay.style.height = (100 * (box.y1 - box.y0)) / h + "%";
  overlay.hidden = false;
}

// ---- views -------------------------------------------------------------------------------------------------

function resultSummary(result, extra) {
  const parts = [result.neighbors.length + " posters", "bundle " + result.bundle_version];
  parts.push(result.exact ? "exact" : "approximate");
  if (result.missing_ids && result.missing_ids.length) parts.push("unknown ids skipped: " + result.missing_ids.join(", "));
  if (extra) parts.push(extra);
  return parts.join(" · ");
}

function hitCards(result) {
  return result.neighbors.map((n) => card(n, n));
}

async function viewFind(view) {
  const params = new URLSearchParams({ q: view.q, page_size: String(FIND_PAGE_SIZE) });
  const page = await api("/find?" + params.toString());
  return () => {
    $("query").hidden = true;
    const more = page.total > page.items.length ? " (first " + page.items.length + ")" : "";
    render(
      "find:" + view.q,
      "Titles matching “" + view.q + "”",
      page.total + " matches" + more + " · click a poster to see the posters most like it",
      page.items.map((item) => card(item, null)),
      "No title matches."
    );
  };
}

async function viewItem(view) {
  const options = searchOptions();
  const [items, result] = await Promise.all([
    api("/items?ids=" + encodeURIComponent(view.id)),
    postJson("/search/item", { item_id: view.id, options }),
  ]);
  const item = items.items[0] || { item_id: view.id, title: "item " + view.id, genres: [], year: 0 };
  return () => {
    showQueryItem(item);
    render(
      "item:" + view.id,
      "Posters like “" + item.title + "”",
      resultSummary(result, describeFilter(options.filter)),
      hitCards(result),
      "No poster passes the filters."
    );
  };
}

async function viewLike() {
  const options = searchOptions();
  const positive = [...state.liked.keys()].map((id) => ({ item_id: id }));
  const negative = [...state.disliked.keys()].map((id) => ({ item_id: id }));
  const result = await postJson("/search/items", { positive, negative, options });
  return () => {
    $("query").hidden = true;
    const heading =
      "Posters like " + [...state.liked.values()].join(", ") +
      (negative.length ? ", not like " + [...state.disliked.values()].join(", ") : "");
    render("like", heading, resultSummary(result, describeFilter(options.filter)), hitCards(result), "No poster found.");
  };
}

async function viewImage(view) {
  const options = searchOptions();
  const form = new FormData();
  form.append("image", view.file, view.file.name || "upload");
  form.append("mode", $("mode").value);
  form.append("options", JSON.stringify(options));
  const result = await api("/search/image", { method: "POST", body: form });
  return () => {
    const top = result.neighbors.find((n) => n.query_box);
    showBox(top ? top.query_box : null);
    const located = result.neighbors.some((n) => n.query_box) ? "box: where the poster was found" : "";
    render(
      "image:" + (view.file.name || "upload"),
      "Posters like your image",
      resultSummary(result, [describeFilter(options.filter), located].filter(Boolean).join(" · ")),
      hitCards(result),
      "No poster found."
    );
  };
}

const VIEWS = { find: viewFind, item: viewItem, like: viewLike, image: viewImage };

// keepScroll: the same question again (a filter changed); otherwise the answer is shown from the top
async function run(view, keepScroll) {
  state.view = view;
  const generation = ++state.generation;
  document.body.setAttribute("aria-busy", "true");
  $("summary").textContent = "Searching…";
  try {
    const show = await VIEWS[view.kind](view);
    if (generation !== state.generation) return;
    showError(null);
    show();
    if (!keepScroll) window.scrollTo(0, 0);
  } catch (err) {
    if (generation !== state.generation) return;
    showError(err);
    $("summary").textContent = "";
  } finally {
    if (generation === state.generation) document.body.removeAttribute("aria-busy");
  }
}

function rerun() {
  if (state.view && state.view.kind !== "find") run(state.view, true);
}

// ---- navigation --------------------------------------------------------------------------------------------

function go(hash) {
  if (location.hash === "#" + hash) route();
  else location.hash = hash;
}

function route() {
  let hash;
  try {
    hash = decodeURIComponent(location.hash.slice(1));
  } catch (err) {
    return;
  }
  if (hash.startsWith("item/") && /^[0-9]{1,19}$/.test(hash.slice(5))) {
    run({ kind: "item", id: Number(hash.slice(5)) });
  } else if (hash.startsWith("find/") && hash.length > 5) {
    $("q").value = hash.slice(5);
    run({ kind: "find", q: hash.slice(5) });
  }
}

// ---- upload ------------------------------------------------------------------------------------------------

function upload(file) {
  if (!file) return;
  const limit = Math.min(state.info.max_image_bytes, state.info.gateway_max_image_bytes);
  if (file.size > limit) {
    showError({ code: "RESOURCE_EXHAUSTED", message: "image expected at most " + limit + " bytes, got " + file.size });
    return;
  }
  showUpload(file);
  run({ kind: "image", file });
}

function wireUpload(enabled) {
  const drop = $("drop");
  if (!enabled) {
    $("upload").classList.add("disabled");
    drop.textContent = "Image search is not available on this server.";
    for (const id of ["file", "camera", "mode"]) $(id).disabled = true;
    return;
  }
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload(event.dataTransfer.files[0]);
  });
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
  for (const id of ["file", "camera"]) {
    $(id).addEventListener("change", (event) => {
      upload(event.target.files[0]);
      event.target.value = "";
    });
  }
}

// ---- filters -----------------------------------------------------------------------------------------------

function wireFilters(info) {
  $("filters").hidden = false;
  if (info.genres.length) {
    $("genres").replaceChildren(
      ...info.genres.map((genre) =>
        el("label", { className: "genre" }, el("input", { attrs: { type: "checkbox", value: genre } }), " ", genre)
      )
    );
    $("genre-filter").hidden = false;
  }
  if (info.year_min && info.year_max) {
    for (const id of ["year-min", "year-max"]) {
      $(id).min = String(info.year_min);
      $(id).max = String(info.year_max);
    }
    $("year-min").placeholder = String(info.year_min);
    $("year-max").placeholder = String(info.year_max);
    $("year-filter").hidden = false;
  }
  $("ratings-filter").hidden = !info.has_ratings;
  $("k").max = String(info.max_k);
  $("filters").addEventListener("change", rerun);
  $("clear-filters").addEventListener("click", () => {
    for (const box of document.querySelectorAll("#genres input")) box.checked = false;
    for (const id of ["year-min", "year-max", "min-ratings"]) $(id).value = "";
    rerun();
  });
}

async function start() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("q").value.trim();
    if (q) go("find/" + encodeURIComponent(q));
  });
  $("like-search").addEventListener("click", () => run({ kind: "like" }));
  $("clear-selection").addEventListener("click", () => {
    state.liked.clear();
    state.disliked.clear();
    refreshPicks();
  });
  window.addEventListener("hashchange", route);
  try {
    state.info = await loadInfo();
  } catch (err) {
    showError(err);
    return;
  }
  wireFilters(state.info);
  wireUpload(state.info.image_search);
  document.body.dataset.ready = "1";
  route();
}

start();
