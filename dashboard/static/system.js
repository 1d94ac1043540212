"use strict";
// The node's state: alerts, /healthz, cards and charts from /api/system, jobs, quarantine
// and (for admins) the audit trail; read again every few seconds.
(() => {
  const REFRESH_SECONDS = 5;
  const locale = PN.lang === "zh" ? "zh-CN" : "en";
  const $ = (id) => document.getElementById(id);

  const units = ["byte", "kilobyte", "megabyte", "gigabyte", "terabyte"];
  /** `value` bytes in the largest unit that keeps it above 1 (decimal units, as df -H). */
  function bytes(value) {
    let shown = value;
    let unit = 0;
    while (shown >= 1000 && unit < units.length - 1) {
      shown /= 1000;
      unit += 1;
    }
    const format = new Intl.NumberFormat(locale, {
      style: "unit", unit: units[unit], unitDisplay: "short", maximumFractionDigits: 1,
    });
    return format.format(shown);
  }
  const time = (iso) => (iso ? new Date(iso).toLocaleString(locale) : "");
  const percent = (value) => `${PN.number(Math.round(value * 10) / 10)}%`;

  /** An element with text content (never HTML) and attributes. */
  function element(tag, text = "", attributes = {}) {
    const made = document.createElement(tag);
    made.textContent = text;
    for (const [name, value] of Object.entries(attributes)) made.setAttribute(name, value);
    return made;
  }

  function card(key, value, label) {
    const shown = element("div", "", { class: "card", "data-card": key });
    shown.append(element("div", value, { class: "value" }), element("div", label, { class: "label" }));
    return shown;
  }

  function fillTable(table, rows) {
    table.tBodies[0].replaceChildren(
      ...rows.map((cells) => {
        const row = element("tr");
        row.append(...cells.map((cell) => element("td", cell)));
        return row;
      }),
    );
  }

  function showAlerts(alerts) {
    const box = $("alerts");
    if (!alerts.length) {
      box.replaceChildren(element("p", PN.t("system.alerts.none"), { class: "muted" }));
      return;
    }
    box.replaceChildren(
      ...alerts.map((alert) => {
        const values = { ...alert.values };
        for (const name of ["percent", "threshold"]) {
          if (typeof values[name] === "number") values[name] = PN.number(Math.round(values[name] * 10) / 10);
        }
        const text = `${PN.t(`system.alert.${alert.kind}`, values)} ${PN.t("system.alert.since", { time: time(alert.since) })}`;
        return element("div", text, { class: "alert", role: "alert", "data-kind": alert.kind });
      }),
    );
  }

  function showCards(state) {
    const ingest = state.ingest;
    const minutes = Math.round(ingest.window_seconds / 6) / 10;
    const perMinute = ingest.per_minute;
    const received = ingest.since_start;
    const cards = [
      card("cpu", percent(state.cpu.percent), PN.t("system.card.cpu", { cores: state.cpu.cores })),
      card("memory", percent(state.memory.percent), PN.t("system.card.memory", {
        used: bytes(state.memory.used), total: bytes(state.memory.total),
      })),
      card("disk-used", `${bytes(state.disk.used)} (${percent(state.disk.percent)})`, PN.t("system.card.disk_used")),
      card("disk-free", bytes(state.disk.free), PN.t("system.card.disk_free")),
      card("associations", PN.number(state.associations.active), PN.t("system.card.associations", {
        max: state.associations.max,
      })),
      card("accepted", PN.number(perMinute.accepted), PN.t("system.card.accepted", { minutes: PN.number(minutes) })),
      card("errors", PN.number(perMinute.rejected + perMinute.failed), PN.t("system.card.errors")),
      card("since-start", PN.number(received.accepted + received.rejected + received.failed), PN.t("system.card.since_start")),
    ];
    if (state.quarantine) {
      cards.push(card("quarantine", PN.number(state.quarantine.count), PN.t("system.card.quarantine")));
    }
    $("cards").replaceChildren(...cards);
  }

  const charts = {};
  /** Draw `option` in the chart `id`, made on first use and updated after. */
  function draw(id, option) {
    if (charts[id]) charts[id].setOption(option);
    else charts[id] = PN.chart($(id), option);
  }

  function showCharts(state) {
    const history = state.ingest.history;
    const series = (key, name) => ({
      name: PN.t(name), type: "line", showSymbol: false, smooth: true,
      data: history.map((point) => [point.at, point[key]]),
    });
    draw("ingest-chart", {
      animation: false,
      tooltip: { trigger: "axis" },
      legend: { top: 0 },
      grid: { left: 48, right: 16, top: 32, bottom: 32 },
      xAxis: { type: "time" },
      yAxis: { type: "value", minInterval: 1 },
      series: [
        series("accepted", "system.series.accepted"),
        series("rejected", "system.series.rejected"),
        series("failed", "system.series.failed"),
      ],
    });
    draw("load-chart", {
      animation: false,
      tooltip: { trigger: "axis" },
      legend: { top: 0 },
      grid: { left: 48, right: 16, top: 32, bottom: 32 },
      xAxis: { type: "time" },
      yAxis: { type: "value", min: 0, max: 100 },
      series: [series("cpu_percent", "system.series.cpu"), series("memory_percent", "system.series.memory")],
    });
    const threshold = state.disk.threshold;
    draw("disk-chart", {
      animation: false,
      series: [{
        type: "gauge",
        min: 0,
        max: 100,
        axisLine: {
          lineStyle: { width: 18, color: [[threshold / 100, "#2f7d32"], [1, "#b00020"]] },
        },
        pointer: { itemStyle: { color: "auto" } },
        detail: { valueAnimation: false, formatter: (value) => percent(value), fontSize: 20 },
        title: { offsetCenter: [0, "75%"] },
        data: [{
          value: Math.round(state.disk.percent * 10) / 10,
          name: `${PN.t("system.disk.used")} · ${PN.t("system.disk.threshold", { threshold: PN.number(threshold) })}`,
        }],
      }],
    });
  }

  function showJobs(jobs) {
    const table = $("jobs");
    if (!jobs || !jobs.length) {
      fillTable(table, [[PN.t("system.jobs.none"), "", "", "", "", "", ""]]);
      return;
    }
    fillTable(table, jobs.map((job) => [
      job.name,
      job.every_seconds ? PN.t("system.jobs.seconds", { n: PN.number(job.every_seconds) }) : "",
      time(job.next_run),
      job.last_run ? time(job.last_run.started_at) : PN.t("system.jobs.never"),
      job.last_run ? PN.t(`system.outcome.${job.last_run.outcome}`) : "",
      PN.number(job.failures_in_a_row),
      job.last_run ? job.last_run.summary : "",
    ]));
  }

  function showQuarantine(quarantine) {
    $("quarantine-section").hidden = !quarantine;
    if (!quarantine) return;
    $("quarantine-count").textContent = PN.t("system.quarantine.count", { count: PN.number(quarantine.count) });
    fillTable($("quarantine"), quarantine.newest.map((held) => [
      time(held.received_at), held.modality || "", held.reason, held.study_instance_uid, bytes(held.size),
    ]));
  }

  function showAudit(events) {
    $("audit-section").hidden = !events;
    if (!events) return;
    fillTable($("audit"), events.map((event) => [
      time(event.at), event.actor, event.action, event.outcome, event.door,
    ]));
  }

  async function showHealth() {
    const answer = await fetch("/healthz", { credentials: "same-origin" });
    const health = await answer.json();
    $("health").replaceChildren(
      ...Object.entries(health).map(([name, value]) => {
        // the words of /healthz in the page's language; a problem's own message as it is
        const word = `system.health.${value}`;
        const shown = card(name, PN.t(word) === word ? value : PN.t(word), PN.t(`system.${name}`));
        shown.dataset.check = name;
        return shown;
      }),
    );
  }

  async function refresh() {
    try {
      const [state] = await Promise.all([PN.api("/api/system"), showHealth()]);
      showAlerts(state.alerts);
      showCards(state);
      showCharts(state);
      showJobs(state.jobs);
      showQuarantine(state.quarantine);
      showAudit(state.audit);
      $("updated").textContent = PN.t("system.updated", { time: time(state.at), seconds: REFRESH_SECONDS });
      $("updated").classList.remove("error");
    } catch (error) {
      PN.showError($("updated"), error);
    }
  }

  refresh();
  setInterval(refresh, REFRESH_SECONDS * 1000);
})();
