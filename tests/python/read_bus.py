"""Reads Sluice's Kafka topic with a client that is not Sluice's (confluent-kafka) and decodes
each record by the documented format (docs/bus-format.md), without generated code: a few lines
of protobuf wire-format decoding are enough.

    read_bus.py BROKERS TOPIC COUNT

Prints one JSON object per log envelope until COUNT were printed (or 60 s passed):
{"partition", "offset", "key", "agent_id", "sequence", "timestamp", "source_id", "instance_id",
 "type", "message", "tags"}.
"""

import json
import sys
import time
import uuid

from confluent_kafka import Consumer


def fields(data):
    """Yields (field number, wire type, value) of one protobuf message."""
    position = 0

    def varint():
        nonlocal position
        result, shift = 0, 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    while position < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 1:
            yield number, wire, data[position:position + 8]
            position += 8
        elif wire == 2:
            length = varint()
            yield number, wire, data[position:position + length]
            position += length
        elif wire == 5:
            yield number, wire, data[position:position + 4]
            position += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def signed(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def envelope(data):
    out = {"timestamp": 0, "source_id": "", "instance_id": "", "type": None, "message": None, "tags": {}}
    for number, _, value in fields(data):
        if number == 1:
            out["timestamp"] = signed(value)
        elif number == 2:
            out["source_id"] = value.decode()
        elif number == 8:
            out["instance_id"] = value.decode()
        elif number == 9:  # map<string, string> entry: key = 1, value = 2
            entry = {n: v.decode() for n, _, v in fields(value)}
            out["tags"][entry.get(1, "")] = entry.get(2, "")
        elif number == 4:  # Log: payload = 1, type = 2 (0 OUT, 1 ERR)
            log = dict((n, v) for n, _, v in fields(value))
            out["message"] = log.get(1, b"").decode(errors="replace")
            out["type"] = "ERR" if log.get(2, 0) == 1 else "OUT"
    return out


def batch(data):
    agent_id, sequence, envelopes = "", 0, []
    for number, _, value in fields(data):
        if number == 1:
            agent_id = value.decode()
        elif number == 2:
            sequence = value
        elif number == 3:
            envelopes.append(envelope(value))
    return agent_id, sequence, envelopes


def main():
    brokers, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"read-bus-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    printed, deadline = 0, time.time() + 60
    try:
        while printed < count and time.time() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                raise SystemExit(f"kafka error: {message.error()}")
            agent_id, sequence, envelopes = batch(message.value())
            for item in envelopes:
                if item["message"] is None:
                    continue
                item.update(partition=message.partition(), offset=message.offset(),
                            key=(message.key() or b"").decode(), agent_id=agent_id, sequence=sequence)
                print(json.dumps(item), flush=True)
                printed += 1
    finally:
        consumer.close()
    if printed < count:
        raise SystemExit(f"read {printed} log envelopes of {count} within 60 s")


if __name__ == "__main__":
    main()
