// Drives cairn's dashboard in headless Chromium, for crates/cairn/tests/dashboard.rs.
//
//   node check.mjs <dashboard url> <out dir> <nodes> <node to be killed>
//
// 1. Waits until the page shows every node up and a leader for every shard, saves a screenshot
//    to <out>/before.png, then keeps writing what it shows to <out>/before.json (replaced
//    whole, every 200 ms: leadership may move while the test compares).
// 2. Waits for <out>/killed (the Rust test kills the node, then writes it), then until the
//    page shows that node down and every shard led by another node; saves after.json and
//    after.png. Exits 0 when both happened in time, 1 otherwise.
import { chromium } from "playwright-core";
import { existsSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [url, out, count, victim] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

async function shown(page) {
  return page.evaluate(() => ({
    nodes: [...document.querySelectorAll("#nodes tbody tr")].map(tr => ({
      id: Number(tr.dataset.node), state: tr.dataset.state,
    })),
    shards: [...document.querySelectorAll("#shards tbody tr")].map(tr => ({
      id: Number(tr.dataset.shard), leader: tr.dataset.leader,
    })),
  }));
}

async function until(page, test, seconds, what) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const view = await shown(page);
    if (test(view)) return view;
    if (Date.now() > deadline) {
      throw new Error(`${what} not shown within ${seconds} s: ${JSON.stringify(view)}`);
    }
    await page.waitForTimeout(200);
  }
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
let status = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(url);
  const before = await until(page, v =>
    v.nodes.length === Number(count) && v.nodes.every(n => n.state === "up") &&
    v.shards.length > 1 && v.shards.every(s => s.leader !== "none"), 30, "every node up, every shard led");
  await page.screenshot({ path: join(out, "before.png"), fullPage: true });
  const deadline = Date.now() + 60_000;
  let view = before;
  while (!existsSync(join(out, "killed"))) {
    if (Date.now() > deadline) throw new Error("the test never killed a node");
    writeFileSync(join(out, "before.json.tmp"), JSON.stringify(view));
    renameSync(join(out, "before.json.tmp"), join(out, "before.json"));
    await page.waitForTimeout(200);
    view = await shown(page);
  }
  const killedAt = Date.now();
  const after = await until(page, v =>
    v.nodes.some(n => n.id === Number(victim) && n.state === "down") &&
    v.shards.every(s => s.leader !== "none" && s.leader !== String(victim)),
    20, `node ${victim} down and new leaders`);
  after.seconds = (Date.now() - killedAt) / 1000;
  writeFileSync(join(out, "after.json"), JSON.stringify(after));
  await page.screenshot({ path: join(out, "after.png"), fullPage: true });
} catch (e) {
  console.error(String(e));
  status = 1;
} finally {
  await browser.close();
}
process.exit(status);
