#!/usr/bin/env python3
"""Turns bench/report.json into bench/REPORT.md and bench/plots/*.png."""

import argparse
import json
import os

BENCH = os.path.dirname(os.path.abspath(__file__))


def fmt(value, digits=0, unit=""):
    if value is None:
        return "n/a"
    if isinstance(value, float) and digits == 0 and abs(value) < 10:
        digits = 2
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".strip()


def ratio(a, b, digits=2):
    if not a or not b:
        return "n/a"
    return f"{a / b:.{digits}f}×"


def plots(report, out_dir):
    """PNG plots; returns [(title, relative path)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    figures = report["figures"]
    made = []

    # Throughput per core beside the published figures.
    bars = []
    if "fanin_wal" in figures:
        bars.append(("Sluice doppler fan-in\n(WAL), env/CPU-s", figures["fanin_wal"]["doppler_envelopes_per_cpu_s"]))
    if "fanin_kafka" in figures:
        bars.append(("Sluice doppler fan-in\n(Kafka), env/CPU-s", figures["fanin_kafka"]["doppler_envelopes_per_cpu_s"]))
    bars.append(("Loggregator Doppler\n(published), env/s", report["published"]["loggregator_doppler_envelopes_per_s"]))
    if "e2e" in figures:
        bars.append(("Sluice end to end\n(sluice up), env/CPU-s", figures["e2e"]["envelopes_per_cpu_s"]))
    bars.append(("VictoriaLogs\n(published), lines/s/core", report["published"]["victorialogs_lines_per_s_per_core"]))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(range(len(bars)), [b[1] for b in bars],
           color=["#2b6cb0" if b[0].startswith("Sluice") else "#a0aec0" for b in bars])
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([b[0] for b in bars], fontsize=7)
    ax.set_ylabel("per core per second")
    ax.set_title("Ingest per core (grey: published figures, not measured here)")
    for index, (_, value) in enumerate(bars):
        ax.text(index, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(("Ingest per core", path))

    if "freshness" in figures and figures["freshness"].get("tail_ms_all"):
        fresh = figures["freshness"]
        fig, ax = plt.subplots(figsize=(8, 4))
        for key, label in (("tail_ms_all", "emit → live tail"), ("search_ms_all", "emit → searchable")):
            values = sorted(fresh.get(key) or [])
            if values:
                ax.plot(values, [i / len(values) for i in range(1, len(values) + 1)], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("share of probes")
        ax.set_title(f"Freshness at {fresh['rate']:,} envelopes/s (CDF)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, "freshness.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(("Freshness", path))

    if "sql" in figures:
        queries = figures["sql"]["queries"]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        xs = range(len(queries))
        ax.bar([x - 0.2 for x in xs], [q["sluice_datafusion_ms"] for q in queries], width=0.4, label="Sluice (DataFusion, over HTTP)")
        ax.bar([x + 0.2 for x in xs], [q["duckdb_ms"] for q in queries], width=0.4, label="DuckDB (in process)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([q["name"].replace(", ", "\n") for q in queries], fontsize=7)
        ax.set_ylabel("median ms")
        ax.set_yscale("log")
        ax.set_title("Postmortem SQL on the same Parquet files")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, "sql.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(("SQL", path))

    rss = peak_rss(figures)
    if rss:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.barh([name for name, _ in rss], [value for _, value in rss], color="#2f855a")
        ax.set_xlabel("peak RSS (MiB)")
        ax.set_title("Peak resident memory per role under load")
        fig.tight_layout()
        path = os.path.join(out_dir, "memory.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(("Memory", path))
    return made


def peak_rss(figures):
    rows = []
    if "fanin_wal" in figures:
        rows.append(("agent (fan-in)", figures["fanin_wal"].get("agent_peak_rss_mb")))
        rows.append(("doppler (fan-in, WAL)", figures["fanin_wal"].get("doppler_peak_rss_mb")))
    if "fanin_kafka" in figures:
        rows.append(("doppler (fan-in, Kafka)", figures["fanin_kafka"].get("doppler_peak_rss_mb")))
    for role in ("indexer", "retention"):
        if role in figures.get("replay", {}):
            rows.append((f"{role} (replay)", figures["replay"][role].get("peak_rss_mb")))
    if "e2e" in figures:
        rows.append(("sluice up (all roles)", figures.get("up_peak_rss_mb") or figures["e2e"].get("peak_rss_mb")))
    return [(name, value) for name, value in rows if value]


def markdown(report, made, bottlenecks):
    f = report["figures"]
    m = report["machine"]
    out = []
    w = out.append
    w("# Sluice benchmark report")
    w("")
    w(f"Generated by `bench/run --{report['mode']}` from commit `{report['commit']}` on "
      f"{report['started']}; {report['runs']} runs per figure, medians shown; seed {report['seed']}.")
    w(f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}. "
      "Every process of the pipeline and of the load generator shares these cores, so per-core "
      "figures divide by the CPU seconds the measured process used, read from `/proc`.")
    for extra in report.get("also_run", []):
        other = extra.get("machine")
        on = (f" on another machine: {other['cores']} cores ({other['cpu']}), Linux {other['kernel']}"
              if other and other != m else "")
        w(f"Phases `{extra['phases']}` were run again at {extra['at']} (commit `{extra['commit']}`, "
          f"`bench/run --{report['mode']} --kafka --only={extra['phases']}`){on} and merged in.")
    for carried in report.get("carried", []):
        w(f"Figures `{', '.join(carried['figures'])}` are carried over from the `--{carried['mode']}` run "
          f"of {carried['started']} (commit `{carried['commit']}`): not measured again since.")
    w("")
    w("Published figures are printed for context only; they were not measured here, on other "
      "hardware and other data.")
    w("")

    if "corpus" in f:
        c = f["corpus"]
        w("## Load")
        w("")
        w("`sluice-bench` walks the Loghub samples (`../shared/data/loghub-2k`, eight systems) in runs "
          "of 32 consecutive lines per source (real prefixes and event order), swapping 30% of the "
          "template slot values for other values seen in that slot (a third of those with digits "
          "redrawn); 200 source ids × 4 instances; 5% of envelopes are counters, gauges and timers.")
        w("")
        w("| | value |")
        w("|---|---|")
        w(f"| generated lines in the corpus | {fmt(c['lines'])} ({fmt(c['bytes'] / 1e6, 1)} MB, {fmt(c['mean_line_bytes'], 0)} B/line) |")
        w(f"| `zstd -3` ratio, Loghub originals | {c['zstd3_ratio_loghub_originals']:.2f}× |")
        w(f"| `zstd -3` ratio, generated, same size as the originals | {c['zstd3_ratio_generated_same_size']:.2f}× |")
        w(f"| `zstd -3` ratio, generated, whole corpus | {c['zstd3_ratio_generated_corpus']:.2f}× |")
        delta = c['zstd3_ratio_generated_corpus'] / c['zstd3_ratio_loghub_originals'] - 1
        w(f"| corpus ratio against the originals | {delta * 100:+.0f}% (target: within ±20%) |")
        w("")

    w("## 1. Doppler fan-in")
    w("")
    w("Agent and doppler as separate processes (`sluice agent`, `sluice doppler`), eight concurrent "
      "`BatchSender` streams of 500 envelopes into the agent; counted until the doppler's "
      "`sluice_doppler_envelopes_appended_total` reaches the total.")
    w("")
    w("| bus | envelopes/s | per doppler CPU-second | doppler cores | agent cores | doppler peak RSS |")
    w("|---|---|---|---|---|---|")
    for key, label in (("fanin_wal", "embedded WAL"), ("fanin_kafka", "Kafka (tansu, loopback)")):
        if key in f:
            x = f[key]
            w(f"| {label} | {fmt(x['envelopes_per_s'])} | {fmt(x['doppler_envelopes_per_cpu_s'])} | "
              f"{fmt(x['doppler_cpu_s'] / x['elapsed_s'], 2)} | {fmt(x['agent_cpu_s'] / x['elapsed_s'], 2)} | "
              f"{fmt(x['doppler_peak_rss_mb'])} MiB |")
    if "fanin_kafka" not in f:
        w("| Kafka | not measured in this run (`bench/run --kafka`) | | | | |")
    if "fanin_kafka" in f:
        broker = f["fanin_kafka"].get("broker_cpu_s")
        w("")
        w("Into Kafka the broker sets the pace: tansu 0.6 on SQLite (the broker the tests use), on the "
          "same two cores" + (f", used {broker / f['fanin_kafka']['elapsed_s']:.2f} cores." if broker else
                              "; its CPU was not read in this run."))
    if "fanin_wal" in f:
        pub = report["published"]["loggregator_doppler_envelopes_per_s"]
        w("")
        w(f"Published: Loggregator sizes a Doppler at {pub:,} envelopes/s. Sluice's doppler per "
          f"CPU-second: {ratio(f['fanin_wal']['doppler_envelopes_per_cpu_s'], pub)} that.")
    w("")

    if "e2e" in f:
        e = f["e2e"]
        w("## 2. End to end (`sluice up`: agent → doppler → WAL → indexer + retention)")
        w("")
        w(f"{fmt(e['envelopes'])} envelopes ({fmt(e['log_lines'])} log lines, {fmt(e['log_bytes'] / 1e6, 1)} MB "
          "of log text) stamped when sent, as fast as the agent takes them from eight streams; timed "
          "until the indexer and retention both hold every line. The load generator runs on the same "
          "two cores, so the per-CPU-second rows are the ones to compare.")
        w("")
        w("| | value |")
        w("|---|---|")
        w(f"| envelopes/s | {fmt(e['envelopes_per_s'])} |")
        w(f"| MB/s of log text | {fmt(e['mb_per_s'], 2)} |")
        w(f"| cores used (of {m['cores']}) | {fmt(e['cores_used'], 2)} |")
        w(f"| envelopes per CPU-second | {fmt(e['envelopes_per_cpu_s'])} |")
        w(f"| MB of log text per CPU-second | {fmt(e['mb_per_cpu_s'], 2)} |")
        w(f"| accepted by the agent after | {fmt(e['accepted_s'], 1)} s; all indexed and archived after {fmt(e['elapsed_s'], 1)} s |")
        w(f"| index on disk | {fmt(e['index_bytes'] / 1e6, 1)} MB |")
        w("")
        pub_q = report["published"]["quickwit_indexing_mb_per_s_per_core"]
        pub_v = report["published"]["victorialogs_lines_per_s_per_core"]
        w(f"Published: Quickwit indexes about {pub_q} MB/s per core (indexing only); VictoriaLogs "
          f"ingests roughly {pub_v:,} lines/s per core. Sluice end to end, per CPU-second, does "
          f"everything (TLS ingest, WAL, full-text index and Parquet archive): "
          f"{fmt(e['mb_per_cpu_s'], 2)} MB and {fmt(e['envelopes_per_cpu_s'])} envelopes.")
        w("")
        if "replay" in f:
            w("CPU per role, each alone in its own process (agent and doppler from the fan-in runs; "
              "indexer and retention catching up on the WAL the first fan-in run filled):")
            w("")
            w("| role | lines/s | lines per CPU-second | MB/s of text per CPU-second | cores used | peak RSS |")
            w("|---|---|---|---|---|---|")
            if "fanin_wal" in f:
                x = f["fanin_wal"]
                for role in ("agent", "doppler"):
                    w(f"| {role} | {fmt(x['envelopes_per_s'])} | {fmt(x['envelopes'] / x[role + '_cpu_s'])} | | "
                      f"{fmt(x[role + '_cpu_s'] / x['elapsed_s'], 2)} | {fmt(x[role + '_peak_rss_mb'])} MiB |")
            for role in ("indexer", "retention"):
                if role in f["replay"]:
                    r = f["replay"][role]
                    w(f"| {role} | {fmt(r['docs_per_s'])} | {fmt(r['docs_per_cpu_s'])} | {fmt(r['mb_per_cpu_s'], 2)} | "
                      f"{fmt(r['cpu_s'] / r['elapsed_s'], 2)} | {fmt(r['peak_rss_mb'])} MiB |")
            w("")

    if "freshness" in f:
        x = f["freshness"]
        w("## 3. Freshness")
        w("")
        w(f"At a steady {x['rate']:,} envelopes/s, a probe line every 200 ms goes through the agent; a "
          "live tail (`/api/v1/tail`) and a search poller (every 25 ms) note when each shows up.")
        w("")
        w("| | p50 | p99 | probes seen / sent |")
        w("|---|---|---|---|")
        w(f"| emit → live tail | {fmt(x.get('tail_p50_ms'), 1)} ms | {fmt(x.get('tail_p99_ms'), 1)} ms | "
          f"{fmt(x.get('tail_seen'))} / {fmt(x.get('probes_sent'))} |")
        w(f"| emit → searchable | {fmt(x.get('search_p50_ms'), 1)} ms | {fmt(x.get('search_p99_ms'), 1)} ms | "
          f"{fmt(x.get('search_seen'))} / {fmt(x.get('probes_sent'))} |")
        w("")
        w("The target for emit → live tail is a p99 of 50 ms at 10,000 envelopes/s; before tails read the "
          "bus (a doppler's fan-out, the agent's fixed 100 ms batching window) it was 267 ms.")
        w("")
        if x.get("wal_writes"):
            w(f"Meanwhile the WAL wrote {fmt(x['wal_writes'])} groups of records, each with its `fdatasync` "
              f"(`sluice_bus_wal_write_seconds`): {fmt(x.get('wal_writes_over_51ms'))} took more than 51 ms, "
              f"and 99% took at most {fmt(x.get('wal_write_p99_ms_at_most'), 1)} ms (the bucket bound). A line "
              "reaches a tail only once its group is synced.")
            w("")
    if "tail_cost" in f:
        t = f["tail_cost"]
        w("### Live tails")
        w("")
        w(f"Ingest throughput of {t['envelopes']:,} envelopes at full speed with no tail open and with 100 "
          "open (each selecting a source of its own that sends nothing, so each still sees every record: "
          "they share one reader of the live edge). Throughput drifts as the index grows, so the rounds run "
          "in blocks of four (without, with, with, without) and each block compares its pairs; the cost is "
          "the median over the blocks. The target is under 5% less.")
        w("")
        w("| tails open | envelopes/s (median of the rounds) |")
        w("|---|---|")
        w(f"| 0 | {fmt(t['without_tails_per_s'])} |")
        w(f"| 100 | {fmt(t['with_100_tails_per_s'])} |")
        blocks = ", ".join(f"{c:.1f}%" for c in t.get("block_costs_percent", []))
        w(f"| cost | {fmt(t['cost_percent'], 1)}% (blocks: {blocks or 'n/a'}) |")
        w("")
        if "hub_lagged" in t:
            w(f"The tails fell behind the shared reader {fmt(t['hub_lagged'])} times meanwhile "
              "(`sluice_tail_hub_lagged_total`).")
            w("")
    if "catch_up" in f:
        c = f["catch_up"]
        w(f"A tail resuming from the start of the bus (the bus where it still holds the records, the index "
          f"for the segments it released) caught up at {fmt(c['per_s'])} envelopes/s ({fmt(c['envelopes'])} in {fmt(c['seconds'], 1)} s).")
        w("")

    if "archive" in f:
        a = f["archive"]
        w("## 4. Archive size")
        w("")
        w("| | bytes | per raw byte |")
        w("|---|---|---|")
        w(f"| raw log lines | {fmt(a['raw_line_bytes'])} | 1 |")
        if "logs_parquet_bytes_flushed" in a:
            w(f"| Parquet `logs` table as flushed ({a['files_flushed']} files, all columns) | {fmt(a['logs_parquet_bytes_flushed'])} | {a['flushed_bytes_per_raw_byte']:.3f} |")
            w(f"| Parquet `logs` table compacted ({a['files']} files, sorted, all columns) | {fmt(a['logs_parquet_bytes'])} | {a['parquet_bytes_per_raw_byte']:.3f} |")
        else:
            w(f"| Parquet `logs` table (zstd level 3, all columns) | {fmt(a['logs_parquet_bytes'])} | {a['parquet_bytes_per_raw_byte']:.3f} |")
        w(f"| `zstd -3` of the same lines (64 MiB frames) | {fmt(a['zstd3_bytes'])} | {a['zstd3_bytes_per_raw_byte']:.3f} |")
        w("")
        compacted = ""
        if "compaction_s" in a:
            compacted = (f" As flushed it was {a['flushed_vs_zstd3']:.2f}×; `sluice archive compact --now` "
                         f"took {a['compaction_s']:.1f} s.")
        w(f"The archive is {a['parquet_vs_zstd3']:.2f}× the size of `zstd -3` of the raw text, while "
          "also holding timestamp, source, instance, tags and batch identity per line, queryable by column."
          f"{compacted} {a['files']} Parquet files in the `logs` table.")
        w("")

    if "tantivy_cli" in f:
        t = f["tantivy_cli"]
        w("## 5. Indexing ceiling: tantivy-cli on the same documents")
        w("")
        if "error" in t:
            w(t["error"])
        else:
            w(f"`tantivy index` (tantivy-cli 0.24) reads the corpus as NDJSON ({fmt(t['docs_json_bytes'] / 1e6, 1)} MB) "
              "into a schema like Sluice's (timestamp, source_id, instance_id as raw strings, message as text with positions).")
            w("")
            w("| indexer | lines/s | lines per CPU-second | MB/s of text |")
            w("|---|---|---|---|")
            for key, label in (("threads_1", "tantivy-cli `-t 1` (its default)"), ("threads_2", "tantivy-cli `-t 2`")):
                if key in t:
                    x = t[key]
                    w(f"| {label} | {fmt(x['docs_per_s'])} | {fmt(x['docs_per_cpu_s'])} | {fmt(x['mb_per_s'], 2)} |")
            if "replay" in f and "indexer" in f["replay"]:
                r = f["replay"]["indexer"]
                w(f"| Sluice indexer (alone, from the WAL) | {fmt(r['docs_per_s'])} | {fmt(r['docs_per_cpu_s'])} | {fmt(r['mb_per_s'], 2)} |")
                w("")
                w(f"Sluice's indexer runs at {ratio(r['docs_per_s'], t['threads_1']['docs_per_s'])} of tantivy-cli's "
                  f"single-thread rate in wall time and {ratio(r['docs_per_cpu_s'], t['threads_1']['docs_per_cpu_s'])} per CPU-second; "
                  "it also decodes envelopes from the bus, stores tags and batch identity, and commits every second.")
        w("")

    if "sql" in f:
        s = f["sql"]
        w("## 6. SQL: DataFusion in Sluice against DuckDB, same Parquet files")
        w("")
        w(f"Sluice's times are whole HTTP requests to `POST /api/v1/sql` (plan, list files, execute, JSON); "
          f"DuckDB {s['duckdb_version']} runs in the harness's process over `read_parquet` of the same "
          f"files with hive partitions (the catalog's live files, after `sluice archive compact --now`). "
          f"\"A day\" is {s['day']}.")
        w("")
        w("| query | Sluice (ms) | DuckDB (ms) | Sluice / DuckDB | rows |")
        w("|---|---|---|---|---|")
        for q in s["queries"]:
            w(f"| {q['name']} | {fmt(q['sluice_datafusion_ms'], 1)} | {fmt(q['duckdb_ms'], 1)} | {q['ratio']:.2f}× | {q['rows']} |")
        w("")
        w("<details><summary>The queries</summary>")
        w("")
        for q in s["queries"]:
            w(f"- {q['name']}: `{q['datafusion_query']}`" + (f" (DuckDB: `{q['duckdb_query']}`)" if q['duckdb_query'] != q['datafusion_query'] else ""))
        w("")
        w("</details>")
        w("")

    if "search" in f:
        s = f["search"]
        everything = [q["total"] for q in s["queries"] if q["params"]["query"] == "*" and q["total"]]
        documents = max(everything) if everything else s["documents"]
        w(f"## 7. Search latency ({fmt(documents)} lines indexed)")
        w("")
        w("Whole HTTP requests to `GET /api/v1/search` on the `sluice up` of sections 2 and 3 (the "
          "throughput load plus the freshness runs), newest first, exact totals; the first of the "
          "repetitions runs on a cold page cache, hence the p90.")
        w("")
        w("| query | median | p90 | matches |")
        w("|---|---|---|---|")
        for q in s["queries"]:
            w(f"| {q['name']}: `{q['params']['query']}`{' with histogram' if 'histogram' in q['params'] else ''} | "
              f"{fmt(q['median_ms'], 1)} ms | {fmt(q['p90_ms'], 1)} ms | {fmt(q['total'])} |")
        w("")

    if "patterns" in f:
        p = f["patterns"]
        w("## Patterns: the miner on the labelled Loghub samples")
        w("")
        w("Each system's lines (the `Content` column) mined as one source by `sluice-patterns` with its one "
          "configuration, in the sample's order; grouping accuracy (GA) as the logparser benchmark defines it "
          "(a line counts when its group is exactly its true group), beside Drain's published figures "
          "(ICSE-SEIP 2019, tuned with a regular expression set per system). The miner alone; the next "
          "section measures the same through the ingest path.")
        w("")
        w("| system | GA | Drain | patterns | true groups |")
        w("|---|---|---|---|---|")
        for row in p["systems"]:
            w(f"| {row['system']} | {row['ga']:.3f} | {fmt(row.get('drain_ga'), 3)} | {fmt(row['patterns'])} | "
              f"{fmt(row['true_groups'])} |")
        drains = [row["drain_ga"] for row in p["systems"] if row.get("drain_ga") is not None]
        w(f"| mean | {p['mean_ga']:.3f} | {fmt(sum(drains) / len(drains), 3) if drains else 'n/a'} | | |")
        w("")
        w(f"Speed on one thread, {p['rounds']} rounds over every sample: {fmt(p['warm_lines_per_s'])} lines/s "
          f"with the shapes known (the steady state), {fmt(p['cold_lines_per_s'])} lines/s with fresh miners "
          "each round (the target is 500,000 lines/s per core; Drain in Python does about 8,500).")
        if "unique_lines_per_s" in p:
            w(f"The worst case, 200,000 unique random lines into one source (every line a new shape, the miner "
              f"at its cap and evicting): {fmt(p['unique_lines_per_s'])} lines/s, "
              f"{fmt(p['unique_evictions'])} masked lines evicted.")
        w("")

    if "patterns_ingest" in f:
        p = f["patterns_ingest"]
        drain = {row["system"]: row.get("drain_ga") for row in f.get("patterns", {}).get("systems", [])}
        w("## Patterns through the ingest path")
        w("")
        w("Each labelled system's 2,000 lines posted to `sluice up`'s `_bulk` source as a parsing shipper "
          "sends them (`Content` as `message`, the header fields as fields, so tags), mined at the doppler; "
          "each line's `pattern_id` read back with SQL from the archive (`logs`) and resolved through "
          "`patterns.merged_into` (the ids lines got before their pattern generalised). GA unresolved: "
          "the raw ids as stored.")
        w("")
        w("| system | GA | GA unresolved | Drain | patterns | true groups |")
        w("|---|---|---|---|---|---|")
        for row in p["systems"]:
            w(f"| {row['system']} | {row['ga']:.3f} | {row['ga_unresolved']:.3f} | "
              f"{fmt(drain.get(row['system']), 3)} | {fmt(row['patterns'])} | {fmt(row['true_groups'])} |")
        w(f"| mean | {p['mean_ga']:.3f} | | | | |")
        w("")
        off, on = p.get("ingest_mining_off"), p.get("ingest_mining_on")
        if off and on:
            w("What mining costs `sluice up` (the generator's Loghub-shaped lines through the agent, until "
              "all are indexed), and a source of unique random lines (every line a new shape: the miner at "
              "its cap of 10,000 per source, evicting) beside Loghub lines, both from `sluice emit`:")
            w("")
            w("| run | envelopes/s | envelopes per CPU second |")
            w("|---|---|---|")
            w(f"| mining off | {fmt(off['envelopes_per_s'])} | {fmt(off['envelopes_per_cpu_s'])} |")
            w(f"| mining on | {fmt(on['envelopes_per_s'])} | {fmt(on['envelopes_per_cpu_s'])} |")
            w("")
            if "emit_unique" in p:
                rate = lambda key: p.get(key, {}).get("lines_per_s")
                w("`sluice emit` (one source, batches of 1,000, until all are indexed): Loghub lines, and unique random "
                  "lines (random words: every line a new shape for the miner, and every word a new term for the index):")
                w("")
                w("| lines | mining off, lines/s | mining on, lines/s | on / off |")
                w("|---|---|---|---|")
                for name, label in (("loghub", "Loghub"), ("unique", "unique random")):
                    on_rate, off_rate = rate(f"emit_{name}"), rate(f"emit_{name}_off")
                    share = f"{on_rate / off_rate:.2f}" if on_rate and off_rate else "n/a"
                    w(f"| {label} | {fmt(off_rate)} | {fmt(on_rate)} | {share} |")
                w("")
                w(f"Unique lines with mining on run at {rate('emit_unique') / rate('emit_loghub'):.2f} of Loghub lines "
                  f"with mining on; {fmt(p.get('unique_evictions'))} masked lines evicted, "
                  f"{fmt(p.get('unique_leaves'))} held after; peak RSS {fmt(p.get('peak_rss_mb'))} MB.")
                w("")

    rss = peak_rss(f)
    if rss:
        w("## 8. Peak RSS per role")
        w("")
        w("| process | peak RSS (VmHWM) |")
        w("|---|---|")
        for name, value in rss:
            w(f"| {name} | {fmt(value)} MiB |")
        w("")

    sources = f.get("sources")
    if sources:
        w(f"## Agent sources: ingest rate ({fmt(sources['records'])} Loghub lines each)")
        w("")
        w("`sluice up` with every role running; the client on the same two cores. Syslog over "
          "UDP is not measured (past the kernel's receive buffer it drops by design); host "
          "metrics and Prometheus scraping are periodic, a few records per interval.")
        w("")
        w("| source | records/s | MB/s sent | records per CPU-second of `sluice up` | client |")
        w("|---|---|---|---|---|")
        for name, label in (("elasticsearch", "Elasticsearch `_bulk` (until acknowledged)"),
                            ("syslog_tcp", "syslog TCP (until queued for the doppler)"),
                            ("otlp_http", "OTLP/HTTP logs (until acknowledged)"),
                            ("files", "followed file (until acknowledged)")):
            if name in sources:
                row = sources[name]
                w(f"| {label} | {fmt(row['records_per_s'])} | {fmt(row['mb_per_s'], 1)} | "
                  f"{fmt(row['records_per_cpu_s'])} | {row['client']} |")
        w("")

    wal = f.get("wal")
    if wal:
        ceiling = wal["ceiling"]
        w("## WAL durability (`bus.wal.durability`)")
        w("")
        w("The embedded WAL alone (`bus/examples/wal_durability.rs`): 20 kB records, about one agent "
          "batch of 100 log lines each, appended by concurrent writers as dopplers serve concurrent "
          "agents. `fsync` answers each append once its group is written and `fdatasync`ed; `flush` "
          "once written, syncing every 200 ms. The disk's ceiling, measured with dd in the same run: "
          f"synced 20 kB writes {fmt(ceiling['synced_20kB']['mb_per_s'], 1)} MB/s "
          f"({fmt(ceiling['synced_20kB']['writes_per_s'])} writes/s), synced 320 kB writes (a "
          f"16-record group) {fmt(ceiling['synced_320kB']['mb_per_s'], 1)} MB/s, buffered writes "
          f"{fmt(ceiling['buffered_1MiB']['mb_per_s'], 1)} MB/s.")
        w("")
        w("| durability | writers | records/s | MB/s | vs dd, same pattern | append p50 | append p99 |")
        w("|---|---|---|---|---|---|---|")
        for run in wal["runs"]:
            if run["durability"] == "fsync":
                limit = ceiling["synced_320kB" if run["writers"] > 1 else "synced_20kB"]["mb_per_s"]
            else:
                limit = ceiling["buffered_1MiB"]["mb_per_s"]
            w(f"| `{run['durability']}` | {run['writers']} | {fmt(run['records_per_s'])} | "
              f"{fmt(run['mb_per_s'], 1)} | {run['mb_per_s'] / limit * 100:.0f}% | "
              f"{run['latency_ms_p50']:.2f} ms | {run['latency_ms_p99']:.2f} ms |")
        w("")

    over = f.get("overload")
    if over and "runs" in over:
        w("## Overload: ten times the sustainable rate for a minute")
        w("")
        w("`sluice up` (embedded WAL), first driven as fast as it takes envelopes until all are "
          "indexed and archived (the sustainable rate, measured in the same run), then offered ten "
          f"times that rate open-loop for {over['seconds']} s, twice (`sluice-bench overload`: "
          "unary `Send` requests of 500 envelopes on a fixed schedule whatever the agent answers). "
          "The first flood keeps at most 256 requests waiting, so a request due while all wait is "
          "held back on the client, as a client blocked on its agent is; the second keeps up to "
          "4,096 waiting, so requests wait past `agent.pending_wait` and are refused. The load "
          "generator shares the two cores.")
        w("")
        w(f"Sustainable rate: {fmt(over['sustainable_envelopes_per_s'])} envelopes/s. "
          f"Peak RSS of `sluice up` over the whole phase (VmHWM): {fmt(over['peak_rss_mb'])} MiB.")
        w("")
        w("| requests waiting at most | offered | accepted (durable) | refused, status the client saw | agent counted `backpressure` | held back by the client | accepted request p50 / p99 | lines expected / indexed / archived | audit: unexplained gaps | peak RSS during |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for run in over["runs"]:
            refused = ", ".join(f"{k} {fmt(v)}" for k, v in run["refused"].items()) or "none"
            w(f"| {fmt(run['max_in_flight'])} | {fmt(run['offered_envelopes_per_s'])}/s "
              f"({run['offered_factor']:.1f}×) | {fmt(run['accepted'])} ({fmt(run['accepted_per_s'])}/s) | "
              f"{refused} | {fmt(run['agent_counted_backpressure'])} | {fmt(run['held_back'])} | "
              f"{fmt(run['accepted_p50_ms'])} / {fmt(run['accepted_p99_ms'])} ms | "
              f"{fmt(run['lines_expected'])} / {fmt(run['lines_indexed'])} / {fmt(run['lines_archived'])} | "
              f"{run['unexplained_gaps']} | {fmt(run['peak_rss_mb_during'])} MiB |")
        w("")

    if made:
        w("## Plots")
        w("")
        for title, path in made:
            w(f"![{title}]({os.path.relpath(path, BENCH)})")
            w("")

    if bottlenecks:
        w(bottlenecks.rstrip())
        w("")

    w("## How this was measured")
    w("")
    w(f"Phase times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report.get("phase_seconds", {}).items())
      + f"; total {sum(report.get('phase_seconds', {}).values()):.0f} s (the build and tool installs not counted).")
    w("")
    w("Commands the harness ran (besides starting the roles from generated configs):")
    w("")
    w("```")
    for command in dict.fromkeys(report.get("commands", [])):
        w(command)
    w("```")
    w("")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=os.path.join(BENCH, "report.json"))
    parser.add_argument("--out", default=os.path.join(BENCH, "REPORT.md"))
    parser.add_argument("--plots", default=os.path.join(BENCH, "plots"))
    parser.add_argument("--bottlenecks", default=os.path.join(BENCH, "bottlenecks.md"))
    args = parser.parse_args()
    with open(args.json) as handle:
        report = json.load(handle)
    made = plots(report, args.plots)
    bottlenecks = ""
    if os.path.exists(args.bottlenecks):
        with open(args.bottlenecks) as handle:
            bottlenecks = handle.read()
    with open(args.out, "w") as handle:
        handle.write(markdown(report, made, bottlenecks))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
