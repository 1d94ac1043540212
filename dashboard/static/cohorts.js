"use strict";
// The Cohorts page: a form with every filter of a cohort definition, its live preview
// (POST /api/cohorts/preview, debounced), save and freeze, and the saved versions with their
// manifest hashes and downloads. A download is read from the response stream (the zip is
// written while it is sent, so its length is not known in advance: the bar shows the bytes
// received, or the share of Content-Length when a proxy gives one) and saved from a Blob URL.
(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("definition");
  const charts = new Map(); // key -> ECharts instance, reused while the form changes
  let choices = null; // GET /api/cohorts/_form
  let previewTimer = 0;
  let previewNumber = 0;

  // ------------------------------------------------------------------------------ helpers

  /** A new element with attributes (`text`: its text, `class`) and children. */
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (value === true) node.setAttribute(name, "");
      else if (value !== false && value !== null && value !== undefined) {
        node.setAttribute(name, String(value));
      }
    }
    node.append(...children);
    return node;
  }

  /** The UI string `key`, or `fallback` when the locale has none (a task of the node's own
   * task file, a sequence family it configured). */
  function translated(key, fallback) {
    const text = PN.t(key);
    return text === key ? fallback : text;
  }

  const unknownOr = (value, name) => (value === "unknown" ? PN.t("cohorts.unknown") : name(value));
  const sexName = (value) => unknownOr(value, (v) => translated(`cohorts.sex.${v}`, v));
  const sequenceName = (value) => unknownOr(value, (v) => translated(`cohorts.sequence.${v}`, v));
  const splitName = (value) => translated(`cohorts.splitname.${value}`, value);
  const task = (name) => choices.tasks.find((candidate) => candidate.name === name);
  const taskTitle = (name) =>
    translated(`cohorts.task.${name}`, task(name)?.description || name);
  const className = (value) =>
    PN.t("cohorts.class_label", { value, name: translated(`cohorts.class.${value}`, value) });
  function classMeaning(taskName, value) {
    const fromFile = task(taskName)?.classes.find((c) => c.value === value)?.meaning ?? "";
    return translated(`cohorts.meaning.${taskName}.${value}`, fromFile);
  }
  function groupingName(grouping) {
    if (grouping.startsWith("label:")) {
      return PN.t("cohorts.grouping.label", { task: taskTitle(grouping.slice(6)) });
    }
    return PN.t(`cohorts.grouping.${grouping}`);
  }

  function size(bytes) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return `${PN.number(Math.round(value * 10) / 10)} ${units[unit]}`;
  }

  /** JSON of a POST to `path`; an error answer throws with the node's words and its status. */
  async function send(path, body) {
    const init = {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const answer = await fetch(path, init);
    const data = await answer.json().catch(() => ({}));
    if (!answer.ok) throw failure(answer.status, data);
    return data;
  }

  function failure(status, data) {
    const detail = data && data.detail !== undefined ? data.detail : status;
    const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    error.status = status;
    return error;
  }

  /** Show what the node said in `element`: a refusal (4xx) in its words, else an error. */
  function say(element, error) {
    element.classList.add("error");
    if (error.status >= 400 && error.status < 500) {
      element.textContent = PN.t(error.status === 422 ? "cohorts.invalid" : "cohorts.refused", {
        detail: error.message,
      });
    } else {
      PN.showError(element, error);
    }
  }

  function note(element, text) {
    element.classList.remove("error");
    element.textContent = text;
  }

  const refPath = (ref) => `/api/cohorts/${encodeURIComponent(ref)}`;

  // --------------------------------------------------------------------------------- form

  function checkbox(container, value, text, checked = false) {
    const input = el("input", { type: "checkbox", value, checked });
    container.append(el("label", {}, input, ` ${text}`));
    return input;
  }

  function fillChoices(container, counts) {
    const entries = Object.entries(counts);
    if (entries.length === 0) {
      container.append(el("small", { text: PN.t("cohorts.none_available") }));
    }
    for (const [value, count] of entries) {
      checkbox(container, value, PN.t("cohorts.series_count", { value, count: PN.number(count) }));
    }
  }

  function groupingOptions(select, emptyText) {
    select.replaceChildren(
      el("option", { value: "", text: emptyText }),
      ...choices.groupings.map((g) => el("option", { value: g, text: groupingName(g) })),
    );
  }

  function buildForm() {
    fillChoices($("modalities"), choices.modalities);
    fillChoices($("body-parts"), choices.body_parts);
    for (const family of choices.sequences) checkbox($("sequences"), family, sequenceName(family));
    for (const sex of choices.sexes) checkbox($("sexes"), sex, sexName(sex));
    groupingOptions($("balance-by"), PN.t("cohorts.balance_none"));
    groupingOptions($("split-by"), PN.t("cohorts.split_by_default"));
    for (const [name, fraction] of Object.entries(choices.default_split)) {
      $("split-fractions").append(
        el(
          "label",
          { text: `${splitName(name)} ` },
          el("input", {
            type: "number", min: 0, max: 1, step: 0.05, value: fraction, "data-split": name,
          }),
        ),
      );
    }
    $("seed").placeholder = String(choices.default_seed);
    $("seed-hint").textContent = PN.t("cohorts.seed_hint", { seed: choices.default_seed });
    if (choices.tasks.length === 0) {
      $("add-label").replaceWith(el("small", { text: PN.t("cohorts.no_tasks") }));
    }
    if (!choices.can.write) {
      $("readonly").hidden = false;
      for (const id of ["save", "cohort-name", "cohort-description"]) $(id).disabled = true;
    }
    if (!choices.can.export) $("no-export").hidden = false;
  }

  /** One label filter: a task, its classes (each with its meaning), a minimum confidence and
   * whether a person must have reviewed the label. */
  function addLabelFilter(initial = {}) {
    const taskSelect = el(
      "select",
      { class: "label-task", "aria-label": PN.t("cohorts.label_task") },
      ...choices.tasks.map((t) => el("option", { value: t.name, text: taskTitle(t.name) })),
    );
    if (initial.task) taskSelect.value = initial.task;
    const classes = el("div", { class: "choices label-classes" });
    const fillClasses = (selected) => {
      classes.replaceChildren();
      for (const c of task(taskSelect.value)?.classes ?? []) {
        const text = `${c.value} · ${classMeaning(taskSelect.value, c.value)}`;
        checkbox(classes, c.value, text, selected.includes(c.value));
      }
    };
    fillClasses(initial.classes ?? []);
    taskSelect.addEventListener("change", () => fillClasses([]));
    const confidence = el("input", {
      type: "number", class: "label-confidence", min: 0, max: 1, step: 0.05,
      value: initial.min_confidence ?? null,
    });
    const reviewed = el("input", {
      type: "checkbox", class: "label-reviewed", checked: Boolean(initial.reviewed_only),
    });
    const remove = el("button", { type: "button", text: PN.t("cohorts.remove") });
    const row = el(
      "div",
      { class: "label-filter" },
      el("label", { text: `${PN.t("cohorts.label_task")} ` }, taskSelect),
      el("div", { class: "field" }, el("span", { text: PN.t("cohorts.label_classes") }), classes),
      el("label", { text: `${PN.t("cohorts.min_confidence")} ` }, confidence),
      el("label", { class: "inline" }, reviewed, ` ${PN.t("cohorts.reviewed_only")}`),
      remove,
    );
    remove.addEventListener("click", () => {
      row.remove();
      changed();
    });
    $("label-filters").append(row);
  }

  const ticked = (container) =>
    [...container.querySelectorAll("input[type=checkbox]:checked")].map((i) => i.value);

  function number(input) {
    const text = input.value.trim();
    return text === "" || Number.isNaN(Number(text)) ? null : Number(text);
  }

  /** The cohort definition the form shows (only what is set: the rest takes the defaults). */
  function definition() {
    const filters = {};
    const lists = {
      modalities: "modalities", sequences: "sequences", body_parts: "body-parts", sexes: "sexes",
    };
    for (const [key, id] of Object.entries(lists)) {
      const values = ticked($(id));
      if (values.length) filters[key] = values;
    }
    const numbers = {
      age_min: "age-min", age_max: "age-max", min_instances: "min-instances",
      slice_thickness_min: "slice-min", slice_thickness_max: "slice-max",
    };
    for (const [key, id] of Object.entries(numbers)) {
      const value = number($(id));
      if (value !== null) filters[key] = value;
    }
    if ($("date-from").value) filters.study_date_from = $("date-from").value;
    if ($("date-to").value) filters.study_date_to = $("date-to").value;
    const institutions = $("institutions").value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (institutions.length) filters.institutions = institutions;
    const labels = [...document.querySelectorAll(".label-filter")].map((row) => {
      const wanted = { task: row.querySelector(".label-task").value };
      const classes = ticked(row.querySelector(".label-classes"));
      if (classes.length) wanted.classes = classes;
      const confidence = number(row.querySelector(".label-confidence"));
      if (confidence !== null) wanted.min_confidence = confidence;
      if (row.querySelector(".label-reviewed").checked) wanted.reviewed_only = true;
      return wanted;
    });
    if (labels.length) filters.labels = labels;

    const result = { filters };
    const balanceBy = $("balance-by").value;
    if (balanceBy) {
      result.balance = { by: balanceBy, mode: $("balance-mode").value };
      const cap = number($("balance-cap"));
      if (result.balance.mode === "cap" && cap !== null) result.balance.cap = cap;
    }
    if ($("split-enabled").checked) {
      const fractions = {};
      for (const input of $("split-fractions").querySelectorAll("input")) {
        fractions[input.dataset.split] = number(input) ?? 0;
      }
      result.split = { fractions };
      if ($("split-by").value) result.split.by = $("split-by").value;
    }
    const seed = number($("seed"));
    if (seed !== null) result.seed = seed;
    return result;
  }

  /** Tick `values` among the checkboxes of `container` (adding any it lacks). */
  function tick(container, values = []) {
    const wanted = new Set(values.map((v) => v.toUpperCase()));
    for (const input of container.querySelectorAll("input[type=checkbox]")) {
      input.checked = wanted.delete(input.value.toUpperCase());
    }
    for (const missing of values.filter((v) => wanted.has(v.toUpperCase()))) {
      checkbox(container, missing, missing, true);
    }
  }

  /** Show a saved version in the form, to be edited into the next version. */
  function load(info) {
    const d = info.definition;
    const f = d.filters;
    $("cohort-name").value = info.name;
    $("cohort-description").value = info.description;
    tick($("modalities"), f.modalities);
    tick($("sequences"), f.sequences);
    tick($("body-parts"), f.body_parts);
    tick($("sexes"), f.sexes);
    const set = (id, value) => {
      $(id).value = value ?? "";
    };
    set("age-min", f.age_min);
    set("age-max", f.age_max);
    set("min-instances", f.min_instances);
    set("slice-min", f.slice_thickness_min);
    set("slice-max", f.slice_thickness_max);
    set("date-from", f.study_date_from);
    set("date-to", f.study_date_to);
    set("institutions", (f.institutions ?? []).join("\n"));
    $("label-filters").replaceChildren();
    for (const wanted of f.labels ?? []) addLabelFilter(wanted);
    set("balance-by", d.balance?.by);
    set("balance-mode", d.balance?.mode ?? "undersample");
    set("balance-cap", d.balance?.cap);
    $("split-enabled").checked = Boolean(d.split);
    for (const input of $("split-fractions").querySelectorAll("input")) {
      input.value = d.split?.fractions?.[input.dataset.split] ?? choices.default_split[input.dataset.split];
    }
    set("split-by", d.split?.by);
    set("seed", d.seed);
    changed();
    form.scrollIntoView();
  }

  // ------------------------------------------------------------------------------ preview

  /** The form changed: show its JSON now, preview it once typing pauses. */
  function changed() {
    $("definition-json").textContent = JSON.stringify(definition(), null, 2);
    clearTimeout(previewTimer);
    previewTimer = setTimeout(previewForm, 350);
  }

  async function previewForm() {
    const mine = ++previewNumber;
    const status = $("preview-status");
    note(status, PN.t("cohorts.previewing"));
    try {
      const counts = await send("/api/cohorts/preview", definition());
      if (mine === previewNumber) showPreview(counts, PN.t("cohorts.preview_live"));
    } catch (error) {
      if (mine === previewNumber) say(status, error);
    }
  }

  async function previewSaved(info) {
    const mine = ++previewNumber;
    try {
      const counts = await PN.api(`${refPath(info.id)}/preview`);
      const ref = `${info.name}@${info.version}`;
      const heading = counts.frozen ? "cohorts.preview_frozen" : "cohorts.preview_of";
      if (mine === previewNumber) showPreview(counts, PN.t(heading, { ref }));
    } catch (error) {
      if (mine === previewNumber) say($("preview-status"), error);
    }
  }

  /** The tasks whose classes the preview charts: those the definition names, else all. */
  function shownTasks(counts) {
    const d = definition();
    const named = [
      ...(d.filters.labels ?? []).map((l) => l.task),
      ...[d.balance?.by, d.split?.by].filter((g) => g?.startsWith("label:")).map((g) => g.slice(6)),
    ].filter((name) => name in counts.classes);
    return named.length ? [...new Set(named)] : Object.keys(counts.classes);
  }

  function barOption(title, entries, name = (key) => key, tips = null) {
    return {
      animation: false,
      title: { text: title, textStyle: { fontSize: 13 } },
      tooltip: {
        renderMode: "richText",
        formatter: (p) => `${p.name}: ${PN.number(p.value)}${tips ? `\n${tips[p.dataIndex]}` : ""}`,
      },
      grid: { left: 8, right: 8, top: 36, bottom: 8, containLabel: true },
      xAxis: {
        type: "category",
        data: entries.map(([key]) => name(key)),
        axisLabel: { interval: 0, rotate: entries.length > 4 ? 30 : 0 },
      },
      yAxis: { type: "value", minInterval: 1 },
      series: [{ type: "bar", data: entries.map(([, value]) => value) }],
    };
  }

  function pieOption(title, entries, name) {
    return {
      animation: false,
      title: { text: title, textStyle: { fontSize: 13 } },
      tooltip: { renderMode: "richText", formatter: (p) => `${p.name}: ${PN.number(p.value)}` },
      series: [{
        type: "pie",
        radius: ["30%", "60%"],
        top: 24,
        data: entries.map(([key, value]) => ({ name: name(key), value })),
      }],
    };
  }

  function splitOption(splits) {
    const names = Object.keys(splits);
    return {
      animation: false,
      title: { text: PN.t("cohorts.chart.splits"), textStyle: { fontSize: 13 } },
      legend: { top: 0, right: 0 },
      tooltip: { renderMode: "richText", trigger: "axis" },
      grid: { left: 8, right: 8, top: 36, bottom: 8, containLabel: true },
      xAxis: { type: "category", data: names.map(splitName) },
      yAxis: { type: "value", minInterval: 1 },
      series: ["patients", "series"].map((key) => ({
        type: "bar",
        name: PN.t(`cohorts.${key}`),
        data: names.map((n) => splits[n][key]),
      })),
    };
  }

  /** Draw the charts of `options` (key -> option) in order, reusing those drawn before. */
  function drawCharts(options) {
    const holder = $("preview-charts");
    for (const [key, drawn] of charts) {
      if (!options.has(key)) {
        drawn.dispose();
        holder.querySelector(`[data-chart="${CSS.escape(key)}"]`)?.remove();
        charts.delete(key);
      }
    }
    for (const [key, option] of options) {
      let drawn = charts.get(key);
      if (drawn) {
        drawn.setOption(option, true);
      } else {
        const box = el("div", { class: "chart", "data-chart": key });
        holder.append(box);
        drawn = PN.chart(box, option);
        charts.set(key, drawn);
      }
      holder.append(drawn.getDom()); // keep the order of `options`
    }
  }

  function showPreview(counts, heading) {
    note($("preview-status"), counts.series ? heading : `${heading} ${PN.t("cohorts.empty")}`);
    $("preview-cards").replaceChildren(
      ...["patients", "studies", "series", "instances"].map((key) =>
        el(
          "div",
          { class: "card", "data-count": key },
          el("div", { class: "value", text: PN.number(counts[key]) }),
          el("div", { class: "label", text: PN.t(`cohorts.${key}`) }),
        ),
      ),
    );
    const options = new Map();
    const tasks = counts.series ? shownTasks(counts) : [];
    for (const name of tasks) {
      const entries = Object.entries(counts.classes[name]);
      const tips = entries.map(([value]) => classMeaning(name, value));
      options.set(
        `classes:${name}`,
        barOption(PN.t("cohorts.chart.classes", { task: taskTitle(name) }), entries, className, tips),
      );
    }
    if (counts.series) {
      options.set("sex", pieOption(PN.t("cohorts.chart.sex"), Object.entries(counts.sex), sexName));
      const age = Object.entries(counts.age_histogram);
      options.set("age", barOption(PN.t("cohorts.chart.age"), age, (k) => unknownOr(k, (v) => v)));
      for (const key of ["modality", "sequence", "body_part"]) {
        const name = key === "sequence" ? sequenceName : (k) => unknownOr(k, (v) => v);
        options.set(key, barOption(PN.t(`cohorts.chart.${key}`), Object.entries(counts[key]), name));
      }
      if (Object.keys(counts.splits).length) options.set("splits", splitOption(counts.splits));
    }
    drawCharts(options);
    showSplits(counts.splits, tasks);
  }

  function showSplits(splits, tasks) {
    const holder = $("preview-splits");
    const names = Object.keys(splits);
    if (names.length === 0) {
      holder.replaceChildren(el("p", { text: PN.t("cohorts.no_splits") }));
      return;
    }
    const header = el(
      "tr",
      {},
      ...[PN.t("cohorts.split_name"), PN.t("cohorts.patients"), PN.t("cohorts.series")].map(
        (text) => el("th", { text }),
      ),
      ...tasks.map((name) => el("th", { text: PN.t("cohorts.split_classes", { task: taskTitle(name) }) })),
    );
    const rows = names.map((name) =>
      el(
        "tr",
        { "data-split": name },
        el("td", { text: splitName(name) }),
        el("td", { class: "patients", text: PN.number(splits[name].patients) }),
        el("td", { class: "series", text: PN.number(splits[name].series) }),
        ...tasks.map((taskName) =>
          el("td", {
            text: Object.entries(splits[name].classes[taskName] ?? {})
              .map(([value, count]) => `${className(value)}: ${PN.number(count)}`)
              .join("; "),
          }),
        ),
      ),
    );
    holder.replaceChildren(el("table", { id: "split-table" }, el("thead", {}, header), el("tbody", {}, ...rows)));
  }

  // -------------------------------------------------------------------------- the list

  async function loadList(current = null) {
    const status = $("list-status");
    let versions;
    try {
      versions = await PN.api("/api/cohorts");
    } catch (error) {
      PN.showError(status, error);
      return;
    }
    note(status, versions.length ? "" : PN.t("cohorts.no_cohorts"));
    $("cohort-list").tBodies[0].replaceChildren(...versions.map((info) => listRow(info, current)));
  }

  function listRow(info, current) {
    const ref = `${info.name}@${info.version}`;
    const projects = info.projects === null ? PN.t("cohorts.all_projects") : info.projects.join(", ");
    const when = (iso) => new Date(iso).toLocaleString(PN.lang === "zh" ? "zh-CN" : "en");
    const counted = (value) => (value === null ? "—" : PN.number(value));
    const actions = el("td", { class: "actions" });
    const status = el("div", { class: "row-status", role: "status" });
    const row = el(
      "tr",
      { "data-ref": ref, class: ref === current ? "current" : null },
      el(
        "td",
        {},
        el("strong", { text: ref }),
        el("br"),
        el("small", { text: `${PN.t("cohorts.projects")}: ${projects}` }),
      ),
      el("td", { text: info.description }),
      el("td", { text: when(info.created_at) }),
      el("td", {
        class: "state",
        text: info.frozen_at ? PN.t("cohorts.frozen", { when: when(info.frozen_at) }) : PN.t("cohorts.draft"),
      }),
      el("td", { text: counted(info.series) }),
      el("td", { text: counted(info.instances) }),
      el("td", {}, info.manifest_sha256 ? el("code", { class: "hash", text: info.manifest_sha256 }) : "—"),
      actions,
    );
    const button = (key, action, text = PN.t(`cohorts.${key}`)) => {
      const made = el("button", { type: "button", class: key, text });
      made.addEventListener("click", action);
      actions.append(made, " ");
      return made;
    };
    button("load", () => load(info), PN.t(choices.can.write ? "cohorts.load" : "cohorts.load_readonly"));
    button("show_preview", () => previewSaved(info));
    if (!info.frozen_at && choices.can.write) {
      const freezing = button("freeze", async () => {
        freezing.disabled = true;
        note(status, PN.t("cohorts.freezing"));
        try {
          const frozen = await send(`${refPath(info.id)}/freeze`);
          await loadList(ref);
          note($("list-status"), PN.t("cohorts.frozen_done", { ref, hash: frozen.manifest_sha256 }));
        } catch (error) {
          freezing.disabled = false;
          say(status, error);
        }
      });
    }
    if (info.frozen_at && choices.can.export) actions.append(exportControls(info, status));
    actions.append(status);
    return row;
  }

  /** A format, a Download button with a progress bar, and the browser's own direct link. */
  function exportControls(info, status) {
    const format = el(
      "select",
      { class: "format", "aria-label": PN.t("cohorts.format") },
      ...["dicom", "nifti", "png"].map((f) => el("option", { value: f, text: PN.t(`cohorts.format.${f}`) })),
    );
    const progress = el("progress", { hidden: true });
    const direct = el("a", { title: PN.t("cohorts.direct_link_hint"), download: "" });
    const url = () => `${refPath(info.id)}/export?format=${format.value}`;
    direct.textContent = PN.t("cohorts.direct_link");
    direct.href = url();
    format.addEventListener("change", () => {
      direct.href = url();
    });
    const start = el("button", { type: "button", class: "download", text: PN.t("cohorts.download") });
    start.addEventListener("click", async () => {
      start.disabled = true;
      try {
        await download(url(), info, progress, status);
      } catch (error) {
        progress.hidden = true;
        say(status, error);
      } finally {
        start.disabled = false;
      }
    });
    return el("div", { class: "export" }, format, start, progress, direct);
  }

  async function download(url, info, progress, status) {
    note(status, PN.t("cohorts.received", { size: size(0) }));
    const answer = await fetch(url, { credentials: "same-origin" });
    if (!answer.ok) throw failure(answer.status, await answer.json().catch(() => ({})));
    const total = Number(answer.headers.get("Content-Length")) || 0;
    progress.hidden = false;
    progress.removeAttribute("value"); // indeterminate until a length is known
    if (total) progress.max = total;
    const parts = [];
    let received = 0;
    const reader = answer.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      received += value.length;
      if (total) progress.value = received;
      note(
        status,
        total
          ? PN.t("cohorts.received_of", { size: size(received), total: size(total) })
          : PN.t("cohorts.received", { size: size(received) }),
      );
    }
    progress.max = 1;
    progress.value = 1;
    const disposition = answer.headers.get("Content-Disposition") ?? "";
    const file = /filename="([^"]+)"/.exec(disposition)?.[1] ?? `${info.name}-${info.version}.zip`;
    const blob = URL.createObjectURL(new Blob(parts, { type: "application/zip" }));
    const link = el("a", { href: blob, download: file, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(blob), 60_000);
    const hash = answer.headers.get("X-Manifest-SHA256") ?? "";
    if (hash !== info.manifest_sha256) {
      status.classList.add("error");
      status.textContent = PN.t("cohorts.hash_mismatch", { hash });
      return;
    }
    note(status, PN.t("cohorts.downloaded", { file, size: size(received), hash }));
  }

  // ------------------------------------------------------------------------------- start

  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  $("add-label").addEventListener("click", () => {
    addLabelFilter();
    changed();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = $("save-status");
    const name = $("cohort-name");
    if (!choices.can.write) return;
    if (!name.value || !name.checkValidity()) {
      status.classList.add("error");
      status.textContent = PN.t("cohorts.name_hint");
      return;
    }
    note(status, PN.t("cohorts.saving"));
    try {
      const info = await send("/api/cohorts", {
        name: name.value,
        description: $("cohort-description").value,
        definition: definition(),
      });
      const ref = `${info.name}@${info.version}`;
      note(status, PN.t("cohorts.saved", { ref }));
      await loadList(ref);
    } catch (error) {
      say(status, error);
    }
  });

  (async () => {
    try {
      choices = await PN.api("/api/cohorts/_form");
    } catch (error) {
      PN.showError($("preview-status"), error);
      return;
    }
    buildForm();
    changed();
    await loadList();
  })();
})();
