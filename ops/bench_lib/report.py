"""Targets, and the results as aligned text tables (stdout) or Markdown tables."""

from __future__ import annotations

from typing import Any

__all__ = ["render", "targets"]

Table = tuple[str, list[str], list[list[str]]]  # title, header, rows


def _t(
    name: str, goal: str, measured: float | None, met: bool | None, note: str = ""
) -> dict[str, Any]:
    return {"name": name, "target": goal, "measured": measured, "met": met, "note": note}


def _find(entries: list[dict[str, Any]], kind: str, route: str) -> dict[str, Any] | None:
    return next((e for e in entries if e["input_kind"] == kind and e["route"] == route), None)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The brief's targets against what was measured (``met`` None: not measured)."""
    out: list[dict[str, Any]] = []
    latency = results.get("latency")
    if latency:
        for series in ("isolated", "back_to_back"):
            p99 = latency[f"renamed_{series}"]["to_claim"]["p99"]
            name = f"p99 pick-up after a rename, {series.replace('_', ' ')} (to claim)"
            out.append(_t(name, "<= 0.1 s", p99, p99 <= 0.1))
    throughput: list[dict[str, Any]] = results.get("throughput") or []
    docx = _find(throughput, "docx_small", "docx->md")
    if docx and "docling_cli_per_file" in docx["speedup"]:
        x = docx["speedup"]["docling_cli_per_file"]
        out.append(_t("small docx->md vs docling CLI per file", ">= 100x", x, x >= 100))
    html = _find(throughput, "html_small", "html->pdf")
    if html and "weasyprint_cli_per_file" in html["speedup"]:
        x = html["speedup"]["weasyprint_cli_per_file"]
        out.append(_t("small html->pdf vs weasyprint CLI per file", ">= 10x", x, x >= 10))
    md = _find(throughput, "md_small", "md->docx")
    if md and "pandoc_cli_per_file" in md["speedup"]:
        x = md["speedup"]["pandoc_cli_per_file"]
        out.append(_t("small md->docx (daemon) vs pandoc CLI per file", ">= 1.5x", x, x >= 1.5))
        y = md.get("speedup_in_process", {}).get("pandoc_cli_per_file")
        if y is not None:
            name = (
                f"small md->docx warm route vs pandoc CLI per file, "
                f"both {md['lane_workers']} at a time"
            )
            out.append(_t(name, ">= 1.5x", y, y >= 1.5))

    for entry in throughput:
        ratio = entry.get("overhead_ratio")
        if ratio is not None:
            out.append(
                _t(
                    f"overhead {entry['input_kind']} {entry['route']} vs warm in-process loop",
                    "<= 1.15x",
                    ratio,
                    ratio <= 1.15,
                )
            )
    reuse = results.get("reuse")
    if reuse:
        n = reuse["copies_converted"]
        out.append(_t(f"conversions for {reuse['files']} copies of one PDF", "1", n, n == 1))
    scale = results.get("scale")
    if scale:
        rss = max(scale["main_rss_peak_hwm_mb"], scale["main_rss_peak_sampled_mb"])
        out.append(
            _t(
                f"main-process peak RSS with {scale['files']} files queued",
                "<= 300 MB",
                rss,
                rss <= 300,
            )
        )
        lost = scale["lost"]
        out.append(_t(f"files lost out of {scale['files']}", "0", lost, lost == 0))
    scan = results.get("scan")
    if scan:
        estimate = scan["service_rescan_100k_seconds_estimate"]
        note = "" if scan["idle_files"] >= 100_000 else f"scaled from {scan['idle_files']} files"
        out.append(_t("rescan of 100k idle files", "<= 5 s", estimate, estimate <= 5, note))
        during = (scan.get("daemon") or {}).get("pickup_to_claim_during_rescans")
        if during and during["n"]:
            p99 = during["p99"]
            name = f"p99 pick-up with {scan['idle_files']} idle files, rescans every 5 s"
            out.append(_t(name, "<= 0.1 s", p99, p99 <= 0.1))
    return out


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:g}" for k, v in value.items()) or "none"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _tables(report: dict[str, Any]) -> list[Table]:
    results = report["results"]
    tables: list[Table] = []
    out = results.get("scaleout")
    if out and "runs" in out:
        rows = [
            [n, str(r["jobs"]), f"{r['seconds']:.2f}", f"{r['jobs_per_second']:.2f}",
             f"{r['efficiency']:.2f}"]
            for n, r in out["runs"].items()
        ]  # fmt: skip
        tables.append(
            (
                f"Scale-out: worker nodes holding their lane {out['hold_seconds']} s per job",
                ["workers", "jobs", "seconds", "jobs/s", "efficiency"],
                rows,
            )
        )
        per = out["per_job"]
        tables.append(
            (
                "Engine cost per small real job (html→md, one at a time, drop → sidecar)",
                ["path", "median seconds"],
                [
                    ["embedded", f"{per['embedded_median_seconds']:.3f}"],
                    ["engine (ingest + 1 worker node)", f"{per['engine_median_seconds']:.3f}"],
                    ["ratio engine / embedded", f"{per['ratio']:.2f}"],
                ],
            )
        )
    lat = results.get("latency")
    if lat:
        rows = []
        for label, key in (
            ("renamed in, isolated", "renamed_isolated"),
            ("renamed in, back to back", "renamed_back_to_back"),
            ("written in place", "in_place"),
        ):
            for point in ("to_claim", "to_sidecar"):
                s = lat[key][point]
                rows.append(
                    [
                        f"{label} -> {point[3:]}",
                        _f(s["n"]),
                        _f(s["p50"]),
                        _f(s["p95"]),
                        _f(s["p99"]),
                        _f(s["max"]),
                    ]
                )
        title = (
            f"Pick-up latency, seconds ({lat['route']}; settle window {lat['settle_seconds']} s, "
            f"supervisor tick {lat['tick_seconds']} s, observer {lat['observer']})"
        )
        tables.append((title, ["from file complete", "n", "p50", "p95", "p99", "max"], rows))
    tp = results.get("throughput")
    if tp:
        rows = []
        for e in tp:
            first = True
            alts = list(e["alternatives"].items()) or [("", None)]
            for name, alt in alts:
                rows.append(
                    [
                        f"{e['input_kind']} -> {e['route'].split('->')[1]}" if first else "",
                        f"{e['daemon']['files_per_second']:.2f}" if first else "",
                        f"{e['in_process']['files_per_second']:.2f}" if first else "",
                        f"{e['overhead_ratio']:.2f}x" if first and e["overhead_ratio"] else "",
                        name.replace("_", " ") if name else "-",
                        f"{alt['files_per_second']:.3f} (x{alt['parallel']})" if alt else "",
                        f"{e['speedup'][name]:.1f}x" if name in e["speedup"] else "",
                    ]
                )
                first = False
        tables.append(
            (
                "Throughput, files/s (median of repetitions; in-process and per-file CLIs use "
                "the lane's parallelism)",
                [
                    "input -> target",
                    "daemon",
                    "in-process",
                    "overhead",
                    "alternative",
                    "alt files/s",
                    "speed-up",
                ],
                rows,
            )
        )
    reuse = results.get("reuse")
    if reuse:
        rows = [
            ["PDFs per batch", _f(reuse["files"])],
            [
                "different PDFs: drain s / converted",
                f"{_f(reuse['different_drain_seconds'], 1)} / {reuse['different_converted']}",
            ],
            [
                "copies of one PDF: drain s / converted",
                f"{_f(reuse['copies_drain_seconds'], 1)} / {reuse['copies_converted']}",
            ],
            ["copies served from the cache", _f(reuse["copies_reused"])],
            ["speed-up (different / copies)", f"{_f(reuse['speedup'], 1)}x"],
            ["median convert s (different)", _f(reuse["median_convert_seconds"])],
            ["conversion s saved (metric)", _f(reuse["reuse_seconds_saved"], 1)],
        ]
        tables.append((f"Result reuse ({reuse['route']}, tiny models)", ["measure", "value"], rows))
    scale = results.get("scale")
    if scale:
        peak_main = max(scale["main_rss_peak_hwm_mb"], scale["main_rss_peak_sampled_mb"])
        rows = [
            ["files dropped at once", _f(scale["files"])],
            ["time to drain, s", _f(scale["drain_seconds"], 1)],
            ["files/s", _f(scale["files_per_second"], 1)],
            ["lost / failed", f"{scale['lost']} / {scale['failed']}"],
            ["main RSS idle -> peak, MB", f"{scale['main_rss_idle_mb']} -> {peak_main}"],
            ["main CPU, ms per file", _f(scale["main_cpu_ms_per_file"], 2)],
            ["worker peak RSS, MB", ", ".join(_f(v, 0) for v in scale["worker_rss_peak_mb"])],
            ["worker restarts", _f(scale["worker_restarts"])],
        ]
        tables.append((f"Scale ({scale['route']})", ["measure", "value"], rows))
    scan = results.get("scan")
    if scan:
        rows = [
            ["idle files in the inbox", _f(scan["idle_files"])],
            ["scan_inbox walk, s", _f(scan["scan_inbox_seconds"])],
            [
                "Service.rescan first / later, s",
                _f(scan["service_rescan_first_seconds"])
                + " / "
                + _f(scan["service_rescan_seconds"]),
            ],
            ["of which in the event loop, s", _f(scan["service_rescan_in_event_loop_seconds"])],
            ["rescan per file, us", _f(scan["service_rescan_us_per_file"], 2)],
            ["rescan of 100k, s (est.)", _f(scan["service_rescan_100k_seconds_estimate"], 2)],
        ]
        d = scan.get("daemon")
        if d:
            rows += [
                [
                    "daemon listening after, s (empty inbox)",
                    _f(d["listening_seconds"], 2)
                    + f" ({_f(d['listening_seconds_empty_inbox'], 2)})",
                ],
                [
                    f"main CPU with rescans every {d['rescan_interval_seconds']} s",
                    f"{100 * d['main_cpu_fraction']:.1f} % of a core",
                ],
                ["main RSS, MB", _f(d["main_rss_mb"], 1)],
                [
                    "pick-up p50 / p99 during rescans, s",
                    f"{_f(d['pickup_to_claim_during_rescans']['p50'])} / "
                    f"{_f(d['pickup_to_claim_during_rescans']['p99'])}",
                ],
            ]
        tables.append((f"Scan ({scan['idle_file_kind']})", ["measure", "value"], rows))
    memory = results.get("memory")
    if memory:
        rows = []
        for key in ("without_recycling", "with_recycling"):
            m = memory[key]
            series = " ".join(f"{p['jobs_done']}:{p['max_worker_rss_mb']:.0f}" for p in m["series"])
            rows.append(
                [
                    "never" if m["recycle_after_jobs"] is None else str(m["recycle_after_jobs"]),
                    _f(m["answered"]),
                    series,
                    _f(m["peak_worker_rss_mb"], 0),
                    _f(m["growth_mb"], 1),
                    _f(m["cpu_worker_processes_seen"]),
                ]
            )
        tables.append(
            (
                f"Worker memory ({memory['route_mix']})",
                [
                    "recycle after",
                    "jobs",
                    "jobs done: max CPU-worker RSS MB",
                    "peak MB",
                    "growth MB",
                    "CPU workers seen",
                ],
                rows,
            )
        )
    outputs = results.get("outputs")
    if outputs:
        from ops.bench_lib.outputs import rows as output_rows

        tables.append(
            (
                f"Output options, pdf → md ({outputs['pages']} pages, {outputs['rounds']} rounds)",
                ["options", "best s", "median s", "best vs placeholder"],
                output_rows(outputs),
            )
        )
    tgt = report.get("targets") or []
    if tgt:
        rows = [
            [
                t["name"],
                t["target"],
                _f(t["measured"]),
                "-" if t["met"] is None else ("yes" if t["met"] else "NO"),
                t["note"],
            ]
            for t in tgt
        ]
        tables.append(("Targets", ["target", "goal", "measured", "met", "note"], rows))
    return tables


def render(report: dict[str, Any], *, markdown: bool = False) -> str:
    m = report["machine"]
    head = (
        f"Sir Convert-a-Lot benchmark, mode {report['mode']}: {m['nproc']} x {m['cpu_model']}, "
        f"{m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}; "
        f"{report['duration_seconds']:.0f} s; load average (1 min) "
        f"{m['loadavg_start'][0]} at the start, {m.get('loadavg_end', ['-'])[0]} at the end"
    )
    parts = [head, ""]
    for title, header, rows in _tables(report):
        if markdown:
            parts.append(f"**{title}**\n")
            parts.append("| " + " | ".join(header) + " |")
            parts.append("|" + "|".join("---" for _ in header) + "|")
            parts += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
        else:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            parts.append(title)
            parts.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
            for row in rows:
                parts.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        parts.append("")
    if report.get("errors"):
        parts.append("Errors:")
        parts += [f"  {e}" for e in report["errors"]]
    return "\n".join(parts).rstrip() + "\n"
