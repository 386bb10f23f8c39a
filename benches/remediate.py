#!/usr/bin/env python3
"""Remediation benchmark: Firebreak beside Cloud Custodian, deactivating N exposed IAM keys.

Usage (from the repository root, after `cargo build --release` and with the two venvs that
`benches/remediate.sh` creates):

    benches/remediate.sh [N ...]

For each N and each added round-trip latency (0 ms, then 50 ms) this script:

1. starts moto (`moto.server`) on loopback and a counting proxy in front of it that records
   every AWS call's operation and can add a fixed delay to each (a stand-in for the network
   round trip to real AWS);
2. seeds N IAM users with one active access key each (straight to moto, not counted);
3. Firebreak: `firebreak run` on N trufflehog findings (each derived from the real trufflehog
   fixture, only the key id, its base64 `Raw` and the account/ARN changed, as the tests do)
   with a playbook whose one step is `aws.iam.deactivate-access-key`, through the proxy, with
   its per-account AWS rate limit off (`FIREBREAK_AWS__RATE_LIMIT_PER_SECOND=0`: the default of
   10 calls/s would bound the run, not measure it; Cloud Custodian has no such limit);
4. resets moto, seeds again, and runs Cloud Custodian's `remove-keys` (`disable: true`,
   `matched: true`) on the same users through the proxy;
5. checks that every key ended Inactive and prints seconds, AWS calls, calls per key and the
   ratio, as a table and as one JSON line per run.

Nothing here is a test: it measures, it never asserts timing.
"""

import base64
import collections
import http.client
import http.server
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import boto3

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/fixtures/findings/trufflehog/trufflehog-v3-git-aws-canary.jsonl"
ACCOUNT = "123456789012"
REGION = "us-east-1"
CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {seconds}s")


class Proxy:
    """A threaded HTTP proxy to moto that counts operations and can add latency."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.lock = threading.Lock()
        self.ops = collections.Counter()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_any(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.count(self.path, self.headers, body)
                if proxy.delay:
                    time.sleep(proxy.delay)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, path, headers, body):
        op = None
        target = headers.get("x-amz-target")
        if target:
            op = target.split(".")[-1]
        else:
            query = urllib.parse.urlparse(path).query
            for source in (query, body.decode("utf-8", "replace")):
                action = urllib.parse.parse_qs(source).get("Action")
                if action:
                    op = action[0]
                    break
        with self.lock:
            self.ops[op or f"{path.split('?')[0]}"] += 1

    def take(self):
        with self.lock:
            ops, self.ops = self.ops, collections.Counter()
        return ops


def seed(iam, n):
    keys = []
    for i in range(n):
        user = f"bench-{i:05d}"
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
        keys.append((user, key))
    return keys


def all_inactive(iam, keys):
    for user, key in keys:
        meta = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        status = {m["AccessKeyId"]: m["Status"] for m in meta}
        if status.get(key) != "Inactive":
            return False
    return True


def findings_file(keys, path):
    line = FIXTURE.read_text().splitlines()[0]
    with open(path, "w") as out:
        for user, key in keys:
            v = json.loads(line)
            # Derived from the real trufflehog record: only the key and where it belongs change.
            v["Redacted"] = key
            v["Raw"] = base64.b64encode(key.encode()).decode()
            v["ExtraData"]["account"] = ACCOUNT
            v["ExtraData"]["arn"] = f"arn:aws:iam::{ACCOUNT}:user/{user}"
            out.write(json.dumps(v) + "\n")


def run_firebreak(binary, keys, proxy_url, work, concurrency):
    findings = work / "findings.jsonl"
    findings_file(keys, findings)
    books = work / "playbooks"
    books.mkdir(exist_ok=True)
    (books / "deactivate.yaml").write_text(
        "name: deactivate-exposed-key\n"
        "match: {class: credential-exposure}\n"
        "steps:\n"
        "  - action: aws.iam.deactivate-access-key\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(work),
        **CREDS,
        "FIREBREAK_AWS__ENDPOINT_URL": proxy_url,
        "FIREBREAK_AWS__REGION": REGION,
        "FIREBREAK_STORE__URL": f"sqlite://{work / 'ledger.db'}",
        "FIREBREAK_ENGINE__CONCURRENCY": str(concurrency),
        # No per-account AWS rate limit (aws.rate_limit_per_second, 10/s by default): the
        # comparison measures calls and round trips, and Cloud Custodian has no such limit.
        # With the default, N keys would take at least about N/5 s whatever else happened.
        "FIREBREAK_AWS__RATE_LIMIT_PER_SECOND": "0",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [binary, "run", "--finding", str(findings), "--playbooks", str(books), "--format", "json", "-q"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"firebreak run failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def run_custodian(custodian, proxy_url, work):
    policy = work / "custodian.yml"
    policy.write_text(
        "policies:\n"
        "  - name: deactivate-exposed-keys\n"
        "    resource: iam-user\n"
        "    filters:\n"
        "      - type: access-key\n"
        "        key: Status\n"
        "        value: Active\n"
        "    actions:\n"
        "      - type: remove-keys\n"
        "        disable: true\n"
        "        matched: true\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(work),
        **CREDS,
        "AWS_ENDPOINT_URL": proxy_url,
    }
    started = time.perf_counter()
    done = subprocess.run(
        [custodian, "run", "-s", str(work / "out"), "--region", REGION, str(policy)],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"custodian failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [100, 1000]
    binary = os.environ.get("FIREBREAK_BIN", str(ROOT / "target/release/firebreak"))
    custodian = os.environ.get("CUSTODIAN_BIN", str(ROOT / ".venv-c7n/bin/custodian"))
    delays = [float(d) for d in os.environ.get("BENCH_DELAYS_MS", "0,50").split(",")]
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "32"))
    moto_port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(moto_port)
        moto_url = f"http://127.0.0.1:{moto_port}"
        proxy = Proxy(moto_port)
        proxy_url = f"http://127.0.0.1:{proxy.port}"
        iam = boto3.client("iam", endpoint_url=moto_url, region_name=REGION,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        rows = []
        for delay_ms in delays:
            proxy.delay = delay_ms / 1000.0
            for n in sizes:
                result = {"n": n, "added_latency_ms": delay_ms}
                for tool in ("firebreak", "custodian"):
                    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).read()
                    keys = seed(iam, n)
                    proxy.take()
                    with tempfile.TemporaryDirectory() as tmp:
                        work = pathlib.Path(tmp)
                        if tool == "firebreak":
                            seconds = run_firebreak(binary, keys, proxy_url, work, concurrency)
                        else:
                            seconds = run_custodian(custodian, proxy_url, work)
                    ops = proxy.take()
                    calls = sum(ops.values())
                    ok = all_inactive(iam, keys)
                    result[tool] = {
                        "seconds": round(seconds, 3),
                        "calls": calls,
                        "calls_per_key": round(calls / n, 2),
                        "all_inactive": ok,
                        "ops": dict(ops.most_common()),
                    }
                result["custodian_over_firebreak"] = round(
                    result["custodian"]["seconds"] / result["firebreak"]["seconds"], 2
                )
                rows.append(result)
                print(json.dumps(result), flush=True)
        print()
        print(f"{'N':>6} {'latency':>8} {'firebreak s':>12} {'calls/key':>10} {'custodian s':>12} {'calls/key':>10} {'ratio':>6}")
        for r in rows:
            f, c = r["firebreak"], r["custodian"]
            print(f"{r['n']:>6} {r['added_latency_ms']:>6.0f}ms {f['seconds']:>12.2f} {f['calls_per_key']:>10.2f} "
                  f"{c['seconds']:>12.2f} {c['calls_per_key']:>10.2f} {r['custodian_over_firebreak']:>6.2f}")
        if not all(r[t]["all_inactive"] for r in rows for t in ("firebreak", "custodian")):
            raise SystemExit("a run left an exposed key active")
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
