'use strict';
// The worker's live state: draining or not, and how many /process requests and declared
// pixels are in flight. A request holds its slot and its pixels until its work has ended and
// its reply is fully written (or its connection is gone), so memory is bounded by these two
// numbers. app.js admits requests into it; server.js drains it.

/**
 * `enter()` takes a slot (null when full), `slot.claimPixels(n)` adds the request's pixels
 * (false when that would pass maxInflightPixels while something else is in flight),
 * `slot.leave()` gives both back (idempotent), `slot.heldBy(n)` gives a release function
 * that leaves on its n-th call. `whenIdle()` resolves when nothing is in flight.
 */
function createWorkerState({ maxInflight, maxInflightPixels }) {
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
      return newSlot(state, maxInflightPixels, () => idleWaiters.splice(0).forEach((resolve) => resolve()));
    },
  };
  return state;
}

function newSlot(state, maxInflightPixels, onIdle) {
  let pixels = 0;
  let left = false;
  const slot = {
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
      if (state.inflight === 0) onIdle();
    },
    heldBy(holders) {
      let remaining = holders;
      return () => {
        remaining -= 1;
        if (remaining === 0) slot.leave();
      };
    },
  };
  return slot;
}

module.exports = { createWorkerState };
