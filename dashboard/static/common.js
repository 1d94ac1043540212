"use strict";
// What every dashboard page shares: its strings, JSON from the node's /api, charts, numbers.
const PN = (() => {
  const strings = JSON.parse(document.getElementById("strings").textContent);
  const lang = document.body.dataset.lang;
  const permissions = new Set((document.body.dataset.permissions || "").split(" "));

  /** Whether the caller's role grants `permission` (a page skips the calls it would be
   * refused; the node checks every call anyway). */
  const may = (permission) => permissions.has(permission);

  /** The UI string `key`, with `{name}` replaced from `values`. */
  function t(key, values = {}) {
    const text = strings[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (whole, name) => (name in values ? values[name] : whole));
  }

  /** JSON of `path` (GET, or `options.method` with a JSON `options.body`); throws with the
   * node's own words on an error answer. */
  async function api(path, options = {}) {
    const init = { credentials: "same-origin", headers: { Accept: "application/json" } };
    if (options.method) init.method = options.method;
    if (options.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const answer = await fetch(path, init);
    if (!answer.ok) {
      let detail = `${answer.status}`;
      try {
        const body = await answer.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (ignored) { /* not JSON */ }
      throw new Error(detail);
    }
    return answer.json();
  }

  /** An ECharts chart in `element` (canvas), resized with the window; drawing again in the
   * same element replaces the option and the click handlers. */
  function chart(element, option) {
    let drawn = echarts.getInstanceByDom(element);
    if (drawn) {
      drawn.off("click");
    } else {
      drawn = echarts.init(element, null, { renderer: "canvas" });
      window.addEventListener("resize", () => drawn.resize());
    }
    drawn.setOption(option, true);
    return drawn;
  }

  /** Show what went wrong in `element` (text, never HTML). */
  function showError(element, error) {
    element.textContent = t("common.error", { detail: error.message });
    element.classList.add("error");
  }

  const formatter = new Intl.NumberFormat(lang === "zh" ? "zh-CN" : "en");
  const number = (value) => formatter.format(value);

  /** How a value of a statistics dimension reads (`/api/stats` keys: M, 40, 202401, ...). */
  function shown(dimension, key) {
    if (key === null || key === undefined) return t("stats.unknown");
    if (dimension === "sex") return strings[`stats.sex.${key}`] ?? key;
    if (dimension === "age") return t("stats.age", { start: key, end: Number(key) + 9 });
    if (dimension === "month") return `${key.slice(0, 4)}-${key.slice(4)}`;
    if (dimension === "class") return t(`stats.class.${key}`);
    if (dimension === "source") {
      const [door, aet] = key.split(":");
      return [strings[`stats.door.${door}`] ?? door, aet].filter(Boolean).join(" ");
    }
    return key;
  }

  /** A bar chart of `/api/stats` buckets ({key, count}) of `dimension` in `element`;
   * `onPick(key)` when a bar of a recorded value is clicked, `picked` drawn highlighted. */
  function bars(element, dimension, buckets, { unit = "stats.studies", onPick, picked } = {}) {
    const drawn = chart(element, {
      tooltip: { trigger: "axis" },
      grid: { left: 50, right: 16, top: 16, bottom: 60 },
      xAxis: {
        type: "category",
        data: buckets.map((b) => shown(dimension, b.key)),
        axisLabel: { rotate: buckets.length > 6 ? 35 : 0, interval: 0 },
      },
      yAxis: { type: "value", minInterval: 1 },
      series: [{
        type: "bar",
        name: t(unit),
        data: buckets.map((b) => ({
          value: b.count,
          key: b.key,
          itemStyle: picked !== undefined && String(b.key) === String(picked)
            ? { color: "#c2410c" } : undefined,
        })),
      }],
    });
    if (onPick) {
      drawn.on("click", (event) => {
        if (event.data && event.data.key !== null) onPick(event.data.key);
      });
    }
    return drawn;
  }

  return { t, api, chart, showError, number, lang, may, shown, bars };
})();
