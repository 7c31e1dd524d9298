// Full-page screenshots of HTML files in a headless Chromium (puppeteer-core).
//   node scripts/screenshot/shot.mjs page.html page.png [more.html more.png ...]
// The browser: $CHROMIUM if set, else the Chromium that the npm package @sparticuz/chromium
// unpacks (both packages come from the npm registry; see scripts/screenshot/package.json).
import puppeteer from 'puppeteer-core';

const pairs = process.argv.slice(2);
if (pairs.length === 0 || pairs.length % 2) {
  console.error('usage: node shot.mjs PAGE.html OUT.png [PAGE.html OUT.png ...]');
  process.exit(2);
}
let executablePath = process.env.CHROMIUM;
let args = ['--no-sandbox', '--disable-dev-shm-usage'];
if (!executablePath) {
  const chromium = (await import('@sparticuz/chromium')).default;
  executablePath = await chromium.executablePath();
  args = chromium.args;
}
const browser = await puppeteer.launch({ executablePath, args, headless: true });
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 900 });
  for (let i = 0; i < pairs.length; i += 2) {
    const url = new URL(pairs[i], `file://${process.cwd()}/`).href;
    await page.goto(url, { waitUntil: 'load' });
    // every figure must have loaded: a broken image is an error, not a blank screenshot
    const broken = await page.$$eval('img', (ims) => ims.filter((im) => !im.complete || im.naturalWidth === 0).map((im) => im.src));
    if (broken.length) throw new Error(`${pairs[i]}: images that did not load: ${broken.join(', ')}`);
    await page.screenshot({ path: pairs[i + 1], fullPage: true });
    console.log(`${pairs[i + 1]}`);
  }
} finally {
  await browser.close();
}
