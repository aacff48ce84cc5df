'use strict';
// Pixel loops in JS run in steps of about a millisecond and await a pause between steps, so
// the event loop (health probes, admission, other requests) is never held for long. A pause
// may throw to stop the work, e.g. when the client has gone. Node only: Python's pixel loops
// are Pillow's C.

const STEP_BYTES = 3 * (1 << 18); // a whole number of RGB pixels

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

/** A pause that yields a turn of the event loop and throws once `signal` is aborted. */
function pauseFor(signal) {
  return async () => {
    await nextTurn();
    if (signal && signal.aborted) {
      throw Object.assign(new Error('work cancelled: the client went away'), { aborted: true });
    }
  };
}

/** fn(start, end) over 0..total in steps of `step`, pausing between steps. */
async function inSteps(total, step, fn, pause = nextTurn) {
  for (let at = 0; at < total; at += step) {
    fn(at, Math.min(total, at + step));
    if (at + step < total) await pause();
  }
}

/** Runs a generator to its end, awaiting `pause` at each `yield`; resolves its return value. */
async function runSteps(steps, pause = nextTurn) {
  let step = steps.next();
  while (!step.done) {
    await pause();
    step = steps.next();
  }
  return step.value;
}

/** Runs a generator to its end at once (no pauses); returns its return value. */
function runAtOnce(steps) {
  let step = steps.next();
  while (!step.done) step = steps.next();
  return step.value;
}

module.exports = { STEP_BYTES, nextTurn, pauseFor, inSteps, runSteps, runAtOnce };
