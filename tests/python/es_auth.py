"""Sends documents to Sluice's `_bulk` source, with `require_token` on, through the real
Elasticsearch and OpenSearch Python clients configured with credentials the way each
documents it, and prints what happened as JSON.

usage: es_auth.py HOST:PORT INGEST_TOKEN READ_ONLY_TOKEN
"""

import json
import sys

from elasticsearch import AuthenticationException, AuthorizationException, Elasticsearch
from elasticsearch import helpers as es_helpers
from opensearchpy import OpenSearch
from opensearchpy import helpers as os_helpers

address, token, read_only = sys.argv[1], sys.argv[2], sys.argv[3]
token_id = token.split("_")[1]
report = {}


def actions(tag, count):
    for n in range(count):
        yield {
            "_index": "secured",
            "_source": {"@timestamp": "2026-11-27T08:00:00.000Z", "message": f"{tag} n{n} secured"},
        }


def attempt(name, client):
    try:
        ok, errors = es_helpers.bulk(client, actions(name, 100), raise_on_error=False)
        report[name] = {"ok": ok, "errors": len(errors)}
    except AuthenticationException:
        report[name] = "401"
    except AuthorizationException:
        report[name] = "403"


url = f"http://{address}"
# api_key=(id, key): the client sends ApiKey base64(id:key).
attempt("apikey", Elasticsearch(url, api_key=(token_id, token), request_timeout=60))
# basic_auth=(user, password): any user, the token as password.
attempt("basic", Elasticsearch(url, basic_auth=("sluice", token), request_timeout=60))
attempt("bearer", Elasticsearch(url, bearer_auth=token, request_timeout=60))
attempt("anonymous", Elasticsearch(url, request_timeout=60))
attempt("wrong", Elasticsearch(url, api_key=(token_id, token[:-2] + "xx"), request_timeout=60))
attempt("read_only", Elasticsearch(url, api_key=(token_id, read_only), request_timeout=60))

host, port = address.rsplit(":", 1)
opensearch = OpenSearch(
    hosts=[{"host": host, "port": int(port)}], http_auth=("sluice", token), use_ssl=False, timeout=60
)
ok, errors = os_helpers.bulk(opensearch, actions("opensearch", 100), raise_on_error=False)
report["opensearch"] = {"ok": ok, "errors": len(errors)}

print(json.dumps(report))
