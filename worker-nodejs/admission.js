'use strict';
// Admission: how many /process requests, and how many declared pixels, are in flight.
// A request holds its slot and its pixels until its work has ended and its reply is fully
// written (or its connection is gone), so memory is bounded by these two numbers.

/**
 * The live worker state that app.js admits requests into and server.js drains:
 * `enter()` takes a slot (null when full), `slot.claimPixels(n)` adds the request's pixels
 * (false when that would pass maxInflightPixels while something else is in flight),
 * `slot.leave()` gives both back (idempotent). `whenIdle()` resolves when nothing is in flight.
 */
function createAdmission({ maxInflight, maxInflightPixels }) {
  const idleWaiters = [];
  const state = {
    draining: false,
    inflight: 0,
    inflightPixels: 0,
    startDraining() {
      state.draining = true;
    },
    whenIdle() {
      if (state.inflight === 0) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
    enter() {
      if (state.inflight >= maxInflight) return null;
      state.inflight += 1;
      return newSlot();
    },
  };

  function newSlot() {
    let pixels = 0;
    let left = false;
    return {
      claimPixels(count) {
        const others = state.inflight - 1;
        if (others > 0 && state.inflightPixels + count > maxInflightPixels) return false;
        pixels += count;
        state.inflightPixels += count;
        return true;
      },
      leave() {
        if (left) return;
        left = true;
        state.inflight -= 1;
        state.inflightPixels -= pixels;
        if (state.inflight === 0) idleWaiters.splice(0).forEach((resolve) => resolve());
      },
    };
  }

  return state;
}

module.exports = { createAdmission };
