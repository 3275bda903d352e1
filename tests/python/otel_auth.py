"""Exports logs with the OpenTelemetry Python SDK's OTLP exporters (gRPC and HTTP/protobuf)
to Sluice with `require_token` on: first without credentials (refused), then with the token in
the exporters' `headers` setting, as the SDK documents; prints what the SDK reported.

usage: otel_auth.py GRPC_HOST:PORT HTTP_HOST:PORT TOKEN COUNT [CA_FILE]

With CA_FILE, over TLS: the gRPC exporter with channel credentials of that CA, the HTTP one
with it as its `certificate_file`, as the SDK documents.
"""

import json
import logging
import sys

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

grpc_address, http_address, token, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ca = sys.argv[5] if len(sys.argv) > 5 else None
report = {}


def export(name, exporter, lines):
    provider = LoggerProvider(resource=Resource.create({"service.name": f"otel-auth-{name}"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logging.getLogger(f"auth.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))
    for n in range(lines):
        logger.info("%s n%d", name, n)
    report[name] = provider.force_flush(30_000)
    provider.shutdown()


headers = {"authorization": f"Bearer {token}"}
if ca:
    import os

    import grpc

    # `requests` (under the HTTP exporter) lets REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE, where a
    # machine sets them, override the exporter's own certificate_file: leave the CA the
    # exporter is given as the one it uses.
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(variable, None)

    with open(ca, "rb") as file:
        credentials = grpc.ssl_channel_credentials(root_certificates=file.read())

    def grpc_exporter(**settings):
        return GrpcLogs(endpoint=f"https://{grpc_address}", credentials=credentials, **settings)

    def http_exporter(**settings):
        return HttpLogs(endpoint=f"https://{http_address}/v1/logs", certificate_file=ca, **settings)

else:

    def grpc_exporter(**settings):
        return GrpcLogs(endpoint=f"http://{grpc_address}", insecure=True, **settings)

    def http_exporter(**settings):
        return HttpLogs(endpoint=f"http://{http_address}/v1/logs", **settings)


export("otlpanongrpc", grpc_exporter(), 3)
export("otlpanonhttp", http_exporter(), 3)
export("otlpauthgrpc", grpc_exporter(headers=headers), count)
export("otlpauthhttp", http_exporter(headers=headers), count)
print(json.dumps(report))
