#!/usr/bin/env bash
# Firebreak beside Cloud Custodian: deactivate N exposed IAM keys on moto, straight and through
# a 50 ms round-trip proxy (see benches/remediate.py). One command from a clean clone:
#   benches/remediate.sh            # N = 100 and 1000
#   benches/remediate.sh 100        # N = 100 only
# Firebreak runs with its per-account AWS rate limit off (FIREBREAK_AWS__RATE_LIMIT_PER_SECOND=0,
# set in remediate.py): the default of 10 calls/s per account would bound the result rather
# than measure it, and Cloud Custodian has no such limit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-moto/bin/python ] || python3 -m venv .venv-moto
.venv-moto/bin/python -c 'import moto.server' 2>/dev/null || .venv-moto/bin/pip install -q 'moto[server]>=5.1,<6'
[ -x .venv-c7n/bin/custodian ] || { python3 -m venv .venv-c7n && .venv-c7n/bin/pip install -q c7n; }
cargo build --release --locked -q
exec .venv-moto/bin/python benches/remediate.py "$@"
