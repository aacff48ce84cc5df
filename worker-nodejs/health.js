'use strict';
// The self-check behind /healthz. It runs in the background, at most every 10 s, and
// /healthz reads its last result: a health probe never waits for libvips, the thread pool
// or a decode. A check that has not finished after 30 s is itself a failure.

const { decodeImage } = require('./decode');
const { sepiaInPlace, applyOperationAsync } = require('./ops');
const { encodeImage, encodeReply } = require('./encode');

const SELF_CHECK_EVERY_MS = 10_000;
const SELF_CHECK_STUCK_MS = 30_000;
const SELF_CHECK_PIXELS = Buffer.from([255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 100, 50]);

/** One tiny PNG through decode, sepia and encode, as a request goes; resolves null when healthy. */
async function defaultSelfCheck(timeoutSeconds) {
  const tiny = { width: 2, height: 2, data: Buffer.from(SELF_CHECK_PIXELS) };
  const png = await encodeImage(tiny, 'png', { timeoutSeconds });
  const decoded = await decodeImage(png, { maxPixels: 4, timeoutSeconds });
  await applyOperationAsync(decoded, 'sepia');
  const reply = await encodeReply(decoded, { op: 'sepia', format: 'png' });
  const roundTrip = await decodeImage(Buffer.concat(reply.parts), { maxPixels: 4, timeoutSeconds });
  const expected = sepiaInPlace(Buffer.from(SELF_CHECK_PIXELS));
  if (!roundTrip.data.equals(expected)) return 'self-check image came back with wrong pixels';
  return null;
}

const oneLine = (text) => String(text).replace(/\s+/g, ' ').trim().slice(0, 300);

/**
 * `problem()` returns the reason the worker is unhealthy, or null, from memory; it starts a
 * new background check when the last one is over 10 s old. The first check starts now.
 */
function createHealth({ selfCheck, now, logger, timeoutSeconds }) {
  const check = selfCheck || (() => defaultSelfCheck(timeoutSeconds));
  let last = { reason: null, checkedAt: -Infinity };
  let runningSince = null;

  function refresh() {
    if (runningSince !== null) return;
    runningSince = now();
    Promise.resolve()
      .then(check)
      .catch((err) => `self-check failed: ${oneLine(err && err.message)}`)
      .then((reason) => {
        last = { reason, checkedAt: now() };
        runningSince = null;
        if (reason) logger.error('self-check failed', { reason });
      });
  }

  refresh();
  return {
    problem() {
      if (now() - last.checkedAt >= SELF_CHECK_EVERY_MS) refresh();
      if (runningSince !== null && now() - runningSince > SELF_CHECK_STUCK_MS) {
        return `self-check has not finished in ${SELF_CHECK_STUCK_MS / 1000} s`;
      }
      return last.reason;
    },
  };
}

module.exports = { createHealth, SELF_CHECK_EVERY_MS };
