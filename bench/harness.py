#!/usr/bin/env python3
"""Sluice's benchmark harness: measures Sluice, its peers and the machine's ceilings on the same
data in one run, and writes bench/REPORT.md, bench/report.json and bench/plots/*.png.

Run it through `bench/run` (which builds in release mode and prepares the tools); see
bench/README.md. Every figure is the median of `--runs` repetitions unless said otherwise;
ratios are taken within this one run.
"""

import argparse
import collections
import concurrent.futures
import datetime
import glob
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
SLUICE = os.path.join(ROOT, "target", "release", "sluice")
LOADER = os.path.join(ROOT, "target", "release", "sluice-bench")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Published figures, printed for context only (not measured here).
PUBLISHED = {
    "loggregator_doppler_envelopes_per_s": (
        16000,
        "Loggregator sizing guidance: about 16,000 envelopes/s per Doppler instance",
    ),
    "quickwit_indexing_mb_per_s_per_core": (
        7.5,
        "Quickwit: about 7.5 MB/s of indexing per core",
    ),
    "victorialogs_lines_per_s_per_core": (
        100000,
        "VictoriaLogs: roughly 100k lines/s of ingestion per core",
    ),
}

MODES = {
    # Envelopes per phase. Quick stays under five minutes on two cores; full indexes ten
    # million lines and more.
    "quick": {
        "fanin": 600_000,
        "e2e": 400_000,
        "roles": 200_000,
        "fresh_seconds": 20,
        "fresh_rate": 10_000,
        "tail_cost": 1_000_000,
        "corpus_lines": 400_000,
        "search_repeats": 5,
        "source_records": 200_000,
        "overload_sustain": 400_000,
        "overload_seconds": 60,
    },
    "full": {
        "fanin": 2_000_000,
        "e2e": 10_600_000,
        "roles": 2_000_000,
        "fresh_seconds": 60,
        "fresh_rate": 10_000,
        "tail_cost": 1_000_000,
        # tantivy-cli's rate needs a few million documents, not ten.
        "corpus_lines": 2_000_000,
        "search_repeats": 9,
        "source_records": 1_000_000,
        "overload_sustain": 2_000_000,
        "overload_seconds": 60,
    },
}


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def median(values):
    return statistics.median(values) if values else None


def percentile(values, q):
    """Nearest-rank percentile of a sorted or unsorted list."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[min(rank, len(ordered)) - 1]


class Process:
    """A role or tool process whose CPU time and peak RSS are read from /proc."""

    def __init__(self, name, args, log_dir, env=None):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log_file = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.setdefault("RUST_LOG", "warn")
        if env:
            full_env.update(env)
        self.popen = subprocess.Popen(
            args, stdout=self.log_file, stderr=subprocess.STDOUT, env=full_env, cwd=log_dir
        )
        self.cpu_mark = 0.0

    @property
    def pid(self):
        return self.popen.pid

    def cpu_seconds(self):
        """User + system CPU seconds of the process (all its threads) so far."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return self.cpu_mark

    def peak_rss_mb(self):
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    def mark(self):
        """Starts a CPU interval; `since_mark` returns the CPU seconds used since."""
        self.cpu_mark = self.cpu_seconds()

    def since_mark(self):
        return self.cpu_seconds() - self.cpu_mark

    def alive(self):
        return self.popen.poll() is None

    def stop(self, timeout=60):
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()

    def tail_log(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""


def http_get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def http_json(url, body=None, timeout=300):
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{url}: {error.code}: {error.read()[:500]!r}") from error


def wait_for(description, predicate, timeout, processes=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if not process.alive():
                raise RuntimeError(
                    f"{process.name} exited while waiting for {description}; its log:\n"
                    + process.tail_log()
                )
        try:
            if predicate():
                return
        except (OSError, urllib.error.URLError, ValueError, RuntimeError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout} s waiting for {description}")


def scrape(url):
    """Prometheus text → {metric name: value summed over its label sets}."""
    values = {}
    for line in http_get(url, timeout=10).decode().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if match:
            name, labels, value = match.group(1), match.group(2), float(match.group(3))
            values[name] = values.get(name, 0.0) + value
            if labels:
                values[name + labels] = value
    return values


def wal_write_buckets(values):
    """The cumulative buckets of `sluice_bus_wal_write_seconds`: {upper bound s: count}."""
    buckets = {}
    for key, value in values.items():
        match = re.match(r'^sluice_bus_wal_write_seconds_bucket\{le="([^"]+)"\}$', key)
        if match:
            buckets[math.inf if match.group(1) == "+Inf" else float(match.group(1))] = value
    return buckets


def post_bulk(port, body):
    """One `_bulk` request to the agent's Elasticsearch source; fails if any item failed."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/_bulk", data=body, method="POST",
        headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.loads(response.read())
    if answer["errors"]:
        raise RuntimeError("a _bulk item failed")


def grouping_accuracy(predicted, truth):
    """The logparser benchmark's grouping accuracy: the share of lines whose predicted group
    holds exactly the lines of their true group."""
    by_predicted, by_truth = {}, {}
    for line, group in predicted.items():
        by_predicted.setdefault(group, set()).add(line)
    for line, group in truth.items():
        by_truth.setdefault(group, set()).add(line)
    correct = sum(1 for line, group in truth.items()
                  if line in predicted and by_predicted[predicted[line]] == by_truth[group])
    return correct / len(truth) if truth else 0.0


def write_toml(path, text):
    with open(path, "w") as handle:
        handle.write(text)
    return path


def dir_bytes(path, suffix=""):
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            if name.endswith(suffix):
                try:
                    total += os.path.getsize(os.path.join(folder, name))
                except OSError:
                    pass
    return total


class Bench:
    def __init__(self, args):
        self.args = args
        self.mode = MODES[args.mode]
        self.work = tempfile.mkdtemp(prefix="sluice-bench-", dir=args.work_dir)
        self.loghub = args.loghub
        self.results = {
            "mode": args.mode,
            "runs": args.runs,
            "seed": args.seed,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "commit": git_commit(),
            "published": {key: value for key, (value, _) in PUBLISHED.items()},
            "figures": {},
            "commands": [],
        }
        self.next_item = 0

    # ----- helpers -------------------------------------------------------------------------

    def figure(self, key, value):
        self.results["figures"][key] = value
        self.save()

    def save(self):
        with open(self.args.json_out, "w") as handle:
            json.dump(self.results, handle, indent=2, sort_keys=True)

    def record(self, command):
        """Notes a command (a list of arguments) for the report, with paths relative to the repo."""
        self.results["commands"].append(
            " ".join(os.path.relpath(part, ROOT) if part.startswith(ROOT) else part for part in command))

    def generator_args(self):
        return ["--loghub", self.loghub, "--seed", str(self.args.seed)]

    def load(self, agent, tls_dir, count, rate=0, time_span=0, api=None, streams=8):
        first = self.next_item
        self.next_item += count
        command = [
            LOADER, "load", *self.generator_args(),
            "--agent", agent, "--tls-dir", tls_dir,
            "--count", str(count), "--first", str(first),
            "--streams", str(streams), "--rate", str(rate), "--time-span", str(time_span),
        ]
        if api:
            command += ["--api", api]
        self.record(command)
        output = subprocess.run(command, check=True, capture_output=True, text=True)
        return json.loads(output.stdout.strip().splitlines()[-1])

    def up_config(self, data_dir, ports, bus="wal", extra="", wal_dir=None):
        return f"""
data_dir = "{data_dir}"
[agent]
listen = "127.0.0.1:{ports['agent']}"
dopplers = ["127.0.0.1:{ports['doppler']}"]
[doppler]
listen = "127.0.0.1:{ports['doppler']}"
[bus]
kind = "{bus}"
{f'wal_dir = "{wal_dir}"' if wal_dir else ""}
[retention]
flush_interval = "5s"
[query_api]
listen = "127.0.0.1:{ports['http']}"
[query_api.tail]
# The tail-cost phase opens 100 tails from this one host.
max_tails_per_client = 128
{self.source_sections(ports)}
{extra}
"""

    @staticmethod
    def source_sections(ports):
        """The agent sources on the given ports, or off (the phases that do not measure them)."""
        off = "[agent.host_metrics]\nenabled = false\n[agent.otlp]\nenabled = false\n"
        if "es" not in ports:
            return off + "[agent.elasticsearch]\nenabled = false\n[agent.syslog]\nenabled = false\n"
        return ("[agent.host_metrics]\nenabled = false\n"
                f"[agent.elasticsearch]\nlisten = \"127.0.0.1:{ports['es']}\"\n"
                f"[agent.syslog]\nlisten = \"127.0.0.1:{ports['syslog']}\"\n"
                f"[agent.otlp]\ngrpc_listen = \"127.0.0.1:{ports['otlp_grpc']}\"\n"
                f"http_listen = \"127.0.0.1:{ports['otlp_http']}\"\n"
                f"[[agent.files]]\npaths = [\"{ports['files_dir']}/*.log\"]\n"
                f"source_id = \"bench-files\"\nstart_at = \"beginning\"\n")

    # ----- phases --------------------------------------------------------------------------

    def corpus(self):
        """Compressibility of the generated lines against the Loghub originals."""
        import zstandard

        lines_path = os.path.join(self.work, "corpus.txt")
        docs_path = os.path.join(self.work, "corpus.json")
        originals = os.path.join(self.work, "originals.txt")
        count = self.mode["corpus_lines"]
        command = [
            LOADER, "corpus", *self.generator_args(), "--count", str(count),
            "--lines-out", lines_path, "--docs-out", docs_path, "--originals-out", originals,
        ]
        self.record(command)
        summary = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        compressor = zstandard.ZstdCompressor(level=3)

        def ratio(path, limit=None):
            with open(path, "rb") as handle:
                data = handle.read(limit) if limit else handle.read()
            return len(data) / len(compressor.compress(data)), len(data)

        original_ratio, original_bytes = ratio(originals)
        # The same amount of generated text as the originals, and the whole corpus.
        sample_ratio, _ = ratio(lines_path, original_bytes)
        corpus_ratio, corpus_bytes = ratio(lines_path)
        self.corpus_paths = (lines_path, docs_path)
        self.figure("corpus", {
            "lines": summary["lines"],
            "bytes": summary["bytes"],
            "zstd3_ratio_loghub_originals": original_ratio,
            "zstd3_ratio_generated_same_size": sample_ratio,
            "zstd3_ratio_generated_corpus": corpus_ratio,
            "zstd3_bytes_generated_corpus": corpus_bytes / corpus_ratio,
            "mean_line_bytes": summary["bytes"] / max(1, summary["lines"]),
        })
        log(f"corpus: {summary['lines']} lines; zstd -3 ratio {corpus_ratio:.1f}x generated "
            f"vs {original_ratio:.1f}x Loghub originals")

    def fanin(self, bus):
        """Figure 1: agent → doppler → bus, roles as separate processes."""
        runs = []
        for run in range(self.args.runs):
            data_dir = os.path.join(self.work, f"fanin-{bus}-{run}")
            os.makedirs(data_dir)
            ports = {name: free_port() for name in ("agent", "doppler", "http", "tel_d", "tel_a")}
            extra = ""
            if bus == "kafka":
                extra = (f'[bus.kafka]\nbrokers = "{self.kafka}"\n'
                         f'topic = "bench-fanin-{run}-{int(time.time())}"\npartitions = 4\n')
            base = self.up_config(data_dir, ports, bus=bus, extra=extra)
            doppler_cfg = write_toml(os.path.join(data_dir, "doppler.toml"),
                                     base + f'[telemetry]\nlisten = "127.0.0.1:{ports["tel_d"]}"\n')
            agent_cfg = write_toml(os.path.join(data_dir, "agent.toml"),
                                   base + f'[telemetry]\nlisten = "127.0.0.1:{ports["tel_a"]}"\n')
            doppler = Process(f"fanin-{bus}-{run}-doppler", [SLUICE, "doppler", "--config", doppler_cfg], data_dir)
            agent = None
            try:
                metrics_d = f"http://127.0.0.1:{ports['tel_d']}/metrics"
                wait_for("the doppler", lambda: scrape(metrics_d) is not None, 60, [doppler])
                agent = Process(f"fanin-{bus}-{run}-agent", [SLUICE, "agent", "--config", agent_cfg], data_dir)
                wait_for("the agent", lambda: scrape(f"http://127.0.0.1:{ports['tel_a']}/metrics") is not None, 60, [agent])
                count = self.mode["fanin"]
                doppler.mark()
                agent.mark()
                broker_before = self.broker_cpu() if bus == "kafka" else None
                started = time.monotonic()
                report = self.load(f"127.0.0.1:{ports['agent']}", os.path.join(data_dir, "tls"), count)
                wait_for("the doppler to append every envelope",
                         lambda: scrape(metrics_d).get("sluice_doppler_envelopes_appended_total", 0) >= count,
                         300, [doppler, agent])
                elapsed = time.monotonic() - started
                doppler_cpu = doppler.since_mark()
                if run == 0 and bus == "wal":
                    # The indexer and retention replay this WAL alone (see `replay`).
                    self.replay_source = (data_dir, ports, report)
                runs.append({
                    "envelopes": count,
                    "elapsed_s": elapsed,
                    "envelopes_per_s": count / elapsed,
                    "doppler_cpu_s": doppler_cpu,
                    "agent_cpu_s": agent.since_mark(),
                    "doppler_envelopes_per_cpu_s": count / doppler_cpu,
                    "doppler_peak_rss_mb": doppler.peak_rss_mb(),
                    "agent_peak_rss_mb": agent.peak_rss_mb(),
                    "broker_cpu_s": (self.broker_cpu() - broker_before) if broker_before is not None else None,
                })
                log(f"fan-in {bus} run {run}: {count / elapsed:,.0f} envelopes/s, "
                    f"{count / doppler_cpu:,.0f} per doppler CPU-second")
            finally:
                if agent:
                    agent.stop()
                doppler.stop()
        self.figure(f"fanin_{bus}", summarize(runs))

    def broker_cpu(self):
        """CPU seconds the Kafka-protocol broker of scripts/services has used so far."""
        state = os.environ.get("SLUICE_SERVICES_DIR", "")
        try:
            with open(os.path.join(state, "kafka.pid")) as handle:
                pid = int(handle.read().strip())
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            return None

    def e2e(self):
        """Figures 2, 3, 4, 6, 7, 8 on `sluice up` (embedded WAL, local archive)."""
        data_dir = os.path.join(self.work, "up")
        os.makedirs(data_dir)
        ports = {name: free_port() for name in ("agent", "doppler", "http")}
        config = write_toml(os.path.join(data_dir, "sluice.toml"), self.up_config(data_dir, ports))
        up = Process("up", [SLUICE, "up", "--config", config], data_dir)
        self.up = up
        api = f"http://127.0.0.1:{ports['http']}"
        self.api = api
        metrics = f"{api}/metrics"
        agent = f"127.0.0.1:{ports['agent']}"
        tls_dir = os.path.join(data_dir, "tls")
        self.up_data = data_dir
        try:
            wait_for("sluice up", lambda: http_get(f"{api}/healthz").strip() == b"ok", 120, [up])
            # Throughput: everything as fast as the agent takes it, then until it is all
            # indexed and archived. Timestamps are the time of sending, as live traffic's are
            # (spreading them over a day makes every hour partition commit every second: a
            # backfill, slower per line; see bench/bottlenecks.md).
            total = self.mode["e2e"]
            up.mark()
            started = time.monotonic()
            report = self.load(agent, tls_dir, total)
            accepted = time.monotonic() - started
            lines = report["log_lines"]

            def caught_up():
                values = scrape(metrics)
                indexed = values.get("sluice_indexer_documents_indexed_total", 0)
                archived = values.get('sluice_retention_rows_written_total{table="logs"}', 0)
                return indexed >= lines and archived >= lines

            wait_for("every envelope to be indexed and archived", caught_up, 3600, [up])
            elapsed = time.monotonic() - started
            cpu = up.since_mark()
            self.e2e_report = report
            self.figure("e2e", {
                "envelopes": report["envelopes"],
                "log_lines": lines,
                "log_bytes": report["log_bytes"],
                "accepted_s": accepted,
                "elapsed_s": elapsed,
                "envelopes_per_s": report["envelopes"] / elapsed,
                "mb_per_s": report["log_bytes"] / elapsed / 1e6,
                "cpu_s": cpu,
                "cores_used": cpu / elapsed,
                "envelopes_per_cpu_s": report["envelopes"] / cpu,
                "mb_per_cpu_s": report["log_bytes"] / cpu / 1e6,
                "peak_rss_mb": up.peak_rss_mb(),
                "index_bytes": dir_bytes(os.path.join(data_dir, "index")),
            })
            log(f"end to end: {report['envelopes'] / elapsed:,.0f} envelopes/s, "
                f"{report['log_bytes'] / elapsed / 1e6:.1f} MB/s, {cpu / elapsed:.2f} cores")

            # Archive size against zstd -3 of the very lines archived.
            self.archive(data_dir, report, api)
            # Freshness at a steady rate below saturation.
            self.freshness(agent, tls_dir, api, metrics)
            # How fast a tail far behind catches up (on the data of the runs above), and what
            # 100 open tails cost ingest.
            self.catch_up(api)
            self.tail_cost(agent, tls_dir, metrics)
            self.sql(data_dir, api)
            self.search(api)
            self.figure("up_peak_rss_mb", up.peak_rss_mb())
        finally:
            up.stop(timeout=120)

    def overload(self):
        """Ten times the sustainable rate, offered open-loop for a minute: what is accepted is
        all stored once, what is not is refused in the client's sight, memory stays bounded."""
        data_dir = os.path.join(self.work, "overload")
        os.makedirs(data_dir)
        ports = {name: free_port() for name in ("agent", "doppler", "http")}
        config = write_toml(os.path.join(data_dir, "sluice.toml"), self.up_config(data_dir, ports))
        up = Process("up-overload", [SLUICE, "up", "--config", config], data_dir)
        api = f"http://127.0.0.1:{ports['http']}"
        metrics = f"{api}/metrics"
        agent = f"127.0.0.1:{ports['agent']}"
        tls_dir = os.path.join(data_dir, "tls")

        def stored():
            values = scrape(metrics)
            return (values.get("sluice_indexer_documents_indexed_total", 0),
                    values.get('sluice_retention_rows_written_total{table="logs"}', 0))

        try:
            wait_for("sluice up", lambda: http_get(f"{api}/healthz").strip() == b"ok", 120, [up])
            # The sustainable rate, measured here: as fast as the agent takes envelopes, timed
            # until every line is indexed and archived.
            started = time.monotonic()
            sustain = self.load(agent, tls_dir, self.mode["overload_sustain"])
            lines = sustain["log_lines"]
            wait_for("the sustained load to be stored",
                     lambda: min(stored()) >= lines, 3600, [up])
            sustainable = sustain["envelopes"] / (time.monotonic() - started)
            rate = 10 * sustainable
            seconds = self.mode["overload_seconds"]
            log(f"overload: sustainable {sustainable:,.0f} envelopes/s; offering {rate:,.0f} for {seconds} s")

            # Two floods: clients that keep at most 256 requests waiting (so the agent holds
            # them back), then 4,096 (so requests wait past agent.pending_wait and are
            # refused with RESOURCE_EXHAUSTED).
            runs = []
            for max_in_flight in (256, 4096):
                samples = []
                sampling = threading.Event()

                def sample():
                    while not sampling.is_set():
                        try:
                            with open(f"/proc/{up.pid}/status") as status:
                                for line in status:
                                    if line.startswith("VmRSS:"):
                                        samples.append(int(line.split()[1]) / 1024.0)
                        except OSError:
                            pass
                        time.sleep(0.25)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                first = self.next_item
                self.next_item += int(rate * seconds) + 1_000
                command = [LOADER, "overload", *self.generator_args(), "--agent", agent,
                           "--tls-dir", tls_dir, "--first", str(first), "--rate", f"{rate:.0f}",
                           "--seconds", str(seconds), "--max-in-flight", str(max_in_flight)]
                self.record(command)
                before = scrape(metrics).get(
                    'sluice_agent_envelopes_rejected_total{reason="backpressure"}', 0)
                offered_at = time.monotonic()
                output = subprocess.run(command, check=True, capture_output=True, text=True)
                report = json.loads(output.stdout.strip().splitlines()[-1])
                lines += report["accepted_log_lines"]
                wait_for("every accepted line to be stored",
                         lambda: min(stored()) >= lines, 3600, [up])
                drained = time.monotonic() - offered_at
                # A moment for a duplicate, if any, to show up in the counts too.
                time.sleep(2)
                indexed, archived = stored()
                sampling.set()
                sampler.join()
                values = scrape(metrics)
                audit = http_json(f"{api}/api/v1/audit")
                runs.append({
                    "max_in_flight": max_in_flight,
                    "offered": report["offered"],
                    "offered_envelopes_per_s": report["offered"] / seconds,
                    "offered_factor": report["offered"] / seconds / sustainable,
                    "sent": report["sent"],
                    "accepted": report["accepted"],
                    "accepted_per_s": report["accepted"] / report["elapsed_s"],
                    "refused": report["refused"],
                    "held_back": report["held_back"],
                    "agent_counted_backpressure": values.get(
                        'sluice_agent_envelopes_rejected_total{reason="backpressure"}', 0) - before,
                    "accepted_p50_ms": report["accepted_p50_ms"],
                    "accepted_p99_ms": report["accepted_p99_ms"],
                    "stored_after_s": drained,
                    "lines_expected": lines,
                    "lines_indexed": indexed,
                    "lines_archived": archived,
                    "unexplained_gaps": audit.get("unexplained_gaps"),
                    "peak_rss_mb_during": max(samples) if samples else None,
                })
                log(f"overload ({max_in_flight} waiting at most): offered {report['offered']:,}, "
                    f"accepted {report['accepted']:,}, refused {report['refused']}, held back "
                    f"{report['held_back']:,}; indexed {indexed:,.0f} / archived {archived:,.0f} "
                    f"of {lines:,}; peak RSS {max(samples) if samples else 0:.0f} MiB")
            self.figure("overload", {
                "sustainable_envelopes_per_s": sustainable,
                "seconds": seconds,
                "runs": runs,
                "peak_rss_mb": up.peak_rss_mb(),
            })
        finally:
            up.stop(timeout=120)

    def loghub_lines(self, count):
        """`count` raw Loghub lines, the eight logs in turn, repeated as needed."""
        lines = []
        for path in sorted(glob.glob(os.path.join(self.loghub, "*", "*_2k.log"))):
            with open(path, errors="replace") as handle:
                lines.extend(line.rstrip("\n") for line in handle if line.strip())
        return [lines[n % len(lines)] for n in range(count)]

    def wal(self):
        """The embedded WAL's two durability settings side by side (the example
        `bus/examples/wal_durability.rs`, release build): appends/s and latency of 20 kB
        records (an agent batch of ~100 log lines) from 16 concurrent writers and from one,
        beside the disk's own ceiling measured the same way with dd (synced writes of one
        record and of a 16-record group, and buffered writes)."""
        example = os.environ.get("SLUICE_WAL_BENCH_BIN",
                                 os.path.join(ROOT, "target/release/examples/wal_durability"))
        scratch = os.path.join(self.work, "wal")
        os.makedirs(scratch, exist_ok=True)
        runs = []
        for writers in (16, 1):
            command = [example, str(writers), "2000", "20000"]
            self.record(command)
            out = subprocess.run(command, check=True, capture_output=True, text=True,
                                 env=dict(os.environ, SLUICE_BENCH_DIR=scratch)).stdout
            runs.extend(json.loads(line) for line in out.splitlines() if line.startswith("{"))
        ceiling = {}
        target = os.path.join(scratch, "dd")
        for name, block, count, flags in (("synced_20kB", "20000", "2000", ["oflag=dsync"]),
                                          ("synced_320kB", "320000", "500", ["oflag=dsync"]),
                                          ("buffered_1MiB", "1M", "640", [])):
            command = ["dd", "if=/dev/zero", f"of={target}", f"bs={block}", f"count={count}", *flags]
            self.record(command)
            started = time.monotonic()
            subprocess.run(command, check=True, capture_output=True)
            seconds = time.monotonic() - started
            size = {"20000": 20000, "320000": 320000, "1M": 1 << 20}[block] * int(count)
            ceiling[name] = {"mb_per_s": size / seconds / 1e6, "writes_per_s": int(count) / seconds}
            os.remove(target)
        self.figure("wal", {"runs": runs, "ceiling": ceiling})

    def sources(self):
        """Ingest rate of each agent source on `sluice up`, from a client on the same machine:
        `_bulk` documents and OTLP/HTTP log records until acknowledged (durable), syslog
        messages over one TCP connection until queued for the doppler (syslog has no
        acknowledgement), lines appended to a followed file until acknowledged."""
        data_dir = os.path.join(self.work, "sources")
        os.makedirs(data_dir)
        ports = {name: free_port() for name in
                 ("agent", "doppler", "http", "es", "syslog", "otlp_grpc", "otlp_http")}
        files_dir = os.path.join(data_dir, "followed")
        os.makedirs(files_dir)
        followed = os.path.join(files_dir, "app.log")
        open(followed, "w").close()
        ports["files_dir"] = files_dir
        config = write_toml(os.path.join(data_dir, "sluice.toml"), self.up_config(data_dir, ports))
        up = Process("sources-up", [SLUICE, "up", "--config", config], data_dir)
        api = f"http://127.0.0.1:{ports['http']}"
        count = self.mode["source_records"]
        lines = self.loghub_lines(count)
        try:
            wait_for("sluice up", lambda: http_get(f"{api}/healthz").strip() == b"ok", 120, [up])
            results = {"records": count}

            # _bulk: 1,000 documents per request, four client threads (as a shipper's workers).
            per_request = 1_000
            bodies = []
            for start in range(0, count, per_request):
                body = []
                for n in range(start, min(start + per_request, count)):
                    body.append('{"index":{"_index":"bench"}}')
                    body.append(json.dumps({"@timestamp": "2026-11-27T08:00:00Z",
                                            "message": lines[n], "host": {"name": "bench"}}))
                bodies.append(("\n".join(body) + "\n").encode())
            payload_bytes = sum(len(body) for body in bodies)

            def post(body):
                post_bulk(ports["es"], body)

            up.mark()
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(post, bodies))
            elapsed = time.monotonic() - started
            cpu = up.since_mark()
            results["elasticsearch"] = {
                "records_per_s": count / elapsed, "mb_per_s": payload_bytes / elapsed / 1e6,
                "cpu_s": cpu, "records_per_cpu_s": count / cpu, "elapsed_s": elapsed,
                "client": "Python urllib, 4 threads, 1,000 documents per request"}
            log(f"_bulk: {count / elapsed:,.0f} documents/s")

            # syslog: RFC 5424, octet-counted, one TCP connection, until all are queued.
            frames = []
            for n, line in enumerate(lines):
                message = f"<14>1 2026-11-27T08:00:00Z bench app{n % 16} {n % 7} - - {line}".encode()
                frames.append(b"%d %s" % (len(message), message))
            stream = b"".join(frames)
            metrics = f"{api}/metrics"
            key = 'sluice_agent_source_records_total{source="syslog"}'
            up.mark()
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", ports["syslog"])) as connection:
                connection.sendall(stream)
            wait_for("every syslog message to be queued",
                     lambda: scrape(metrics).get(key, 0) >= count, 600, [up])
            elapsed = time.monotonic() - started
            cpu = up.since_mark()
            results["syslog_tcp"] = {
                "records_per_s": count / elapsed, "mb_per_s": len(stream) / elapsed / 1e6,
                "cpu_s": cpu, "records_per_cpu_s": count / cpu, "elapsed_s": elapsed,
                "client": "one TCP connection, octet-counted RFC 5424"}
            log(f"syslog tcp: {count / elapsed:,.0f} messages/s")

            # OTLP/HTTP: ExportLogsServiceRequest of 1,000 records per request, 4 threads,
            # encoded here by hand (protobuf wire format) to keep the client cheap.
            bodies = []
            for start in range(0, count, per_request):
                records = b"".join(
                    pb_bytes(2, pb_fixed64(1, 1_795_766_400_000_000_000 + n) + pb_varint_field(2, 9)
                             + pb_bytes(5, pb_bytes(1, lines[n].encode())))
                    for n in range(start, min(start + per_request, count)))
                resource = pb_bytes(1, pb_bytes(1, pb_bytes(1, b"service.name")
                                                + pb_bytes(2, pb_bytes(1, b"bench-otlp"))))
                bodies.append(pb_bytes(1, resource + pb_bytes(2, records)))
            otlp_bytes = sum(len(body) for body in bodies)

            def export(body):
                request = urllib.request.Request(
                    f"http://127.0.0.1:{ports['otlp_http']}/v1/logs", data=body, method="POST",
                    headers={"Content-Type": "application/x-protobuf"})
                with urllib.request.urlopen(request, timeout=300) as response:
                    response.read()

            up.mark()
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(export, bodies))
            elapsed = time.monotonic() - started
            cpu = up.since_mark()
            results["otlp_http"] = {
                "records_per_s": count / elapsed, "mb_per_s": otlp_bytes / elapsed / 1e6,
                "cpu_s": cpu, "records_per_cpu_s": count / cpu, "elapsed_s": elapsed,
                "client": "Python urllib, 4 threads, 1,000 log records per export"}
            log(f"otlp http: {count / elapsed:,.0f} records/s")

            # Followed file: the lines appended at once, until all are acknowledged.
            text = "".join(line + "\n" for line in lines).encode()
            key = 'sluice_agent_source_records_total{source="files"}'
            up.mark()
            started = time.monotonic()
            with open(followed, "ab") as handle:
                handle.write(text)
            wait_for("every followed line to be acknowledged",
                     lambda: scrape(metrics).get(key, 0) >= count, 600, [up])
            elapsed = time.monotonic() - started
            cpu = up.since_mark()
            results["files"] = {
                "records_per_s": count / elapsed, "mb_per_s": len(text) / elapsed / 1e6,
                "cpu_s": cpu, "records_per_cpu_s": count / cpu, "elapsed_s": elapsed,
                "client": "one file, all lines appended at once"}
            log(f"files: {count / elapsed:,.0f} lines/s")
            self.figure("sources", results)
        finally:
            up.stop(timeout=120)

    def archive(self, data_dir, report, api):
        import zstandard

        def logs_stats():
            stats = http_json(f"{api}/api/v1/archive/stats")
            tables = {table["table"]: table for table in stats["tables"]}
            return tables["logs"], sum(table["bytes"] for table in tables.values())

        # As flushed (one small file per table, hour and flush), then compacted: the catalog's
        # live files, not the directory (which also holds replaced files until collected).
        before, all_before = logs_stats()
        started = time.monotonic()
        request = http_json(f"{api}/api/v1/archive/compact", {})["id"]

        def compacted():
            progress = http_json(f"{api}/api/v1/archive/compact").get("progress") or {}
            return progress.get("request") == request and progress.get("state") == "done"

        wait_for("compaction", compacted, 1800)
        compaction_s = time.monotonic() - started
        after, all_after = logs_stats()
        # zstd -3 of the same lines: regenerate exactly the archived log lines.
        lines_path = os.path.join(self.work, "e2e-lines.txt")
        subprocess.run([
            LOADER, "corpus", *self.generator_args(), "--count", str(report["envelopes"]),
            "--first", str(self.next_item - report["envelopes"]), "--lines-out", lines_path,
        ], check=True, capture_output=True)
        compressor = zstandard.ZstdCompressor(level=3)
        zstd_bytes = 0
        raw_bytes = 0
        with open(lines_path, "rb") as handle:
            # Frames of 64 MiB, as a log shipper compressing chunks would; ratio is stable.
            while chunk := handle.read(64 << 20):
                raw_bytes += len(chunk)
                zstd_bytes += len(compressor.compress(chunk))
        os.remove(lines_path)
        logs_bytes = after["bytes"]
        self.figure("archive", {
            "raw_line_bytes": raw_bytes,
            "logs_parquet_bytes": logs_bytes,
            "logs_parquet_bytes_flushed": before["bytes"],
            "all_parquet_bytes": all_after,
            "all_parquet_bytes_flushed": all_before,
            "zstd3_bytes": zstd_bytes,
            "parquet_bytes_per_raw_byte": logs_bytes / raw_bytes,
            "flushed_bytes_per_raw_byte": before["bytes"] / raw_bytes,
            "zstd3_bytes_per_raw_byte": zstd_bytes / raw_bytes,
            "parquet_vs_zstd3": logs_bytes / zstd_bytes,
            "flushed_vs_zstd3": before["bytes"] / zstd_bytes,
            "files": after["files"],
            "files_flushed": before["files"],
            "compaction_s": compaction_s,
        })
        log(f"archive: {before['files']} files, {before['bytes'] / raw_bytes:.3f} bytes per raw byte as "
            f"flushed; compacted in {compaction_s:.1f} s into {after['files']} files, "
            f"{logs_bytes / raw_bytes:.3f} (zstd -3: {zstd_bytes / raw_bytes:.3f})")

    def freshness(self, agent, tls_dir, api, metrics):
        runs = []
        rate = self.mode["fresh_rate"]
        seconds = self.mode["fresh_seconds"]
        wal_before = wal_write_buckets(scrape(metrics))
        for run in range(self.args.runs):
            report = self.load(agent, tls_dir, rate * seconds, rate=rate, api=api)
            runs.append({
                "probes_sent": report["probes_sent"],
                "tail_seen": len(report["tail_ms"]),
                "search_seen": len(report["search_ms"]),
                "tail_p50_ms": percentile(report["tail_ms"], 50),
                "tail_p99_ms": percentile(report["tail_ms"], 99),
                "search_p50_ms": percentile(report["search_ms"], 50),
                "search_p99_ms": percentile(report["search_ms"], 99),
                "tail_ms": report["tail_ms"],
                "search_ms": report["search_ms"],
            })
            log(f"freshness run {run}: tail p50 {runs[-1]['tail_p50_ms']} ms, "
                f"search p50 {runs[-1]['search_p50_ms']} ms at {rate} envelopes/s")
        summary = summarize([{k: v for k, v in run.items() if not k.endswith("_ms") or "_p" in k} for run in runs])
        summary["rate"] = rate
        # What the WAL's writes (each with its fdatasync) took meanwhile: every line waits on one.
        wal_after = wal_write_buckets(scrape(metrics))
        wal = {le: wal_after.get(le, 0) - wal_before.get(le, 0) for le in wal_after}
        writes = wal.get(math.inf, 0)
        summary["wal_writes"] = int(writes)
        summary["wal_writes_over_51ms"] = int(writes - wal.get(0.0512, 0))
        summary["wal_write_p99_ms_at_most"] = next(
            (le * 1000 for le in sorted(wal) if writes and wal[le] >= 0.99 * writes), None)
        summary["tail_ms_all"] = sorted(v for run in runs for v in run["tail_ms"])
        summary["search_ms_all"] = sorted(v for run in runs for v in run["search_ms"])
        self.figure("freshness", summary)

    def tail_cost(self, agent, tls_dir, metrics, blocks=3):
        """Ingest throughput with no tail open and with 100 open (each selecting a source of
        its own that sends nothing, as developers tailing their own apps would: each still
        sees every record of the bus), in one `sluice up`. Throughput drifts as the index
        grows, so the rounds go in blocks of four, without-with-with-without, and each block
        compares its two pairs; the cost is the median over the blocks."""
        count = self.mode["tail_cost"]
        runs = []
        costs = []
        for block in range(blocks):
            speeds = {0: [], 100: []}
            for tails in (0, 100, 100, 0):
                holder = None
                if tails:
                    holder = subprocess.Popen(
                        [LOADER, "tails", "--api", self.api, "--count", str(tails)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    opened = holder.stdout.readline().strip()
                    if opened != f"opened {tails}":
                        holder.kill()
                        raise RuntimeError(f"the tails did not open: {opened!r}")
                values = scrape(metrics)
                indexed_before = values.get("sluice_indexer_documents_indexed_total", 0)
                lagged_before = values.get("sluice_tail_hub_lagged_total", 0)
                report = self.load(agent, tls_dir, count)
                lines = report["log_lines"]
                wait_for("the load to be indexed",
                         lambda: scrape(metrics).get("sluice_indexer_documents_indexed_total", 0)
                         >= indexed_before + lines, 600, [self.up])
                lagged = scrape(metrics).get("sluice_tail_hub_lagged_total", 0) - lagged_before
                if holder:
                    holder.stdin.close()
                    holder.wait(timeout=60)
                speed = report["envelopes"] / report["elapsed_s"]
                speeds[tails].append(speed)
                runs.append({"block": block, "tails": tails, "envelopes_per_s": speed,
                             "hub_lagged": lagged})
                log(f"tail cost, block {block}, {tails} tails: {speed:,.0f} envelopes/s accepted "
                    f"(tails fell behind the hub {lagged:.0f} times)")
            costs.append(100.0 * (1.0 - sum(speeds[100]) / sum(speeds[0])))
        without = statistics.median(r["envelopes_per_s"] for r in runs if r["tails"] == 0)
        with_tails = statistics.median(r["envelopes_per_s"] for r in runs if r["tails"] == 100)
        self.figure("tail_cost", {
            "envelopes": count, "runs": runs, "block_costs_percent": costs,
            "without_tails_per_s": without, "with_100_tails_per_s": with_tails,
            "cost_percent": statistics.median(costs),
            "hub_lagged": sum(r["hub_lagged"] for r in runs),
        })
        log(f"100 tails: {statistics.median(costs):.1f}% less ingest throughput (blocks: "
            f"{', '.join(f'{c:.1f}%' for c in costs)})")

    def catch_up(self, api):
        """A tail resuming from the start of the bus: what it missed comes back from the
        index (below the indexer's checkpoint) and the bus, as fast as it reads."""
        count = min(self.results["figures"]["e2e"]["log_lines"], 200_000)
        command = [LOADER, "catch-up", "--api", api, "--cursor", "0:0:0", "--count", str(count)]
        self.record(command)
        output = subprocess.run(command, check=True, capture_output=True, text=True)
        report = json.loads(output.stdout.strip().splitlines()[-1])
        self.figure("catch_up", report)
        log(f"catch-up: {report['per_s']:,.0f} envelopes/s ({report['envelopes']:,} in {report['seconds']:.1f} s)")

    def sql_queries(self, day, source):
        """The five postmortem queries, in DataFusion's and DuckDB's dialects."""
        return [
            ("count by source over a day",
             f"SELECT source_id, count(*) AS lines FROM logs WHERE date = '{day}' GROUP BY source_id ORDER BY lines DESC",
             None),
            ("errors per hour",
             "SELECT date, hour, count(*) AS errors FROM logs WHERE log_type = 'ERR' GROUP BY date, hour ORDER BY date, hour",
             None),
            ("substring count",
             "SELECT count(*) AS n FROM logs WHERE message LIKE '%Exception%'",
             None),
            ("latest 100 matching a word, one source",
             f"SELECT timestamp, message FROM logs WHERE source_id = '{source}' AND message LIKE '%block%' ORDER BY timestamp DESC LIMIT 100",
             None),
            ("p99 of a timer by source",
             "SELECT source_id, approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ns) AS p99 FROM timers GROUP BY source_id ORDER BY p99 DESC",
             "SELECT source_id, approx_quantile(duration_ns, 0.99) AS p99 FROM timers GROUP BY source_id ORDER BY p99 DESC"),
        ]

    def sql(self, data_dir, api):
        import duckdb

        # As an archive that has been retained for a while is: compacted (the phases since the
        # last compaction added many small files).
        request = http_json(f"{api}/api/v1/archive/compact", {})["id"]

        def compacted():
            progress = http_json(f"{api}/api/v1/archive/compact").get("progress") or {}
            return progress.get("request") == request and progress.get("state") == "done"

        wait_for("compaction before SQL", compacted, 1800)
        archive = os.path.join(data_dir, "archive")
        # Both read the catalog's live files (the directory also holds replaced ones until the
        # collector deletes them).
        files = {table: [os.path.join(archive, file["path"])
                         for file in http_json(f"{api}/api/v1/archive/files?table={table}")["files"]]
                 for table in ("logs", "timers")}
        per_day = collections.Counter(
            path.split("date=", 1)[1].split("/", 1)[0] for path in files["logs"])
        # The day holding the most files stands for "a day".
        day = max(sorted(per_day), key=lambda d: per_day[d])
        source = "hdfs-3"
        connection = duckdb.connect()
        for table in ("logs", "timers"):
            listed = ", ".join(f"'{path}'" for path in files[table])
            connection.execute(
                f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}], "
                "hive_partitioning = true, hive_types_autocast = false)")
        results = []
        repeats = self.mode["search_repeats"]
        for name, query, duck_query in self.sql_queries(day, source):
            duck_query = duck_query or query
            ours, theirs = [], []
            rows_ours = rows_theirs = None
            for _ in range(repeats):
                started = time.monotonic()
                answer = http_json(f"{api}/api/v1/sql", {"query": query})
                ours.append(time.monotonic() - started)
                rows_ours = len(answer["rows"])
                started = time.monotonic()
                rows_theirs = len(connection.execute(duck_query).fetchall())
                theirs.append(time.monotonic() - started)
            results.append({
                "name": name,
                "datafusion_query": query,
                "duckdb_query": duck_query,
                "sluice_datafusion_ms": median(ours) * 1000,
                "duckdb_ms": median(theirs) * 1000,
                "ratio": median(ours) / median(theirs),
                "rows": rows_ours,
                "rows_duckdb": rows_theirs,
            })
            log(f"sql {name}: Sluice {median(ours) * 1000:.0f} ms, DuckDB {median(theirs) * 1000:.0f} ms")
        self.figure("sql", {"day": day, "queries": results,
                            "duckdb_version": duckdb.__version__})

    def search(self, api):
        repeats = self.mode["search_repeats"]
        queries = [
            # A block id that occurs once in the HDFS sample: a handful of lines in the load.
            ("needle term", {"query": "1030832046197982436", "limit": "100"}),
            ("phrase", {"query": '"Receiving block"', "limit": "100"}),
            ("latest 100 matching", {"query": "error", "limit": "100"}),
            ("histogram, 1 min buckets, all lines", {"query": "*", "limit": "1", "histogram": "1m"}),
            ("histogram, 1 min buckets, a term", {"query": "error", "limit": "1", "histogram": "1m"}),
        ]
        results = []
        for name, params in queries:
            times = []
            total = None
            for _ in range(repeats):
                url = f"{api}/api/v1/search?" + urllib.parse.urlencode(params)
                started = time.monotonic()
                answer = http_json(url)
                times.append(time.monotonic() - started)
                total = answer.get("total")
            results.append({"name": name, "params": params, "median_ms": median(times) * 1000,
                            "p90_ms": percentile([t * 1000 for t in times], 90), "total": total})
            log(f"search {name}: {median(times) * 1000:.1f} ms ({total} matches)")
        self.figure("search", {"documents": self.results["figures"]["e2e"]["log_lines"],
                               "queries": results})

    def patterns(self):
        """The pattern miner alone on the labelled Loghub samples: grouping accuracy per system
        beside Drain's published figures, and lines mined per second on one thread."""
        rounds = 20 if self.args.mode == "quick" else 100
        out = subprocess.run([LOADER, "patterns", "--loghub", self.loghub, "--rounds", str(rounds)],
                             check=True, capture_output=True, text=True).stdout
        report = json.loads(out)
        report["rounds"] = rounds
        self.figure("patterns", report)
        log(f"patterns: mean GA {report['mean_ga']:.3f}, {report['warm_lines_per_s']:,.0f} lines/s warm, "
            f"{report['cold_lines_per_s']:,.0f} cold, {report.get('unique_lines_per_s', 0):,.0f} unique")

    def patterns_ingest(self):
        """Patterns through the real ingest path. Grouping accuracy: each labelled Loghub
        system's lines sent to the `_bulk` source as a shipper that parses the header would
        (`Content` as the message, the header fields as fields, which become tags), each line's
        `pattern_id` read back by SQL and resolved through `patterns.merged_into`. Cost: the
        ingest rate of `sluice up` with mining on and off, and with mining on for a source of
        unique random lines (the miner at its cap, evicting) beside Loghub lines."""
        import csv
        import random
        results = {"systems": []}
        data_dir = os.path.join(self.work, "patterns-ga")
        os.makedirs(data_dir)
        ports = {name: free_port() for name in
                 ("agent", "doppler", "http", "es", "syslog", "otlp_grpc", "otlp_http")}
        ports["files_dir"] = data_dir
        config = write_toml(os.path.join(data_dir, "sluice.toml"), self.up_config(data_dir, ports))
        up = Process("patterns-up", [SLUICE, "up", "--config", config], data_dir)
        api = f"http://127.0.0.1:{ports['http']}"

        def sql(query):
            return http_json(f"{api}/api/v1/sql", {"query": query})

        def count(query):
            rows = sql(query)["rows"]
            return rows[0]["n"] if rows else 0

        try:
            wait_for("sluice up", lambda: http_get(f"{api}/healthz").strip() == b"ok", 120, [up])
            truth = {}
            for system in sorted(os.listdir(self.loghub)):
                path = os.path.join(self.loghub, system, f"{system}_2k.log_structured.csv")
                if not os.path.exists(path):
                    continue
                with open(path, newline="") as handle:
                    rows = list(csv.DictReader(handle))
                source = f"loghub-{system.lower()}"
                truth[source] = (system, {row["LineId"]: row["EventId"] for row in rows})
                body = []
                for row in rows:
                    fields = {key: value for key, value in row.items()
                              if key not in ("LineId", "Content", "EventId", "EventTemplate")}
                    fields["line"] = row["LineId"]
                    fields["message"] = row["Content"]
                    body.append(json.dumps({"index": {"_index": source}}))
                    body.append(json.dumps(fields))
                post_bulk(ports["es"], ("\n".join(body) + "\n").encode())
            for source, (system, lines) in truth.items():
                wait_for(f"{source} archived",
                         lambda: count(f"SELECT count(*) AS n FROM logs WHERE source_id = '{source}'")
                         >= len(lines), 300, [up])
            for source, (system, lines) in truth.items():
                read = sql(f"SELECT tags['line'] AS line, pattern_id FROM logs "
                           f"WHERE source_id = '{source}'")["rows"]
                became = {row["id"]: row["merged_into"] for row in
                          sql(f"SELECT id, merged_into FROM patterns WHERE source_id = '{source}' "
                              f"AND merged_into IS NOT NULL")["rows"]}

                def resolve(pattern):
                    for _ in range(64):
                        if pattern not in became or became[pattern] == pattern:
                            break
                        pattern = became[pattern]
                    return pattern

                raw = {row["line"]: row["pattern_id"] for row in read}
                resolved = {line: resolve(pattern) for line, pattern in raw.items()}
                results["systems"].append({
                    "system": system, "lines": len(lines),
                    "ga": grouping_accuracy(resolved, lines),
                    "ga_unresolved": grouping_accuracy(raw, lines),
                    "patterns": len(set(resolved.values())),
                    "true_groups": len(set(lines.values())),
                })
                log(f"patterns via ingest {system}: GA {results['systems'][-1]['ga']:.3f}")
            results["mean_ga"] = sum(row["ga"] for row in results["systems"]) / max(1, len(results["systems"]))
        finally:
            up.stop(timeout=120)

        # Cost: the e2e load (Loghub-shaped lines through the agent) with mining on and off.
        count_lines = self.mode["roles"]
        for mining in ("off", "on"):
            data_dir = os.path.join(self.work, f"patterns-{mining}")
            os.makedirs(data_dir)
            ports = {name: free_port() for name in ("agent", "doppler", "http")}
            extra = f"[doppler.patterns]\nenabled = {'true' if mining == 'on' else 'false'}\n"
            config = write_toml(os.path.join(data_dir, "sluice.toml"),
                                self.up_config(data_dir, ports, extra=extra))
            up = Process(f"patterns-{mining}", [SLUICE, "up", "--config", config], data_dir)
            api = f"http://127.0.0.1:{ports['http']}"
            try:
                wait_for("sluice up", lambda: http_get(f"{api}/healthz").strip() == b"ok", 120, [up])
                up.mark()
                started = time.monotonic()
                report = self.load(f"127.0.0.1:{ports['agent']}", os.path.join(data_dir, "tls"), count_lines)
                metrics = f"{api}/metrics"
                wait_for("every line indexed",
                         lambda: scrape(metrics).get("sluice_indexer_documents_indexed_total", 0)
                         >= report["log_lines"], 1800, [up])
                elapsed = time.monotonic() - started
                cpu = up.since_mark()
                results[f"ingest_mining_{mining}"] = {
                    "envelopes": report["envelopes"], "elapsed_s": elapsed,
                    "envelopes_per_s": report["envelopes"] / elapsed,
                    "envelopes_per_cpu_s": report["envelopes"] / cpu, "cpu_s": cpu}
                log(f"ingest with mining {mining}: {report['envelopes'] / elapsed:,.0f} envelopes/s")
                # Unique random lines against Loghub lines, both through `sluice emit` from stdin
                # (the same client for both), with mining on and off: random words cost the
                # index too (every word a new term), so the miner's share is on against off.
                rng = random.Random(self.args.seed)
                unique_count = 1_000_000 if self.args.mode == "full" else 500_000
                letters = "abcdefghijklmnopqrstuvwxyz"
                unique = "\n".join(" ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 9)))
                                             for _ in range(rng.randint(2, 6)))
                                    for _ in range(unique_count)) + "\n"
                shaped = "\n".join(self.loghub_lines(unique_count)) + "\n"
                suffix = "" if mining == "on" else "_off"
                for name, text in (("loghub", shaped), ("unique", unique)):
                    before = scrape(metrics).get("sluice_indexer_documents_indexed_total", 0)
                    started = time.monotonic()
                    subprocess.run([SLUICE, "emit", "--data-dir", data_dir, "--agent",
                                    f"127.0.0.1:{ports['agent']}", "--source-id", f"emit-{name}",
                                    "--batch", "1000"],
                                   input=text.encode(), check=True, capture_output=True)
                    wait_for("every emitted line indexed",
                             lambda: scrape(metrics).get("sluice_indexer_documents_indexed_total", 0)
                             >= before + unique_count, 1800, [up])
                    elapsed = time.monotonic() - started
                    results[f"emit_{name}{suffix}"] = {"lines": unique_count, "elapsed_s": elapsed,
                                                       "lines_per_s": unique_count / elapsed}
                    log(f"emit {name}, mining {mining}: {unique_count / elapsed:,.0f} lines/s")
                if mining == "on":
                    values = scrape(metrics)
                    results["unique_evictions"] = values.get("sluice_doppler_pattern_evictions_total", 0)
                    results["unique_leaves"] = values.get("sluice_doppler_pattern_leaves", 0)
                    results["peak_rss_mb"] = up.peak_rss_mb()
            finally:
                up.stop(timeout=120)
        self.figure("patterns_ingest", results)

    def tantivy_ceiling(self):
        """Figure 5: tantivy-cli indexing the same documents as JSON."""
        tantivy = self.args.tantivy
        if not tantivy or not os.path.exists(tantivy):
            self.figure("tantivy_cli", {"error": "tantivy-cli not installed (bench/run installs it)"})
            return
        _, docs_path = self.corpus_paths
        docs_bytes = os.path.getsize(docs_path)
        lines = self.results["figures"]["corpus"]["lines"]
        line_bytes = self.results["figures"]["corpus"]["bytes"]
        results = {}
        for threads in (1, 2):
            runs = []
            for run in range(self.args.runs):
                index_dir = os.path.join(self.work, f"tantivy-{threads}-{run}")
                os.makedirs(index_dir)
                with open(os.path.join(index_dir, "meta.json"), "w") as meta:
                    json.dump(TANTIVY_META, meta)
                command = [tantivy, "index", "-i", index_dir, "-f", docs_path, "-t", str(threads)]
                self.record(command)
                before = os.times()
                started = time.monotonic()
                subprocess.run(command, check=True, capture_output=True)
                elapsed = time.monotonic() - started
                after = os.times()
                cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
                runs.append({"elapsed_s": elapsed, "cpu_s": cpu, "docs_per_s": lines / elapsed,
                             "mb_per_s": line_bytes / elapsed / 1e6, "docs_per_cpu_s": lines / cpu,
                             "index_bytes": dir_bytes(index_dir)})
                shutil.rmtree(index_dir)
            results[f"threads_{threads}"] = summarize(runs)
            log(f"tantivy-cli -t {threads}: {results[f'threads_{threads}']['docs_per_s']:,.0f} docs/s")
        results["docs_json_bytes"] = docs_bytes
        self.figure("tantivy_cli", results)

    def replay(self):
        """Figures 5 and 8: the indexer and retention, each alone in its own process, catching
        up on the WAL the first fan-in run filled (no ingest competing for the cores)."""
        data_dir, ports, report = self.replay_source
        targets = [
            ("indexer", "sluice_indexer_documents_indexed_total", report["log_lines"]),
            ("retention", 'sluice_retention_rows_written_total{table="logs"}', report["log_lines"]),
        ]
        results = {}
        for role, metric, target in targets:
            port = free_port()
            # Each replays its own copy: the WAL releases what every group it knows has read.
            wal_copy = os.path.join(data_dir, f"wal-{role}")
            shutil.copytree(os.path.join(data_dir, "wal"), wal_copy)
            base = self.up_config(data_dir, ports, wal_dir=wal_copy)
            config = write_toml(os.path.join(data_dir, f"{role}.toml"),
                                base + f'[telemetry]\nlisten = "127.0.0.1:{port}"\n')
            url = f"http://127.0.0.1:{port}/metrics"
            started = time.monotonic()
            process = Process(f"replay-{role}", [SLUICE, role, "--config", config, "--replay-wal"], data_dir)
            try:
                wait_for(f"the {role} to catch up", lambda: scrape(url).get(metric, 0) >= target,
                         3600, [process])
                elapsed = time.monotonic() - started
                cpu = process.cpu_seconds()
                results[role] = {
                    "documents": target,
                    "log_bytes": report["log_bytes"],
                    "elapsed_s": elapsed,
                    "cpu_s": cpu,
                    "docs_per_s": target / elapsed,
                    "docs_per_cpu_s": target / cpu,
                    "mb_per_s": report["log_bytes"] / elapsed / 1e6,
                    "mb_per_cpu_s": report["log_bytes"] / cpu / 1e6,
                    "peak_rss_mb": process.peak_rss_mb(),
                }
                log(f"replay {role}: {target / elapsed:,.0f} lines/s, {cpu / elapsed:.2f} cores, "
                    f"peak RSS {results[role]['peak_rss_mb']:.0f} MB")
            finally:
                process.stop()
        self.figure("replay", results)

    # ----- profile ------------------------------------------------------------------------

    def profile(self):
        """A `perf` profile of `sluice up` ingesting as fast as it can (its own run, so the
        profiler's overhead touches no figure above)."""
        if not self.args.profile:
            return
        data_dir = os.path.join(self.work, "profile")
        os.makedirs(data_dir)
        ports = {name: free_port() for name in ("agent", "doppler", "http")}
        config = write_toml(os.path.join(data_dir, "sluice.toml"), self.up_config(data_dir, ports))
        up = Process("profile-up", [SLUICE, "up", "--config", config], data_dir)
        try:
            api = f"http://127.0.0.1:{ports['http']}"
            wait_for("sluice up", lambda: http_get(f"{api}/healthz").strip() == b"ok", 120, [up])
            import threading

            count = 60_000 * (self.args.profile_seconds + 20)
            loader = threading.Thread(target=self.load, args=(
                f"127.0.0.1:{ports['agent']}", os.path.join(data_dir, "tls"), count))
            loader.start()
            time.sleep(5)
            profile = self.start_profile(up.pid, "sluice-up-ingest")
            if profile:
                self.stop_profile(profile)
            loader.join()
        finally:
            up.stop(timeout=120)


    def start_profile(self, pid, name):
        perf = shutil.which("perf")
        if not perf:
            log("perf not found; no profile (apt-get install linux-perf)")
            return None
        out = os.path.join(self.args.profile_dir, f"{name}.perf.data")
        os.makedirs(self.args.profile_dir, exist_ok=True)
        # 99 Hz with DWARF stacks for a fixed window: enough samples, a file of tens of MB.
        command = [perf, "record", "-F", "99", "--call-graph", "dwarf,8192", "-p", str(pid),
                   "-o", out, "--", "sleep", str(self.args.profile_seconds)]
        self.record(command[:-1] + ["N"])
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return (process, out, name)

    def stop_profile(self, profile):
        """Waits for the recording window to end and writes text summaries beside it."""
        process, out, name = profile
        process.wait(timeout=self.args.profile_seconds + 600)
        summaries = {}
        # Self time by symbol and by thread. (Inclusive call-graph reports over DWARF stacks
        # take many minutes here; `perf report -i FILE --children` gives them when wanted.)
        for kind, sort in (("self", "symbol"), ("threads", "comm")):
            text_path = out.replace(".perf.data", f".{kind}.txt")
            report = subprocess.run(["perf", "report", "-i", out, "--stdio", "--no-children",
                                     "--sort", sort, "--percent-limit", "0.5", "-g", "none"],
                                    capture_output=True, text=True, check=False).stdout
            with open(text_path, "w") as handle:
                for line in report.splitlines():
                    handle.write(line.rstrip()[:240] + "\n")
            summaries[kind] = os.path.relpath(text_path, BENCH)
        self.results.setdefault("profiles", {})[name] = summaries


TANTIVY_META = {
    "index_settings": {"docstore_compression": "lz4", "docstore_blocksize": 16384},
    "segments": [],
    "schema": [
        {"name": "timestamp", "type": "i64",
         "options": {"indexed": True, "fieldnorms": True, "fast": True, "stored": True}},
        {"name": "source_id", "type": "text",
         "options": {"indexing": {"record": "basic", "fieldnorms": True, "tokenizer": "raw"},
                     "stored": True, "fast": True}},
        {"name": "instance_id", "type": "text",
         "options": {"indexing": {"record": "basic", "fieldnorms": True, "tokenizer": "raw"},
                     "stored": True, "fast": False}},
        {"name": "message", "type": "text",
         "options": {"indexing": {"record": "position", "fieldnorms": True, "tokenizer": "default"},
                     "stored": True, "fast": False}},
    ],
    "opstamp": 0,
}


def pb_varint(number):
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb_bytes(field, payload):
    """A length-delimited protobuf field."""
    return pb_varint(field << 3 | 2) + pb_varint(len(payload)) + payload


def pb_varint_field(field, number):
    return pb_varint(field << 3) + pb_varint(number)


def pb_fixed64(field, number):
    return pb_varint(field << 3 | 1) + number.to_bytes(8, "little")


def summarize(runs):
    """Median of every numeric field over runs, plus the runs themselves."""
    summary = {"runs": runs}
    keys = {key for run in runs for key, value in run.items() if isinstance(value, (int, float)) and value is not None}
    for key in sorted(keys):
        values = [run[key] for run in runs if isinstance(run.get(key), (int, float))]
        summary[key] = median(values)
    return summary


def machine():
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "cpu": cpu_model, "memory_gib": round(memory_gib, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loghub", required=True)
    parser.add_argument("--tantivy")
    parser.add_argument("--kafka", help="brokers of a running Kafka-protocol broker")
    parser.add_argument("--profile", action="store_true", help="record perf profiles")
    parser.add_argument("--profile-dir", default=os.path.join(BENCH, "profiles"))
    parser.add_argument("--profile-seconds", type=int, default=30)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--json-out", default=os.path.join(BENCH, "report.json"))
    parser.add_argument("--only", default="", help="comma-separated phases to run")
    args = parser.parse_args()
    bench = Bench(args)
    bench.kafka = args.kafka
    if args.only and os.path.exists(args.json_out):
        # Some phases only: keep the other figures of the last run beside the new ones.
        with open(args.json_out) as handle:
            previous = json.load(handle)
        if previous.get("mode") == args.mode:
            this_machine = bench.results["machine"]
            for key in ("figures", "commands", "phase_seconds", "profiles", "machine", "commit", "also_run"):
                if key in previous:
                    bench.results[key] = previous[key]
            bench.results["started"] = previous.get("started", bench.results["started"])
            bench.results.setdefault("also_run", []).append(
                {"phases": args.only, "commit": git_commit(), "machine": this_machine,
                 "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    phases = [
        ("corpus", bench.corpus),
        ("fanin-wal", lambda: bench.fanin("wal")),
        ("fanin-kafka", lambda: bench.fanin("kafka") if bench.kafka else None),
        ("replay", bench.replay),
        ("e2e", bench.e2e),
        ("sources", bench.sources),
        ("overload", bench.overload),
        ("wal", bench.wal),
        ("tantivy", bench.tantivy_ceiling),
        ("patterns", bench.patterns),
        ("patterns-ingest", bench.patterns_ingest),
        ("profile", bench.profile),
    ]
    only = set(filter(None, args.only.split(",")))
    started = time.monotonic()
    try:
        for name, phase in phases:
            if only and name not in only:
                continue
            phase_started = time.monotonic()
            log(f"phase {name}")
            phase()
            bench.results.setdefault("phase_seconds", {})[name] = time.monotonic() - phase_started
    finally:
        bench.results["total_seconds"] = time.monotonic() - started
        bench.save()
        if os.environ.get("SLUICE_BENCH_KEEP"):
            log(f"kept the work directory {bench.work}")
        else:
            shutil.rmtree(bench.work, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s; figures in {args.json_out}")


if __name__ == "__main__":
    main()
