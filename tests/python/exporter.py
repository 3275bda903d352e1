"""A Prometheus exporter made with the reference Python client (prometheus_client), serving
known values until it is killed.

usage: exporter.py PORT
"""

import sys
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

orders = Counter("orders", "Orders taken.", ["shop"])
orders.labels(shop="a").inc(7)
orders.labels(shop="b").inc(2)
Gauge("queue_depth", "Jobs waiting.").set(42.5)
latency = Histogram("latency_seconds", "Request latency.", buckets=[0.1, 1.0])
for value in (0.05, 0.5, 2.0):
    latency.observe(value)

start_http_server(int(sys.argv[1]), addr="127.0.0.1")
print("ready", flush=True)
while True:
    time.sleep(60)
