"""Sends documents to Sluice's `_bulk` source with the real Elasticsearch and OpenSearch
Python clients, as a shipper would, and prints what the clients reported as JSON.

usage: es_clients.py HOST:PORT COUNT
"""

import json
import sys

from elasticsearch import Elasticsearch, helpers as es_helpers
from opensearchpy import OpenSearch, helpers as os_helpers

address, count = sys.argv[1], int(sys.argv[2])
report = {}

# The Elasticsearch client: its product check (GET / and the X-Elastic-Product header) must
# pass, and http_compress sends the bodies gzip-encoded.
es = Elasticsearch(f"http://{address}", http_compress=True, request_timeout=60)
report["info"] = es.info()["version"]["number"]


def es_actions():
    for n in range(count):
        yield {
            "_index": "shop",
            "_id": f"es-{n}",
            "_source": {
                "@timestamp": "2026-11-27T08:00:00.000Z",
                "message": f"esline n{n} checkout done",
                "service": {"name": "checkout"},
                "level": "error" if n % 10 == 0 else "info",
                "order": n,
            },
        }
    # One document that cannot be read as a log: it fails alone.
    yield {"_index": "shop", "_source": {"@timestamp": "not a date", "message": "esline bad"}}


ok, errors = es_helpers.bulk(es, es_actions(), chunk_size=250, raise_on_error=False)
report["es_ok"] = ok
report["es_errors"] = [error["index"]["error"]["type"] for error in errors]

# OpenSearch's client, plain (no compression), create actions into another index.
host, port = address.rsplit(":", 1)
client = OpenSearch(hosts=[{"host": host, "port": int(port)}], use_ssl=False, timeout=60)
opensearch_actions = (
    {
        "_op_type": "create",
        "_index": "inventory",
        "_source": {"msg": f"osline n{n} restocked", "sku": f"sku-{n}", "ts": 1795766400000 + n},
    }
    for n in range(count)
)
ok, errors = os_helpers.bulk(client, opensearch_actions, chunk_size=300, raise_on_error=False)
report["os_ok"] = ok
report["os_errors"] = len(errors)

print(json.dumps(report))
