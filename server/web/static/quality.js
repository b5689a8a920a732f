// The quality page: the served bundle's posters-index eval / analyze reports (charts and tables).
// The Markdown is rendered by a small converter that only builds elements and text nodes.
"use strict";

const SECTION_TITLES = { eval: "Evaluation (posters-index eval)", analyze: "Analysis (posters-index analyze)" };

// `code` and **bold** inside a line, as nodes
function inline(text) {
  const nodes = [];
  const pattern = /(`[^`]*`|\*\*[^*]+\*\*)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    const token = match[0];
    nodes.push(
      token.startsWith("`") ? el("code", { text: token.slice(1, -1) }) : el("strong", { text: token.slice(2, -2) })
    );
    last = match.index + token.length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

function cells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function table(lines) {
  const [head, , ...rows] = lines;
  const thead = el("thead", {}, el("tr", {}, ...cells(head).map((c) => el("th", {}, ...inline(c)))));
  const tbody = el("tbody", {}, ...rows.map((r) => el("tr", {}, ...cells(r).map((c) => el("td", {}, ...inline(c))))));
  return el("table", {}, thead, tbody);
}

function markdown(text) {
  const out = [];
  const lines = text.split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const body = [];
      for (i += 1; i < lines.length && !lines[i].startsWith("```"); i += 1) body.push(lines[i]);
      out.push(el("pre", {}, el("code", { text: body.join("\n") })));
      i += 1;
    } else if (/^#{1,6} /.test(line)) {
      const level = Math.min(line.indexOf(" ") + 1, 6);
      out.push(el("h" + level, {}, ...inline(line.slice(line.indexOf(" ") + 1))));
      i += 1;
    } else if (line.trim().startsWith("|") && i + 1 < lines.length && /^\s*\|?\s*:?-{3,}/.test(lines[i + 1])) {
      const block = [];
      for (; i < lines.length && lines[i].trim().startsWith("|"); i += 1) block.push(lines[i]);
      out.push(table(block));
    } else if (/^\s*[-*] /.test(line)) {
      const items = [];
      for (; i < lines.length && /^\s*[-*] /.test(lines[i]); i += 1) {
        items.push(el("li", {}, ...inline(lines[i].replace(/^\s*[-*] /, ""))));
      }
      out.push(el("ul", {}, ...items));
    } else if (line.trim() === "" || /^!\[/.test(line.trim())) {
      i += 1; // blank, or an image reference: the charts are shown above
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() !== "" && !/^(#|\||```|\s*[-*] )/.test(lines[i]); i += 1) {
        para.push(lines[i]);
      }
      out.push(el("p", {}, ...inline(para.join(" "))));
    }
  }
  return out;
}

function section(report) {
  const when = new Date(report.modified_at * 1000).toLocaleString();
  const charts = report.charts.map((chart) =>
    el(
      "figure",
      {},
      el("a", { attrs: { href: chart.url } }, el("img", { attrs: { src: chart.url, alt: chart.name, loading: "lazy" } })),
      el("figcaption", { text: chart.name })
    )
  );
  return el(
    "section",
    { className: "report", dataset: { section: report.name } },
    el("h2", { text: SECTION_TITLES[report.name] || report.name }),
    el("p", { className: "muted small", text: "written " + when }),
    el("div", { className: "charts" }, ...charts),
    el("div", { className: "markdown" }, ...markdown(report.markdown))
  );
}

async function start() {
  try {
    await loadInfo();
    const quality = await api("/quality");
    const status = document.getElementById("status");
    if (!quality.sections.length) {
      status.textContent = quality.configured
        ? "No eval or analyze report for bundle " + quality.bundle_version + " yet. Write them with:"
        : "posters-web was started without --quality-dir. Write the reports, then start it with --quality-dir:";
      status.after(el("pre", { className: "command", text: quality.how_to }));
    } else {
      status.textContent = "Reports for bundle " + quality.bundle_version + ".";
    }
    document.getElementById("reports").replaceChildren(...quality.sections.map(section));
    document.body.dataset.ready = "1";
  } catch (err) {
    showError(err);
  }
}

start();
