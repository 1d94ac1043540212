"use strict";
// The node's health: /healthz, as a card per check.
(async () => {
  const cards = document.getElementById("health");
  try {
    const answer = await fetch("/healthz", { credentials: "same-origin" });
    const health = await answer.json();
    cards.replaceChildren(
      ...Object.entries(health).map(([name, value]) => {
        const card = document.createElement("div");
        card.className = "card";
        card.dataset.check = name;
        const shown = document.createElement("div");
        shown.className = "value";
        shown.textContent = value;
        const label = document.createElement("div");
        label.className = "label";
        label.textContent = PN.t(`system.${name}`);
        card.append(shown, label);
        return card;
      }),
    );
  } catch (error) {
    PN.showError(cards, error);
  }
})();
