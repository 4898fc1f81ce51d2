"""The report: the table, the ratios against the baselines, the targets of issue 13, the chart."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import psutil


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':<9} {'design':<9} {'repl':>4} {'sockets':>7} {'tracks':>6} {'rate/s':>6} "
        f"{'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu %':>6} {'us/msg':>7} {'useful/cpu-s':>12} "
        f"{'us/comment':>10} {'KiB/sock':>8} {'open s':>6} {'client%':>7} {'closed':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if r["scenario"] == "write":
            continue
        lat = r.get("latency", {})
        lines.append(
            f"{r['scenario']:<9} {r['design']:<9} {r['replicas']:>4} "
            f"{r.get('opened', 0):>7} {r['tracks']:>6} {r['rate']:>6g} "
            f"{figure(r.get('messages_per_s')):>8} {figure(lat.get('p50_ms')):>7} {figure(lat.get('p99_ms')):>7} "
            f"{figure(r.get('server_cpu_pct')):>6} {figure(r.get('cpu_us_per_message')):>7} "
            f"{figure(r.get('useful_per_cpu_s')):>12} {figure(r.get('cpu_us_per_comment')):>10} "
            f"{figure(r.get('rss_per_socket_kib')):>8} {figure(r.get('open_seconds')):>6} "
            f"{figure(r.get('client_cpu_pct')):>7} {figure(r.get('closed_during')):>6}"
        )
    for r in results:
        if r["scenario"] == "write":
            lines.append(
                f"write cost: SQL {r['sql_plain_per_s']}/s without triggers, {r['sql_triggers_per_s']}/s with "
                f"({r['trigger_cost_pct']}% cost; {r['workers']} connections); API on one replica "
                f"{r['api_plain_per_s']}/s without, {r['api_triggers_per_s']}/s with ({r['api_trigger_cost_pct']}% cost; "
                f"{4 * r['workers']} clients); {r['seconds']} s each, in {r.get('rounds', 1)} alternating rounds "
                f"(cost per round: SQL {r.get('trigger_cost_pct_rounds')}, API {r.get('api_trigger_cost_pct_rounds')})"
            )
    return "\n".join(lines)


def figure(v: Any) -> str:
    """A figure as the report prints it."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if v < 1000 else f"{v:.0f}"
    return str(v)


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for scenario in ("hot", "catalog", "fanout"):
        ours = _pick(results, scenario, "tracktalk")
        if ours is None:
            continue
        for r in results:
            if r["scenario"] != scenario or r["design"] == "tracktalk":
                continue
            row: dict[str, Any] = {"scenario": scenario, "versus": r["design"]}
            for key, get in (
                ("messages_per_s", lambda x: x.get("messages_per_s")),
                ("useful_per_cpu_s", lambda x: x.get("useful_per_cpu_s")),
                ("p50_ms", lambda x: x.get("latency", {}).get("p50_ms")),
                ("p99_ms", lambda x: x.get("latency", {}).get("p99_ms")),
                ("cpu_us_per_message", lambda x: x.get("cpu_us_per_message")),
                ("rss_per_socket_kib", lambda x: x.get("rss_per_socket_kib")),
            ):
                a, b = get(ours), get(r)
                row[key] = round(a / b, 2) if a is not None and b else None
            out.append(row)
    return out


def _pick(results: list[dict[str, Any]], scenario: str, design: str, **match: Any) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in results
            if r["scenario"] == scenario
            and r["design"] == design
            and all(r.get(k) == v for k, v in match.items())
        ),
        None,
    )


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13's targets against this run: each row's figure, its target, and whether it is met."""
    rows: list[dict[str, Any]] = []

    def row(figure: str, measured: float | None, target: float, better: str, unit: str = "") -> None:
        met = None if measured is None else (measured <= target if better == "lower" else measured >= target)
        rows.append({"figure": figure, "measured": measured, "target": target, "unit": unit, "met": met})

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
        x, y = (a or {}).get(key), (b or {}).get(key)
        return round(x / y, 2) if x is not None and y else None

    hot, cat = _pick(results, "hot", "tracktalk"), _pick(results, "catalog", "tracktalk")
    if hot is not None:
        row("hot: p99 commit -> socket", hot.get("latency", {}).get("p99_ms"), 20, "lower", "ms")
        row(
            "hot: useful/cpu-s vs channels",
            ratio(hot, _pick(results, "hot", "channels"), "useful_per_cpu_s"),
            1.5,
            "higher",
            "x",
        )
        row(
            "hot: useful/cpu-s vs seed (redis)",
            ratio(hot, _pick(results, "hot", "redis"), "useful_per_cpu_s"),
            1.2,
            "higher",
            "x",
        )
    if cat is not None:
        row(
            "catalog: useful/cpu-s vs channels",
            ratio(cat, _pick(results, "catalog", "channels"), "useful_per_cpu_s"),
            1.5,
            "higher",
            "x",
        )
        row("catalog: p99 commit -> socket", cat.get("latency", {}).get("p99_ms"), 2, "lower", "ms")
        row("catalog: open the sockets (2 replicas)", cat.get("open_seconds"), 1.5, "lower", "s")
    fan = _pick(results, "fanout", "tracktalk")
    if fan is not None:
        row(
            "fan-out: CPU per frame vs floor",
            ratio(fan, _pick(results, "fanout", "floor"), "cpu_us_per_message"),
            1.0,
            "lower",
            "x",
        )
    for r in results:
        if r["scenario"] == "idle":
            row(f"idle: KiB per socket at {r.get('opened')}", r.get("rss_per_socket_kib"), 20, "lower", "KiB")
    away = _pick(results, "elsewhere", "tracktalk")
    if away is not None:
        row("elsewhere: CPU per comment on other tracks", away.get("cpu_us_per_comment"), 15, "lower", "us")
    return rows


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"tracktalk": "#2b6cb0", "floor": "#718096", "redis": "#c53030", "channels": "#2f855a"}
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    panels = [
        (
            "hot",
            "hot: commit → receive p50 / p99 (ms)",
            lambda r: (r.get("latency", {}).get("p50_ms"), r.get("latency", {}).get("p99_ms")),
        ),
        ("hot", "hot: new_comment deliveries per server CPU-s", lambda r: (r.get("useful_per_cpu_s"), None)),
        ("catalog", "catalog: deliveries per server CPU-s", lambda r: (r.get("useful_per_cpu_s"), None)),
        ("fanout", "fan-out: server CPU µs per frame", lambda r: (r.get("cpu_us_per_message"), None)),
    ]
    for ax, (scenario, title, get) in zip(axes, panels, strict=True):
        rows = [r for r in results if r["scenario"] == scenario]
        names = [r["design"] for r in rows]
        first = [get(r)[0] or 0 for r in rows]
        ax.bar(names, first, color=[colors.get(n, "#999") for n in names])
        second = [get(r)[1] for r in rows]
        if any(v is not None for v in second):
            ax.scatter(
                names, [v or 0 for v in second], color="black", marker="_", s=300, zorder=3, label="p99"
            )
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log" if title.startswith("hot: commit") else "linear")
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
