"use strict";
// The study list: QIDO-RS search (/dicom-web/studies) with its matching and paging; filters
// DICOM cannot express (label class, age group, source), passed from the Overview in the
// URL, go to /api/studies, which matches the same way and also counts. A row opens to its
// labels, its reports with the decisive words marked, and a link to the viewer.
(() => {
  const PAGE = 25;
  const TAG = {
    name: "00100010", id: "00100020", sex: "00100040", age: "00101010", date: "00080020",
    modalities: "00080061", description: "00081030", accession: "00080050",
    series: "00201206", instances: "00201208", uid: "0020000D",
  };
  const TEXT_KEYS = ["PatientName", "PatientID", "AccessionNumber", "StudyDescription"];
  const EXTRA = ["task", "class", "age", "source"]; // only /api/studies answers these
  const form = document.getElementById("search");
  const body = document.querySelector("#studies tbody");
  const summary = document.getElementById("summary");
  const filters = document.getElementById("filters");
  const previous = document.getElementById("previous");
  const next = document.getElementById("next");
  let offset = 0;
  let taskInfo = {};

  const value = (row, tag) => row[tag] && row[tag].Value && row[tag].Value[0];
  const dashed = (day) => (day && day.length === 8 ? `${day.slice(0, 4)}-${day.slice(4, 6)}-${day.slice(6)}` : day || "");
  const compact = (day) => (day || "").replaceAll("-", "");

  /** Fill the form from the URL (QIDO keys, or the Overview's modality, sex and month). */
  function fromUrl() {
    const url = new URLSearchParams(window.location.search);
    for (const name of [...TEXT_KEYS, "ModalitiesInStudy", "PatientSex"]) {
      form.elements[name].value = url.get(name) || "";
    }
    if (url.get("modality")) form.elements.ModalitiesInStudy.value = url.get("modality");
    if (url.get("sex")) form.elements.PatientSex.value = url.get("sex").toUpperCase();
    const [low, high] = (url.get("StudyDate") || "-").split("-");
    form.elements.from.value = dashed(low);
    form.elements.to.value = dashed(high);
    const month = url.get("month");
    if (month && /^\d{4}-\d{2}$/.test(month)) {
      const [year, number] = month.split("-").map(Number);
      const last = new Date(Date.UTC(year, number, 0)).getUTCDate();
      form.elements.from.value = `${month}-01`;
      form.elements.to.value = `${month}-${String(last).padStart(2, "0")}`;
    }
    form.elements.fuzzymatching.checked = url.get("fuzzymatching") === "true";
    offset = Number.parseInt(url.get("offset") || "0", 10) || 0;
    return Object.fromEntries(EXTRA.filter((n) => url.get(n)).map((n) => [n, url.get(n)]));
  }

  let extra = fromUrl();

  /** The QIDO-RS matching keys the form asks for. */
  function keys() {
    const found = new URLSearchParams();
    for (const name of TEXT_KEYS) {
      const typed = form.elements[name].value.trim();
      if (typed) found.set(name, /[*?]/.test(typed) ? typed : `${typed}*`);
    }
    const modality = form.elements.ModalitiesInStudy.value.trim().toUpperCase();
    if (modality) found.set("ModalitiesInStudy", modality);
    if (form.elements.PatientSex.value) found.set("PatientSex", form.elements.PatientSex.value);
    const low = compact(form.elements.from.value);
    const high = compact(form.elements.to.value);
    if (low || high) found.set("StudyDate", `${low}-${high}`);
    if (form.elements.fuzzymatching.checked) found.set("fuzzymatching", "true");
    return found;
  }

  /** The page's address: what it shows, so it can be reloaded or shared. */
  function remember(query) {
    const url = new URLSearchParams(query);
    for (const [name, given] of Object.entries(extra)) url.set(name, given);
    if (offset) url.set("offset", offset);
    const lang = new URLSearchParams(window.location.search).get("lang");
    if (lang) url.set("lang", lang);
    window.history.replaceState(null, "", `${window.location.pathname}?${url}`);
  }

  function showFilters() {
    filters.replaceChildren();
    filters.hidden = Object.keys(extra).length === 0;
    for (const [name, given] of Object.entries(extra)) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.dataset.filter = name;
      let shown = given;
      if (name === "task") shown = Evidence.taskName(taskInfo, given);
      if (name === "class") shown = Evidence.className(given);
      chip.textContent = `${PN.t(`studies.filter.${name}`)}: ${shown} `;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.title = PN.t("studies.remove_filter");
      remove.addEventListener("click", () => {
        delete extra[name];
        if (name === "task") delete extra.class;
        offset = 0;
        search();
      });
      chip.append(remove);
      filters.append(chip);
    }
  }

  async function search() {
    const query = keys();
    remember(query);
    showFilters();
    summary.textContent = PN.t("common.loading");
    try {
      let rows;
      let total = null;
      let more;
      let labels = null;
      if (Object.keys(extra).length) {
        const url = new URLSearchParams(query);
        for (const [name, given] of Object.entries(extra)) url.set(name, given);
        url.set("limit", PAGE);
        url.set("offset", offset);
        const answer = await PN.api(`/api/studies?${url}`);
        ({ total, labels } = answer);
        rows = answer.studies;
        more = offset + rows.length < total;
      } else {
        query.set("includefield", TAG.age);
        query.set("limit", PAGE + 1); // one more: is there a next page?
        query.set("offset", offset);
        rows = await PN.api(`/dicom-web/studies?${query}`);
        more = rows.length > PAGE;
        rows = rows.slice(0, PAGE);
      }
      body.replaceChildren(...rows.flatMap((row) => studyRow(row, labels)));
      const first = rows.length ? offset + 1 : 0;
      const last = offset + rows.length;
      summary.textContent =
        total === null
          ? PN.t(more ? "studies.shown_more" : "studies.shown", { first, last })
          : PN.t("studies.shown_total", { first, last, total: PN.number(total) });
      summary.dataset.count = rows.length;
      if (total !== null) summary.dataset.total = total;
      else delete summary.dataset.total;
      previous.disabled = offset === 0;
      next.disabled = !more;
    } catch (error) {
      body.replaceChildren();
      PN.showError(summary, error);
    }
  }

  /** A study's row, and the row under it that opens to its labels and reports. */
  function studyRow(row, labels) {
    const uid = value(row, TAG.uid);
    const tr = document.createElement("tr");
    tr.className = "study";
    tr.dataset.study = uid;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "expand";
    open.textContent = "▸";
    open.title = PN.t("studies.expand");
    open.setAttribute("aria-expanded", "false");
    const first = document.createElement("td");
    first.append(open);
    const name = value(row, TAG.name);
    const sex = value(row, TAG.sex);
    tr.append(
      first,
      Evidence.cell(value(row, TAG.id)),
      Evidence.cell(name ? name.Alphabetic || name.Ideographic || "" : ""),
      Evidence.cell(sex ? PN.t(`studies.sex.${sex}`) : ""),
      Evidence.cell(value(row, TAG.age)),
      Evidence.cell(dashed(value(row, TAG.date))),
      Evidence.cell((row[TAG.modalities] && row[TAG.modalities].Value || []).join(", ")),
      Evidence.cell(value(row, TAG.description)),
      Evidence.cell(value(row, TAG.accession)),
      Evidence.cell(`${value(row, TAG.series) ?? ""} / ${value(row, TAG.instances) ?? ""}`),
    );
    const labelCell = document.createElement("td");
    for (const [task, given] of Object.entries((labels && labels[uid]) || {})) {
      if (given === -1) continue;
      const tag = Evidence.classTag(taskInfo, task, given);
      tag.textContent = `${Evidence.taskName(taskInfo, task)}: ${Evidence.className(given)}`;
      labelCell.append(tag);
    }
    const viewer = document.createElement("a");
    viewer.className = "viewer button";
    viewer.href = `/viewer/viewer?StudyInstanceUIDs=${encodeURIComponent(uid)}`;
    viewer.target = "_blank";
    viewer.rel = "noopener";
    viewer.textContent = PN.t("studies.open_viewer");
    const viewerCell = document.createElement("td");
    viewerCell.append(viewer);
    tr.append(labelCell, viewerCell);

    const details = document.createElement("tr");
    details.className = "details";
    details.hidden = true;
    const holder = document.createElement("td");
    holder.colSpan = 12;
    details.append(holder);
    let loaded = false;
    open.addEventListener("click", () => {
      details.hidden = !details.hidden;
      open.textContent = details.hidden ? "▸" : "▾";
      open.setAttribute("aria-expanded", String(!details.hidden));
      if (!loaded) {
        loaded = true;
        showDetails(uid, holder);
      }
    });
    return [tr, details];
  }

  /** A study's labels with their evidence, and its reports with the evidence marked. */
  async function showDetails(uid, holder) {
    holder.textContent = PN.t("common.loading");
    let study;
    try {
      study = await PN.api(`/api/studies/${encodeURIComponent(uid)}/labels`);
    } catch (error) {
      PN.showError(holder, error);
      return;
    }
    holder.replaceChildren();
    const heading = Evidence.cell(PN.t("studies.labels"), "h3");
    holder.append(heading);
    if (!study.labels.length) {
      holder.append(Evidence.cell(PN.t("studies.no_labels"), "p"));
    } else {
      const table = document.createElement("table");
      table.className = "labels";
      const head = document.createElement("tr");
      for (const key of ["task", "class", "meaning", "confidence", "evidence", "review"]) {
        head.append(Evidence.cell(PN.t(`studies.label.${key}`), "th"));
      }
      table.append(head);
      for (const label of study.labels) {
        const tr = document.createElement("tr");
        tr.dataset.task = label.task;
        const classCell = document.createElement("td");
        classCell.append(Evidence.classTag(taskInfo, label.task, label.value));
        const reviewed = label.reviewed_by
          ? PN.t(`review.status.${label.review_status}`, { who: label.reviewed_by })
          : label.needs_review ? PN.t("studies.waiting_review") : "";
        tr.append(
          Evidence.cell(Evidence.taskName(taskInfo, label.task)),
          classCell,
          Evidence.cell(Evidence.meaning(taskInfo, label.task, label.value)),
          Evidence.cell(label.confidence.toFixed(2)),
          Evidence.cell(label.evidence),
          Evidence.cell(reviewed),
        );
        table.append(tr);
      }
      holder.append(table);
    }
    holder.append(Evidence.cell(PN.t("studies.reports"), "h3"));
    if (!study.reports.length) holder.append(Evidence.cell(PN.t("studies.no_reports"), "p"));
    for (const link of study.reports) {
      const section = document.createElement("section");
      section.className = "report";
      section.dataset.report = link.report_id;
      holder.append(section);
      try {
        const report = await PN.api(`/api/reports/${link.report_id}`);
        section.append(
          Evidence.cell(
            PN.t("studies.report_heading", {
              kind: PN.t(`studies.report_type.${report.report_type}`),
              id: report.report_id,
              date: dashed(report.exam_date),
              method: link.method,
              confidence: link.confidence.toFixed(2),
            }),
            "h4",
          ),
          Evidence.reportText(report, Evidence.spansOf(report)),
        );
      } catch (error) {
        PN.showError(section, error);
      }
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    offset = 0;
    search();
  });
  form.addEventListener("reset", () => {
    extra = {};
    offset = 0;
    setTimeout(search); // after the form has cleared
  });
  previous.addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE);
    search();
  });
  next.addEventListener("click", () => {
    offset += PAGE;
    search();
  });

  Evidence.tasks().then((all) => {
    taskInfo = all;
    search();
  });
})();
