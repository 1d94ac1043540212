"use strict";
// Label review: the labels waiting for a person (/api/labels/review), each with its reports
// and the evidence marked; confirm (y) or choose a class (1-4) in one key or click, move
// with j/k; below, the labels people reviewed and who did (/api/labels/reviewed).
(() => {
  const CLASSES = [1, 0, 2, -1]; // keys 1-4, in the task file's order
  const queue = document.getElementById("queue");
  const status = document.getElementById("status");
  const title = document.getElementById("current-title");
  const facts = document.getElementById("current-facts");
  const choices = document.getElementById("choices");
  const note = document.getElementById("note");
  const evidence = document.getElementById("evidence");
  const taskSelect = document.getElementById("task");
  const reviewedBody = document.querySelector("#reviewed tbody");
  let items = [];
  let at = 0;
  let taskInfo = {};
  let busy = false;

  async function loadQueue() {
    const task = taskSelect.value;
    const answer = await PN.api(`/api/labels/review?limit=500${task ? `&task=${encodeURIComponent(task)}` : ""}`);
    items = answer.labels;
    at = Math.min(at, Math.max(0, items.length - 1));
    showQueue();
    await showCurrent();
  }

  function showQueue() {
    queue.replaceChildren(
      ...items.map((label, index) => {
        const item = document.createElement("li");
        item.dataset.label = label.id;
        item.setAttribute("aria-current", String(index === at));
        item.append(
          document.createTextNode(`${Evidence.taskName(taskInfo, label.task)} `),
          Evidence.classTag(taskInfo, label.task, label.value),
          document.createTextNode(` ${label.confidence.toFixed(2)}`),
        );
        item.addEventListener("click", () => select(index));
        return item;
      }),
    );
    status.textContent = items.length
      ? PN.t("review.waiting", { count: PN.number(items.length) })
      : PN.t("review.empty");
    status.dataset.waiting = items.length;
  }

  async function select(index) {
    if (index < 0 || index >= items.length) return;
    at = index;
    for (const [position, item] of [...queue.children].entries()) {
      item.setAttribute("aria-current", String(position === at));
    }
    queue.children[at].scrollIntoView({ block: "nearest" });
    await showCurrent();
  }

  function fact(term, text) {
    facts.append(Evidence.cell(term, "dt"), Evidence.cell(text, "dd"));
  }

  async function showCurrent() {
    const label = items[at];
    facts.replaceChildren();
    choices.replaceChildren();
    evidence.replaceChildren();
    note.value = "";
    if (!label) {
      title.textContent = PN.t("review.empty");
      return;
    }
    document.getElementById("current").dataset.label = label.id;
    title.textContent = Evidence.taskName(taskInfo, label.task);
    fact(PN.t("review.study"), label.study_instance_uid);
    fact(PN.t("review.in_force"), Evidence.meaning(taskInfo, label.task, label.value));
    facts.lastChild.prepend(Evidence.classTag(taskInfo, label.task, label.value));
    fact(PN.t("studies.label.confidence"), label.confidence.toFixed(2));
    fact(PN.t("review.reason"), label.review_reason || "");
    fact(PN.t("review.rule"), label.rule);
    const confirm = document.createElement("button");
    confirm.type = "button";
    confirm.dataset.action = "confirm";
    confirm.append(keyHint("y"), document.createTextNode(` ${PN.t("review.confirm")}`));
    confirm.addEventListener("click", () => decide(null));
    choices.append(confirm);
    CLASSES.forEach((value, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.value = value;
      button.title = Evidence.meaning(taskInfo, label.task, value);
      button.append(keyHint(String(index + 1)), document.createTextNode(` ${Evidence.className(value)}`));
      button.addEventListener("click", () => decide(value));
      choices.append(button);
    });
    await showEvidence(label);
  }

  function keyHint(key) {
    const hint = document.createElement("kbd");
    hint.textContent = key;
    return hint;
  }

  /** The study's reports, the deciding one first, the task's evidence marked in each. */
  async function showEvidence(label) {
    const shownFor = label.id;
    try {
      const study = await PN.api(`/api/studies/${encodeURIComponent(label.study_instance_uid)}/labels`);
      const reports = study.reports.sort((x, y) => (y.report_id === label.report_id) - (x.report_id === label.report_id));
      for (const link of reports) {
        const report = await PN.api(`/api/reports/${link.report_id}`);
        if (items[at] === undefined || items[at].id !== shownFor) return; // moved on
        const own = report.labels.find((l) => l.task === label.task);
        const heading = PN.t("review.report_heading", {
          kind: PN.t(`studies.report_type.${report.report_type}`),
          id: report.report_id,
          value: own ? Evidence.className(own.value) : "",
        });
        const section = document.createElement("section");
        section.className = "report";
        section.dataset.report = report.report_id;
        section.append(Evidence.cell(heading, "h3"), Evidence.reportText(report, Evidence.spansOf(report, label.task)));
        evidence.append(section);
      }
    } catch (error) {
      const problem = document.createElement("p");
      PN.showError(problem, error);
      evidence.append(problem);
    }
  }

  async function decide(value) {
    const label = items[at];
    if (!label || busy) return;
    busy = true;
    const body = { value };
    if (note.value.trim()) body.note = note.value.trim();
    try {
      const saved = await PN.api(`/api/labels/${label.id}`, { method: "PUT", body });
      items.splice(at, 1);
      at = Math.min(at, Math.max(0, items.length - 1));
      showQueue();
      status.textContent = PN.t(`review.done.${saved.review_status}`, {
        task: Evidence.taskName(taskInfo, saved.task),
        value: Evidence.className(saved.value),
      });
      await Promise.all([showCurrent(), loadReviewed()]);
    } catch (error) {
      PN.showError(status, error);
    } finally {
      busy = false;
    }
  }

  async function loadReviewed() {
    const answer = await PN.api("/api/labels/reviewed?limit=50");
    reviewedBody.replaceChildren(
      ...answer.labels.map((label) => {
        const tr = document.createElement("tr");
        tr.dataset.label = label.id;
        const when = label.reviewed_at ? new Date(label.reviewed_at).toLocaleString(PN.lang === "zh" ? "zh-CN" : "en") : "";
        const decided = document.createElement("td");
        decided.append(Evidence.classTag(taskInfo, label.task, label.value));
        decided.append(document.createTextNode(PN.t(`review.status_short.${label.review_status}`)));
        tr.append(
          Evidence.cell(when),
          Evidence.cell(label.reviewed_by),
          Evidence.cell(Evidence.taskName(taskInfo, label.task)),
          Evidence.cell(label.study_instance_uid),
          Evidence.cell(Evidence.className(label.extracted_value)),
          decided,
          Evidence.cell(label.review_note),
        );
        return tr;
      }),
    );
    document.getElementById("reviewed").dataset.loaded = "true";
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, select, textarea")) return;
    const digit = Number.parseInt(event.key, 10);
    if (event.key === "j") select(at + 1);
    else if (event.key === "k") select(at - 1);
    else if (event.key === "y") decide(null);
    else if (digit >= 1 && digit <= CLASSES.length) decide(CLASSES[digit - 1]);
    else return;
    event.preventDefault();
  });
  taskSelect.addEventListener("change", () => {
    at = 0;
    loadQueue().catch((error) => PN.showError(status, error));
  });

  Evidence.tasks().then(async (all) => {
    taskInfo = all;
    for (const name of Object.keys(all)) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = Evidence.taskName(all, name);
      taskSelect.append(option);
    }
    try {
      await Promise.all([loadQueue(), loadReviewed()]);
    } catch (error) {
      PN.showError(status, error);
    }
  });
})();
