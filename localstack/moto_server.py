"""Start moto's server for Charlie's local cloud, with the quirks Charlie trips over patched.

Usage: python moto_server.py [--host 127.0.0.1] [--port 0] [--exit-with-parent]

Port 0 (the default) binds a free port chosen by the kernel, with no window in which another
process could take it; the first line printed to stdout is `READY http://HOST:PORT` once the
server accepts connections. Stops on SIGTERM/SIGINT.

Patches (each one a moto behaviour that differs from AWS and breaks Terraform or the runner):
1. SQS returns `RedrivePolicy` as JSON with spaces after separators; AWS returns it compact.
   Terraform then shows a whitespace diff on every plan. We serialise SQS attributes compactly.
2. `GET /moto-api/data.json` fails with 500 as soon as a Lambda function exists and Docker is
   absent (reading some Lambda attributes tries to reach Docker). We skip attributes that raise
   and accept `?service=NAME` to return one service only (the full dump is megabytes).

3. TransactWriteItems deep-copies every table it touches before it starts (to roll back on a
   cancel): 90 s per call on a table of 20,000 rows, where AWS takes milliseconds. We snapshot
   the table's index of items (references) and deep-copy only the items the transaction names.
4. Writes to a table are not atomic against each other under the threaded server: two
   TransactWriteItems (or conditional puts) on the same key can both pass their condition. We
   run every DynamoDB write one at a time, as DynamoDB's per-item isolation guarantees.

Added: with CHARLIE_SERIAL_REQUESTS set, AWS requests are handled one at a time (moto's recorder
and replay then agree on ids, see `_RequestCounter`).

Added: every request is counted by service and operation with the time the server spent on it,
read at `GET /_charlie/requests` (with the server's CPU seconds) and zeroed by
`POST /_charlie/requests/reset`, so a load run can say what it asked of AWS and how much of its
wall time the emulator took.
"""

import argparse
import json
import os
import signal
import socket
import sys


class _CompactJson:
    """Stands in for the `json` module inside moto.sqs.models: compact dumps, as AWS does."""

    loads = staticmethod(json.loads)
    JSONDecodeError = json.JSONDecodeError

    @staticmethod
    def dumps(obj, **kwargs):
        kwargs.setdefault("separators", (",", ":"))
        return json.dumps(obj, **kwargs)


def _patch_sqs():
    import moto.sqs.models as sqs_models

    sqs_models.json = _CompactJson


def _patch_s3_complete_multipart():
    """moto 5.2.1 names CompleteMultipartUpload's reply <CompleteMultipartUploadResponse>; S3 (and
    the AWS SDK, which refuses anything else) names it <CompleteMultipartUploadResult>."""
    from moto.s3.responses import S3Response

    serialized = S3Response.serialized

    def patched(self, action_result):
        status, headers, body = serialized(self, action_result)
        if self.data.get("Action") == "CompleteMultipartUpload":
            if isinstance(body, bytes):
                body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
            elif isinstance(body, str):
                body = body.replace("CompleteMultipartUploadResponse", "CompleteMultipartUploadResult")
        return status, headers, body

    S3Response.serialized = patched


def _patch_dynamodb_writes():
    import copy as copying
    import threading
    from collections import defaultdict

    import moto.dynamodb.models as models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    writes = threading.RLock()
    named = threading.local()  # the (table, hash, range) keys of the transaction in progress

    def snapshot(table):
        snap = copying.copy(table)
        snap.items = defaultdict(dict)
        for hash_value, held in table.items.items():
            snap.items[hash_value] = dict(held) if table.has_range_key else held
        for name, hash_value, range_value in getattr(named, "keys", ()):
            if name != table.name:
                continue
            item = table.get_item(hash_value, range_value)
            if item is None:
                continue
            if table.has_range_key:
                snap.items[hash_value][range_value] = copying.deepcopy(item)
            else:
                snap.items[hash_value] = copying.deepcopy(item)
        return snap

    class _Copy:
        copy = staticmethod(copying.copy)

        @staticmethod
        def deepcopy(obj, memo=None):
            if isinstance(obj, Table) and getattr(named, "keys", None) is not None:
                # moto backs the table up once per item; the first backup serves them all
                # (all are taken before the transaction writes anything).
                taken = named.snapshots.get(obj.name)
                if taken is None:
                    taken = named.snapshots[obj.name] = snapshot(obj)
                return taken
            return copying.deepcopy(obj, memo)

    models.copy = _Copy

    backend = models.DynamoDBBackend
    transact = backend.transact_write_items

    def transact_write_items(self, transact_items):
        keys = []
        for entry in transact_items:
            for op_type, op in entry.items():
                try:
                    table = self.get_table(op["TableName"])
                    attrs = op["Item"] if op_type == "Put" else op["Key"]
                    hash_value = DynamoType(attrs[table.hash_key_attr])
                    range_value = (
                        DynamoType(attrs[table.range_key_attr]) if table.has_range_key else None
                    )
                except Exception:  # malformed: moto's own validation answers it
                    continue
                keys.append((table.name, hash_value, range_value))
        with writes:
            named.keys = keys
            named.snapshots = {}
            try:
                return transact(self, transact_items)
            finally:
                named.keys = None
                named.snapshots = {}

    backend.transact_write_items = transact_write_items
    for name in ("put_item", "update_item", "delete_item"):
        original = getattr(backend, name)

        def serialised(self, *args, _original=original, **kwargs):
            with writes:
                return _original(self, *args, **kwargs)

        setattr(backend, name, serialised)


def _patch_model_data():
    from urllib.parse import parse_qs, urlparse

    from moto.moto_api._internal.responses import MotoAPIResponse

    def model_data(self, request, full_url, headers):
        from moto.core.model_instances import model_data as tracked

        wanted = parse_qs(urlparse(full_url).query).get("service")
        results = {}
        for service in sorted(tracked):
            if wanted and service not in wanted:
                continue
            results[service] = {}
            for name in sorted(tracked[service]):
                instances = []
                for instance in tracked[service][name].instances_tracked:
                    fields = {}
                    for attr in dir(instance):
                        if attr.startswith("_"):
                            continue
                        try:
                            value = getattr(instance, attr)
                            json.dumps(value)
                        except Exception:  # noqa: BLE001 - unreadable attributes are skipped
                            continue
                        fields[attr] = value
                    instances.append(fields)
                results[service][name] = instances
        return 200, {"Content-Type": "application/json"}, json.dumps(results)

    MotoAPIResponse.model_data = model_data


class _RequestCounter:
    """WSGI middleware: counts requests by `service.Operation` and the seconds spent on each."""

    def __init__(self, app):
        import threading

        self.app = app
        self.lock = threading.Lock()
        self.counts = {}
        # CHARLIE_SERIAL_REQUESTS: one AWS request at a time (moto's own routes aside), so that
        # moto's seeded random ids are drawn in the order requests are recorded, and a replay
        # of the recording makes the same ids (`charlie-local up` reusing an apply).
        self.serial = threading.Lock() if os.environ.get("CHARLIE_SERIAL_REQUESTS") else None

    @staticmethod
    def operation(environ):
        from urllib.parse import parse_qs

        target = environ.get("HTTP_X_AMZ_TARGET", "")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        service = "unknown"
        if "Credential=" in auth:
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
            if len(scope) >= 4:
                service = scope[3]
        if target:
            return f"{service}.{target.rsplit('.', 1)[-1]}"
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if "Action" in query:
            return f"{service}.{query['Action'][0]}"
        method = environ.get("REQUEST_METHOD", "")
        if service == "s3":
            path = environ.get("PATH_INFO", "/").strip("/")
            has_key = "/" in path
            if "uploads" in query:
                return "s3.CreateMultipartUpload"
            if "uploadId" in query:
                if method == "PUT":
                    return "s3.UploadPart"
                return {"POST": "s3.CompleteMultipartUpload", "DELETE": "s3.AbortMultipartUpload"}.get(method, "s3.ListParts")
            if method == "PUT" and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
                return "s3.CopyObject"
            names = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}
            if has_key and method in names:
                return f"s3.{names[method]}"
            return f"s3.{method} bucket"
        return f"{service}.{method} {environ.get('PATH_INFO', '')[:40]}"

    def __call__(self, environ, start_response):
        import time

        path = environ.get("PATH_INFO", "")
        if path == "/_charlie/requests":
            with self.lock:
                body = json.dumps({"cpu_seconds": time.process_time(), "requests": self.counts}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/_charlie/requests/reset":
            with self.lock:
                self.counts = {}
            start_response("204 No Content", [])
            return [b""]
        op = self.operation(environ)
        started = time.perf_counter()
        try:
            # Bodies are small or streamed; the time is the server's until the body is built.
            if self.serial is not None and not path.startswith("/moto-api/"):
                with self.serial:
                    return self.app(environ, start_response)
            return self.app(environ, start_response)
        finally:
            spent = time.perf_counter() - started
            with self.lock:
                entry = self.counts.setdefault(op, {"count": 0, "seconds": 0.0})
                entry["count"] += 1
                entry["seconds"] += spent


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when stdin reaches end of file (the parent closed its pipe or died)",
    )
    args = parser.parse_args()

    _patch_sqs()
    _patch_s3_complete_multipart()
    _patch_model_data()
    _patch_dynamodb_writes()

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    os.environ.setdefault("MOTO_PORT", str(port))

    app = _RequestCounter(DomainDispatcherApplication(create_backend_app))
    server = make_server(args.host, port, app, threaded=True, fd=sock.fileno())

    def stop(_signum, _frame):
        # shutdown() waits for serve_forever to return, so it must not run on its thread.
        import threading

        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.exit_with_parent:
        import threading

        def watch_parent():
            sys.stdin.read()  # returns at EOF: the parent is gone
            server.shutdown()

        threading.Thread(target=watch_parent, daemon=True).start()
    print(f"READY http://{args.host}:{port}", flush=True)
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
