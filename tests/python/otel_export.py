"""Exports logs and metrics to Sluice with the OpenTelemetry Python SDK and its OTLP
exporters (gRPC and HTTP/protobuf), as an instrumented service would, then prints what the SDK
reported.

usage: otel_export.py GRPC_HOST:PORT HTTP_HOST:PORT COUNT
"""

import json
import logging
import sys

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

grpc_address, http_address, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
report = {}

for transport, exporter in (
    ("grpc", GrpcLogs(endpoint=f"http://{grpc_address}", insecure=True)),
    ("http", HttpLogs(endpoint=f"http://{http_address}/v1/logs")),
):
    provider = LoggerProvider(resource=Resource.create(
        {"service.name": f"otel-{transport}", "service.instance.id": "pod-7",
         "deployment.environment": "test"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = logging.getLogger(f"payments.{transport}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))
    for n in range(count):
        if n % 10 == 0:
            logger.error("otlpline%s n%d payment failed", transport, n, extra={"order": n})
        else:
            logger.info("otlpline%s n%d payment accepted", transport, n, extra={"order": n})
    report[f"{transport}_logs_flushed"] = provider.force_flush(30_000)
    provider.shutdown()

for transport, exporter in (
    ("grpc", GrpcMetrics(endpoint=f"http://{grpc_address}", insecure=True)),
    ("http", HttpMetrics(endpoint=f"http://{http_address}/v1/metrics")),
):
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create(
        {"service.name": f"otel-{transport}"}))
    meter = provider.get_meter("payments")
    orders = meter.create_counter("orders", unit="1")
    orders.add(5, {"shop": "a"})
    orders.add(2, {"shop": "a"})
    meter.create_up_down_counter("queue").add(-3)
    latency = meter.create_histogram("latency", unit="ms")
    for value in (3, 30, 300, 40):
        latency.record(value, {"route": "/pay"})
    report[f"{transport}_metrics_flushed"] = provider.force_flush(30_000)
    provider.shutdown()

print(json.dumps(report))
