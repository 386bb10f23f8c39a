#!/usr/bin/env bash
# Firebreak beside Cloud Custodian: deactivate N exposed IAM keys on moto, straight and through
# a 50 ms round-trip proxy (see benches/remediate.py). One command from a clean clone:
#   benches/remediate.sh            # N = 100 and 1000
#   benches/remediate.sh 100        # N = 100 only
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-moto/bin/python ] || python3 -m venv .venv-moto
.venv-moto/bin/python -c 'import moto.server' 2>/dev/null || .venv-moto/bin/pip install -q 'moto[server]>=5.1,<6'
[ -x .venv-c7n/bin/custodian ] || { python3 -m venv .venv-c7n && .venv-c7n/bin/pip install -q c7n; }
cargo build --release --locked -q
exec .venv-moto/bin/python benches/remediate.py "$@"
