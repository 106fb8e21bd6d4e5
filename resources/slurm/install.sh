#!/usr/bin/env bash
# Install Debian's SLURM (slurm-wlm) and munge for the one-node cluster the
# SLURM test starts (testkit/slidestock_testkit/slurmlocal.py). Needs root
# and apt; without them it says why and exits 0, and the test skips itself
# with the same reason.
set -uo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-slurm: not root or no apt-get; the SLURM test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-slurm: apt-get install slurm-wlm munge" >&2
apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
    || echo "install-slurm: apt-get failed; the SLURM test will be skipped" >&2
