"use strict";
// What every dashboard page shares: its strings, JSON from the node's /api, charts, numbers.
const PN = (() => {
  const strings = JSON.parse(document.getElementById("strings").textContent);
  const lang = document.body.dataset.lang;

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

  /** An ECharts chart in `element` (canvas), resized with the window. */
  function chart(element, option) {
    const drawn = echarts.init(element, null, { renderer: "canvas" });
    drawn.setOption(option);
    window.addEventListener("resize", () => drawn.resize());
    return drawn;
  }

  /** Show what went wrong in `element` (text, never HTML). */
  function showError(element, error) {
    element.textContent = t("common.error", { detail: error.message });
    element.classList.add("error");
  }

  const formatter = new Intl.NumberFormat(lang === "zh" ? "zh-CN" : "en");
  const number = (value) => formatter.format(value);

  return { t, api, chart, showError, number, lang };
})();
