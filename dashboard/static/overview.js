"use strict";
// The overview: counts, ingest over time and distributions of /api/stats. A click on a bar
// adds its value to the filters (the page's query string, shown as removable chips) and
// every figure is read again; "see these studies" opens the study list with the same filters.
(() => {
  const DIMENSIONS = ["modality", "sex", "age", "label", "month", "source", "body_part"];
  const COUNTS = ["patients", "studies", "series", "instances", "bytes", "reports", "labelled_studies"];
  const CLASSES = [1, 0, 2, -1];
  const CLASS_COLOURS = { 1: "#c0392b", 0: "#2e7d32", 2: "#f2a900", "-1": "#9aa5b1" };
  const problem = document.getElementById("problem");
  const chartOf = (name) => document.querySelector(`[data-chart="${name}"]`);

  /** The filters of the query string (other parameters, e.g. lang, are left out). */
  function filters() {
    const found = new URLSearchParams();
    for (const [name, value] of new URLSearchParams(location.search)) {
      if (DIMENSIONS.includes(name)) found.append(name, value);
    }
    return found;
  }

  function show(changed) {
    history.replaceState(null, "", changed.toString() ? `?${changed}` : location.pathname);
    load();
  }

  /** Filter on `value` of `dimension`: replaces that dimension's filter (a label filter
   * replaces only the one of the same task). */
  function pick(dimension, value) {
    const changed = filters();
    if (dimension === "label") {
      const task = value.split(":")[0];
      const others = changed.getAll("label").filter((v) => v.split(":")[0] !== task);
      changed.delete("label");
      [...others, value].forEach((v) => changed.append("label", v));
    } else {
      changed.set(dimension, value);
    }
    show(changed);
  }

  function drop(dimension, value) {
    const changed = filters();
    const kept = changed.getAll(dimension).filter((v) => v !== value);
    changed.delete(dimension);
    kept.forEach((v) => changed.append(dimension, v));
    show(changed);
  }

  function filterText(dimension, value, tasks) {
    if (dimension === "label") {
      const [task, cls] = value.split(":");
      return `${taskName(task, tasks)}: ${PN.shown("class", cls)}`;
    }
    return PN.shown(dimension, value);
  }

  function taskName(task, tasks) {
    const names = tasks[task];
    return names ? (PN.lang === "zh" && names.description_zh) || names.description || task : task;
  }

  function drawChips(tasks) {
    const chips = document.getElementById("chips");
    chips.replaceChildren(
      ...[...filters()].map(([dimension, value]) => {
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = "chip";
        chip.dataset.filter = `${dimension}=${value}`;
        chip.title = PN.t("overview.remove_filter");
        chip.textContent = `${PN.t(`overview.filter.${dimension}`)}: ${filterText(dimension, value, tasks)} ×`;
        chip.addEventListener("click", () => drop(dimension, value));
        return chip;
      }),
    );
    const query = studyFilters(filters()).toString();
    document.getElementById("see-studies").href = query ? `/studies?${query}` : "/studies";
  }

  /** The study list's filters for the overview's (its own names and forms: an age decade
   * 40 is 40-49, a label task:class is task and class, month YYYYMM is YYYY-MM, a source
   * dimse:AE is the AE title). */
  function studyFilters(chosen) {
    const found = new URLSearchParams();
    for (const [name, value] of chosen) {
      if (name === "age") found.set("age", `${value}-${Number(value) + 9}`);
      else if (name === "month") found.set("month", `${value.slice(0, 4)}-${value.slice(4, 6)}`);
      else if (name === "source") found.set("source", value.replace(/^dimse:/, ""));
      else if (name === "label" && !found.has("task")) {
        const [task, klass] = value.split(":");
        found.set("task", task);
        found.set("class", klass);
      } else if (name !== "label") found.set(name, value);
    }
    return found;
  }

  function size(bytes) {
    const units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${PN.number(Math.round(value * 10) / 10)} ${units[unit]}`;
  }

  function drawCounts(counts) {
    document.getElementById("counts").replaceChildren(
      ...COUNTS.map((name) => {
        const card = document.createElement("div");
        card.className = "card";
        card.dataset.count = name;
        card.dataset.value = counts[name];
        const value = document.createElement("div");
        value.className = "value";
        value.textContent = name === "bytes" ? size(counts[name]) : PN.number(counts[name]);
        const label = document.createElement("div");
        label.className = "label";
        label.textContent = PN.t(`stats.count.${name}`);
        card.append(value, label);
        return card;
      }),
    );
  }

  function drawIngest(element, buckets) {
    PN.chart(element, {
      tooltip: { trigger: "axis" },
      legend: { top: 0 },
      grid: { left: 50, right: 50, top: 30, bottom: 40 },
      xAxis: { type: "category", data: buckets.map((b) => b.at) },
      yAxis: [
        { type: "value", minInterval: 1, name: PN.t("stats.studies") },
        { type: "value", minInterval: 1, name: PN.t("stats.instances") },
      ],
      series: [
        { type: "bar", name: PN.t("stats.studies"), data: buckets.map((b) => b.studies) },
        {
          type: "line", name: PN.t("stats.instances"), yAxisIndex: 1,
          data: buckets.map((b) => b.instances),
        },
      ],
    });
  }

  function drawLabels(element, buckets, tasks, picked) {
    const names = [...new Set([...Object.keys(tasks), ...buckets.map((b) => b.task)])];
    const count = new Map(buckets.map((b) => [`${b.task}:${b.value}`, b.count]));
    const drawn = PN.chart(element, {
      tooltip: { trigger: "axis" },
      legend: { top: 0 },
      grid: { left: 50, right: 16, top: 30, bottom: 60 },
      xAxis: {
        type: "category", data: names.map((task) => taskName(task, tasks)),
        axisLabel: { interval: 0, rotate: names.length > 3 ? 20 : 0 },
      },
      yAxis: { type: "value", minInterval: 1 },
      series: CLASSES.map((value) => ({
        type: "bar",
        stack: "classes",
        name: PN.shown("class", String(value)),
        itemStyle: { color: CLASS_COLOURS[value] },
        data: names.map((task) => ({
          value: count.get(`${task}:${value}`) ?? 0,
          key: `${task}:${value}`,
          itemStyle: picked.includes(`${task}:${value}`) ? { borderColor: "#000", borderWidth: 2 } : undefined,
        })),
      })),
    });
    drawn.on("click", (event) => event.data && pick("label", event.data.key));
  }

  async function load() {
    let stats;
    try {
      stats = await PN.api(`/api/stats?${filters()}`);
    } catch (error) {
      problem.hidden = false;
      PN.showError(problem, error);
      return;
    }
    problem.hidden = true;
    const current = filters();
    drawChips(stats.tasks);
    drawCounts(stats.counts);
    drawIngest(chartOf("ingest_day"), stats.ingest.per_day);
    drawIngest(chartOf("ingest_hour"), stats.ingest.per_hour);
    drawLabels(chartOf("labels"), stats.labels, stats.tasks, current.getAll("label"));
    for (const dimension of ["modality", "body_part", "sex", "age", "month", "source"]) {
      PN.bars(chartOf(dimension), dimension, stats[dimension], {
        onPick: (key) => pick(dimension, String(key)),
        picked: current.get(dimension) ?? undefined,
      });
    }
    PN.bars(chartOf("sequence"), "sequence", stats.sequence, { unit: "stats.series" });
    document.body.dataset.loaded = current.toString() || "all";
  }

  load();
})();
