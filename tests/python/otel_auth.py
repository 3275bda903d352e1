"""Exports logs with the OpenTelemetry Python SDK's OTLP exporters (gRPC and HTTP/protobuf)
to Sluice with `require_token` on: first without credentials (refused), then with the token in
the exporters' `headers` setting, as the SDK documents; prints what the SDK reported.

usage: otel_auth.py GRPC_HOST:PORT HTTP_HOST:PORT TOKEN COUNT
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
export("otlpanongrpc", GrpcLogs(endpoint=f"http://{grpc_address}", insecure=True), 3)
export("otlpanonhttp", HttpLogs(endpoint=f"http://{http_address}/v1/logs"), 3)
export("otlpauthgrpc", GrpcLogs(endpoint=f"http://{grpc_address}", insecure=True, headers=headers), count)
export("otlpauthhttp", HttpLogs(endpoint=f"http://{http_address}/v1/logs", headers=headers), count)
print(json.dumps(report))
