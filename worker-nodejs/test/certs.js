'use strict';
// Throwaway certificate authorities for the TLS tests, made with the openssl CLI (Node can make
// keys but not certificates): ECDSA P-256 like the fleet's CA (scripts/testkit/tls.py).

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

// The one DNS name every fleet server certificate carries (scripts/testkit/tls.py FLEET_TLS_NAME).
const FLEET_TLS_NAME = 'workers.stripes.internal';

const openssl = (args, cwd) =>
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 });

/** A fresh temporary folder, removed by `cleanup()`. */
function tempFolder(prefix = 'worker-tls-') {
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { folder, cleanup: () => fs.rmSync(folder, { recursive: true, force: true }) };
}

/**
 * A CA in `folder` (files `<stem>.crt`, `<stem>.key`); `issue(stem, { name, client })` writes a
 * leaf `<stem>.crt` / `<stem>.key` it signs and returns their paths. All PEM.
 */
function authority(folder, stem = 'ca') {
  const caCert = path.join(folder, `${stem}.crt`);
  const caKey = path.join(folder, `${stem}.key`);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(
    ['req', '-x509', ...ec, '-keyout', caKey, '-out', caCert, '-days', '30', '-subj', `/CN=${stem} test CA`],
    folder,
  );
  const issue = (leaf, { name = FLEET_TLS_NAME, client = false } = {}) => {
    const cert = path.join(folder, `${leaf}.crt`);
    const key = path.join(folder, `${leaf}.key`);
    const csr = path.join(folder, `${leaf}.csr`);
    const ext = path.join(folder, `${leaf}.ext`);
    fs.writeFileSync(ext, `subjectAltName=DNS:${name}\nextendedKeyUsage=${client ? 'clientAuth' : 'serverAuth'}\n`);
    openssl(['req', ...ec, '-keyout', key, '-out', csr, '-subj', `/CN=${name}`], folder);
    const sign = ['-CA', caCert, '-CAkey', caKey, '-CAcreateserial', '-days', '30', '-extfile', ext];
    openssl(['x509', '-req', '-in', csr, ...sign, '-out', cert], folder);
    return { cert, key };
  };
  return { cert: caCert, issue };
}

module.exports = { FLEET_TLS_NAME, tempFolder, authority };
