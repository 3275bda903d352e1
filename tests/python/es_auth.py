"""Sends documents to Sluice's `_bulk` source, with `require_token` on, through the real
Elasticsearch and OpenSearch Python clients configured with credentials the way each
documents it, and prints what happened as JSON.

usage: es_auth.py HOST:PORT INGEST_TOKEN READ_ONLY_TOKEN [CA_FILE]

With CA_FILE, over HTTPS, the clients verifying the server with that CA (`ca_certs`).
"""

import json
import sys

from elasticsearch import AuthenticationException, AuthorizationException, Elasticsearch
from elasticsearch import helpers as es_helpers
from opensearchpy import OpenSearch
from opensearchpy import helpers as os_helpers

address, token, read_only = sys.argv[1], sys.argv[2], sys.argv[3]
ca = sys.argv[4] if len(sys.argv) > 4 else None
tls = {"ca_certs": ca, "verify_certs": True} if ca else {}
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


url = f"{'https' if ca else 'http'}://{address}"
# api_key=(id, key): the client sends ApiKey base64(id:key).
attempt("apikey", Elasticsearch(url, api_key=(token_id, token), request_timeout=60, **tls))
# basic_auth=(user, password): any user, the token as password.
attempt("basic", Elasticsearch(url, basic_auth=("sluice", token), request_timeout=60, **tls))
attempt("bearer", Elasticsearch(url, bearer_auth=token, request_timeout=60, **tls))
attempt("anonymous", Elasticsearch(url, request_timeout=60, **tls))
attempt("wrong", Elasticsearch(url, api_key=(token_id, token[:-2] + "xx"), request_timeout=60, **tls))
attempt("read_only", Elasticsearch(url, api_key=(token_id, read_only), request_timeout=60, **tls))

host, port = address.rsplit(":", 1)
opensearch = OpenSearch(
    hosts=[{"host": host, "port": int(port)}],
    http_auth=("sluice", token),
    use_ssl=bool(ca),
    timeout=60,
    **tls,
)
ok, errors = os_helpers.bulk(opensearch, actions("opensearch", 100), raise_on_error=False)
report["opensearch"] = {"ok": ok, "errors": len(errors)}

print(json.dumps(report))
