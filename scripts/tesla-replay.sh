#!/usr/bin/env bash
# Replays the 2018 Tesla breach against local peers (moto, the Kubernetes and GitHub emulators)
# with `firebreak serve` and the shipped playbooks: the integration test tests/it/tesla.rs,
# run on its own with its timings printed. To show the exposed key deleted after its 24 h grace
# period it stops `serve`, moves that timer's due time to now in the store and starts it again.
# Needs what the tests need (see .ci/run): cargo,
# cargo-nextest and moto (`.venv-moto`, created here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-moto/bin/python ] || python3 -m venv .venv-moto
.venv-moto/bin/python -c 'import moto.server' 2>/dev/null || .venv-moto/bin/pip install -q 'moto[server]>=5.1,<6'
exec cargo nextest run --locked --no-capture -E 'test(/^tesla::/)' "$@"
