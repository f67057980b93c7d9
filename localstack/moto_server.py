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

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    os.environ.setdefault("MOTO_PORT", str(port))

    app = DomainDispatcherApplication(create_backend_app)
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
