"use strict";
// Labels and their evidence, shared by the Studies and Label review pages: task and class
// names in the reader's language, and a report's text with the decisive words in <mark>.
const Evidence = (() => {
  let known = null;

  /** The label tasks (name -> {description, meanings by class}); empty when the caller may
   * not read labels. */
  async function tasks() {
    if (known === null && !PN.may("labels.read")) known = Promise.resolve({});
    if (known === null) {
      known = PN.api("/api/labels/tasks").then(
        (answer) => Object.fromEntries(answer.tasks.map((task) => [task.name, task])),
        () => ({}),
      );
    }
    return known;
  }

  const inLanguage = (texts) => (texts && (texts[PN.lang] || texts.en)) || "";

  function taskName(all, name) {
    return inLanguage(all[name] && all[name].description) || name;
  }

  /** The class's short name ("malignant"). */
  const className = (value) => PN.t(`labels.class.${value}`);

  /** What the class means for the task, in the reader's language. */
  function meaning(all, task, value) {
    const classes = (all[task] && all[task].classes) || [];
    const found = classes.find((c) => c.value === value);
    return found ? inLanguage(found.meaning) : "";
  }

  /** A label's class as a small tag: the short name, its meaning as the tooltip. */
  function classTag(all, task, value) {
    const tag = document.createElement("span");
    tag.className = `class class-${value}`;
    tag.textContent = className(value);
    tag.title = meaning(all, task, value);
    return tag;
  }

  /** The report's text (findings, then impression) in a <pre>, each span [start, end, task]
   * in a <mark>. Spans index the NFKC-normalised, lower-cased text, as the extractor read
   * it; the original is shown when it has the same length (nearly always). */
  function reportText(report, spans) {
    const text = [report.findings, report.impression].filter(Boolean).join("\n");
    const read = text.normalize("NFKC").toLowerCase();
    const shown = read.length === text.length ? text : text.normalize("NFKC");
    const source = shown.length === read.length ? shown : read;
    const element = document.createElement("pre");
    element.className = "report";
    let at = 0;
    const sorted = spans
      .filter(([start, end]) => Number.isInteger(start) && end > start && end <= source.length)
      .sort((x, y) => x[0] - y[0]);
    for (const [start, end, task] of sorted) {
      if (start < at) continue; // overlapping evidence: the first one is marked
      element.append(document.createTextNode(source.slice(at, start)));
      const mark = document.createElement("mark");
      mark.textContent = source.slice(start, end);
      mark.dataset.task = task;
      element.append(mark);
      at = end;
    }
    element.append(document.createTextNode(source.slice(at)));
    return element;
  }

  /** The evidence spans of a stored report's labels (of `task` only, when given). */
  function spansOf(report, task = null) {
    return report.labels
      .filter((label) => label.value !== -1 && (task === null || label.task === task))
      .map((label) => [label.span_start, label.span_end, label.task]);
  }

  /** An element with `text` (a table cell unless `tag` is given). */
  function cell(text, tag = "td") {
    const element = document.createElement(tag);
    element.textContent = text ?? "";
    return element;
  }

  return { tasks, taskName, className, meaning, classTag, reportText, spansOf, cell };
})();
