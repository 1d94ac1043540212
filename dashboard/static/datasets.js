"use strict";
// Datasets: a card per label task with its class counts (/datasets), and one task's classes,
// modality, sequence, sex and age mix and its cohorts (/datasets/{task}); /api/stats/tasks.
(() => {
  const CLASSES = [1, 0, 2, -1];
  const zh = PN.lang === "zh";
  const describe = (task) => (zh && task.description_zh) || task.description || task.task;
  const meaning = (cls) => (zh && cls.meaning_zh) || cls.meaning;

  function element(tag, text, attributes = {}) {
    const made = document.createElement(tag);
    if (text !== undefined) made.textContent = text;
    Object.assign(made, attributes);
    return made;
  }

  async function list(cards) {
    const tasks = await PN.api("/api/stats/tasks");
    cards.replaceChildren(
      ...tasks.map((task) => {
        const card = element("div", undefined, { className: "card" });
        card.dataset.task = task.task;
        const items = task.classes.map((cls) => {
          const item = element("li", `${PN.shown("class", String(cls.value))}: ${PN.number(cls.count)}`);
          item.title = meaning(cls);
          item.dataset.class = cls.value;
          item.dataset.count = cls.count;
          return item;
        });
        card.append(
          element("div", describe(task), { className: "label" }),
          element("div", PN.number(task.studies), { className: "value" }),
          element("div", PN.t("datasets.addressed", { n: PN.number(task.studies) }), {
            className: "label",
          }),
          element("ul", undefined),
          element("a", PN.t("datasets.open"), { href: `/datasets/${encodeURIComponent(task.task)}` }),
        );
        card.querySelector("ul").append(...items);
        return card;
      }),
    );
  }

  async function detail(title) {
    const task = await PN.api(`/api/stats/tasks/${encodeURIComponent(title.dataset.task)}`);
    title.textContent = describe(task);
    document.getElementById("counts").replaceChildren(
      ...["studies", "patients", "series", "instances"].map((name) => {
        const card = element("div", undefined, { className: "card" });
        card.dataset.count = name;
        card.dataset.value = task.overview.counts[name];
        card.append(
          element("div", PN.number(task.overview.counts[name]), { className: "value" }),
          element("div", PN.t(`stats.count.${name}`), { className: "label" }),
        );
        return card;
      }),
    );
    document.querySelector("#classes tbody").replaceChildren(
      ...task.classes.map((cls) => {
        const row = element("tr");
        row.dataset.class = cls.value;
        row.append(
          element("td", PN.shown("class", String(cls.value))),
          element("td", meaning(cls)),
          element("td", PN.number(cls.count)),
        );
        return row;
      }),
    );
    const chartOf = (name) => document.querySelector(`[data-chart="${name}"]`);
    PN.bars(
      chartOf("classes"),
      "class",
      CLASSES.map((value) => ({
        key: String(value),
        count: task.classes.find((cls) => cls.value === value)?.count ?? 0,
      })),
    );
    PN.bars(chartOf("modality"), "modality", task.overview.modality);
    PN.bars(chartOf("sequence"), "sequence", task.overview.sequence, { unit: "stats.series" });
    PN.bars(chartOf("sex"), "sex", task.overview.sex);
    PN.bars(chartOf("age"), "age", task.overview.age);
    const cohorts = document.querySelector("#cohorts tbody");
    if (task.cohorts.length === 0) {
      const row = element("tr");
      row.append(element("td", PN.t("datasets.no_cohorts"), { colSpan: 6 }));
      cohorts.replaceChildren(row);
    } else {
      cohorts.replaceChildren(
        ...task.cohorts.map((cohort) => {
          const row = element("tr");
          row.dataset.cohort = cohort.ref;
          const frozen = cohort.frozen_at
            ? new Date(cohort.frozen_at).toLocaleString(zh ? "zh-CN" : "en")
            : PN.t("datasets.not_frozen");
          row.append(
            element("td", cohort.ref),
            element("td", cohort.description),
            element("td", frozen),
            element("td", cohort.series === null ? "" : PN.number(cohort.series)),
            element("td", cohort.instances === null ? "" : PN.number(cohort.instances)),
            element("td", (cohort.manifest_sha256 || "").slice(0, 16)),
          );
          return row;
        }),
      );
    }
  }

  (async () => {
    const cards = document.getElementById("tasks");
    const title = document.getElementById("task-title");
    try {
      if (cards) await list(cards);
      else await detail(title);
      document.body.dataset.loaded = "yes";
    } catch (error) {
      PN.showError(cards || document.getElementById("problem"), error);
      if (!cards) document.getElementById("problem").hidden = false;
    }
  })();
})();
