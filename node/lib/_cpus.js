'use strict';
// How many CPUs this process may really use: the affinity mask (libuv's
// availableParallelism reads it), capped by a cgroup CPU quota (mirrors mullama/_cpus.py).

const fs = require('node:fs');
const os = require('node:os');

function cgroupQuota() {
  try { // cgroup v2: "max 100000" or "200000 100000"
    const [quota, period] = fs.readFileSync('/sys/fs/cgroup/cpu.max', 'utf8').trim().split(/\s+/);
    if (quota !== 'max') return Number(quota) / Number(period);
  } catch { /* no cgroup v2 quota */ }
  try { // cgroup v1
    const q = Number(fs.readFileSync('/sys/fs/cgroup/cpu/cpu.cfs_quota_us', 'utf8'));
    const p = Number(fs.readFileSync('/sys/fs/cgroup/cpu/cpu.cfs_period_us', 'utf8'));
    if (q > 0 && p > 0) return q / p;
  } catch { /* no cgroup v1 quota */ }
  return null;
}

function usableCpus() {
  let n = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  const quota = cgroupQuota();
  if (quota !== null && Number.isFinite(quota)) n = Math.min(n, Math.max(1, Math.ceil(quota)));
  return Math.max(1, n || 1);
}

module.exports = { usableCpus };
