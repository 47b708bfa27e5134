// Run in /docs by docs_contract.py: opens each operation as a reader would (its tag, then its
// summary) and answers how long each took, from the click until its parameters, request body and
// responses (with their example) are on the page. Argument: [[tag, operationId, wants], ...] where
// wants lists "params", "body" and "example" (its first response has content) as the operation has
// them.
async (ops, limitMs) => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function until(fn, ms) {
    const start = performance.now();
    for (;;) {
      const v = fn();
      if (v) return v;
      if (performance.now() - start > ms) return null;
      await sleep(5);
    }
  }
  const esc = (s) => s.replace(/\s/g, "_");
  const out = [];
  for (let i = 0; i < ops.length; i++) {
    const [tag, id, wants] = ops[i];
    const tagEl = await until(() => document.getElementById("operations-tag-" + esc(tag)), 30000);
    if (!tagEl) throw new Error("no tag " + tag + " on the page");
    let op = document.getElementById("operations-" + esc(tag) + "-" + id);
    if (!op) {
      tagEl.click();
      op = await until(() => document.getElementById("operations-" + esc(tag) + "-" + id), 10000);
      if (!op) throw new Error("no operation " + id + " under " + tag);
    }
    const control = op.querySelector(".opblock-summary-control");
    const t0 = performance.now();
    control.click();
    const done = await until(() => {
      const el = document.getElementById("operations-" + esc(tag) + "-" + id);
      if (!el || !el.querySelector(".opblock-body")) return false;
      if (wants.includes("params") && !el.querySelector("tr[data-param-name]")) return false;
      if (wants.includes("body") && !el.querySelector(".opblock-section-request-body textarea, .opblock-section-request-body .body-param")) return false;
      const response = el.querySelector(".responses-table tr.response");
      if (!response) return false;
      if (!wants.includes("example")) return true;
      const example = response.querySelector(".model-example");
      return !!(example && example.textContent.trim().length > 0);
    }, limitMs * 5);
    const ms = performance.now() - t0;
    out.push({ tag, id, ms: Math.round(ms), rendered: !!done });
    // Closed again, so that the page holds one open operation at a time, as a reader's would.
    control.click();
    await until(() => !document.querySelector("#operations-" + esc(tag) + "-" + id + " .opblock-body"), 5000);
    // And its tag once its last operation was timed (a reader does not keep all of them open).
    if (i + 1 === ops.length || ops[i + 1][0] !== tag) {
      document.getElementById("operations-tag-" + esc(tag)).click();
      await until(() => !document.querySelector('[id^="operations-' + esc(tag) + '-"]'), 5000);
    }
  }
  return out;
}
