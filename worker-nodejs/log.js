'use strict';
// JSON lines on stdout, one object per event. Callers never pass the token.

const SERVICE = 'worker-nodejs';
const RANKS = { debug: 10, info: 20, warning: 30, error: 40 };

/**
 * A logger with debug/info/warning/error(msg, fields). `write` is injectable for tests;
 * by default lines go to stdout.
 */
function createLogger({ level = 'info', write = (line) => process.stdout.write(line) } = {}) {
  const threshold = RANKS[level] ?? RANKS.info;
  const emit = (lvl, msg, fields) => {
    if (RANKS[lvl] < threshold) return;
    const record = { time: new Date().toISOString(), level: lvl, service: SERVICE, msg, ...fields };
    write(`${JSON.stringify(record)}\n`);
  };
  return {
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warning: (msg, fields) => emit('warning', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
  };
}

module.exports = { createLogger, SERVICE };
