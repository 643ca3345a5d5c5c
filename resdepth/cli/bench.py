"""`resdepth bench`: images/s of resdepth's training step against the common PIL + DataLoader recipe, and with
--fuse, a fused job of K seeds against K separate runs; the rows as tables and, with --json, as a file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from ..bench.estimate import remember_bench
from ..bench.throughput import BenchConfig, BenchRow, run_benchmark
from ..results.runs import write_json
from ..train.data import DataConfig
from ..train.protocol import KIND_HELP
from .console import console, errors, ratio, thousands
from .options import CHANNELS_LAST, CUDA_GRAPH, DEVICE, PRECISION, THREADS, check_output_file, parse_list


def bench(
    depths: Annotated[str, typer.Option(help="Comma-separated depths (6n+2).")] = "20,56,110",
    kind: Annotated[str, typer.Option(help=KIND_HELP)] = "residual",
    device: DEVICE = None,
    iterations: Annotated[int, typer.Option(help="Timed training steps per window.")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed steps per path and depth first (compilation included).")] = 10,
    rounds: Annotated[int, typer.Option(help="Windows per path, resdepth and naive alternating; the median "
                                             "counts.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size (images).")] = 128,
    num_workers: Annotated[int, typer.Option(help="DataLoader worker processes of the naive recipe.")] = 2,
    naive: Annotated[bool, typer.Option("--naive/--no-naive",
                                        help="Time the naive PIL + DataLoader recipe too.")] = True,
    threads: THREADS = None, precision: PRECISION = None, channels_last: CHANNELS_LAST = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the training step. "
                       "\\[default: as a paper-length `resdepth train` run: on for CPU, off on CUDA]")] = None,
    cuda_graph: CUDA_GRAPH = None,
    data_dir: Annotated[str | None, typer.Option(help="CIFAR-10 folder (torchvision's download) instead of "
                                                         "synthetic images.")] = None,
    synthetic_train: Annotated[int, typer.Option(help="Synthetic training images (both paths draw batches from "
                                                      "them).")] = 4096,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the rows, every window included, to "
                                                                    "this JSON file.")] = None,
    fuse: Annotated[str | None, typer.Option(help="Instead: per depth and K, aggregate img/s of one fused job of K "
                                                  "seeds vs K runs in sequence vs K processes at once, e.g. "
                                                  "1,2,4,8.")] = None,
    processes: Annotated[bool, typer.Option("--processes/--no-processes",
                                            help="With --fuse: time K processes at once too.")] = True,
    matmul_size: Annotated[int, typer.Option(help="Rows and columns of the matmul whose GFLOP/s the rows are "
                                                  "compared with.")] = BenchConfig.matmul_size,
) -> None:
    """Images/s of resdepth's training step vs the common PIL + DataLoader recipe, FLOP/s and peak memory."""
    if json_out is not None:
        check_output_file(json_out, "--json", "bench.json")  # before minutes of measuring, not after
    data = (DataConfig(dataset="cifar10", data_dir=data_dir) if data_dir else
            DataConfig(dataset="synthetic", synthetic_train=synthetic_train, synthetic_test=16))
    config = BenchConfig(depths=tuple(parse_list(depths, int, "--depths")), kind=kind, device=device or "auto",
                         iterations=iterations, warmup=warmup, rounds=rounds, batch_size=batch_size,
                         num_workers=num_workers, naive=naive and fuse is None, threads=threads,
                         precision=precision or "auto", channels_last=channels_last, compile=compile,
                         cuda_graph=bool(cuda_graph), data=data, matmul_size=matmul_size)
    if fuse is not None:  # fused vs separate runs, instead of resdepth vs the naive recipe
        raise typer.Exit(bench_fused(config, fuse, processes, json_out))
    rows = run_benchmark(config, on_progress=lambda line: errors.print(f"[dim]{line}[/]", highlight=False),
                         on_row=json_rows(json_out, {"config": asdict(config)}, "rows"))
    remember_bench(config, rows)  # `sweep --dry-run` estimates times from these speeds
    console.print(render_bench(kind, rows))


def bench_fused(config: BenchConfig, sizes: str, processes: bool, json_out: Path | None) -> int:
    """`bench --fuse`: the fused job against separate runs; prints the table, returns the exit code."""
    from ..bench.fused import parse_sizes, run_fuse_benchmark

    chosen = parse_sizes(sizes)
    rows = run_fuse_benchmark(config, chosen, processes,
                              on_progress=lambda line: errors.print(f"[dim]{line}[/]", highlight=False),
                              on_row=json_rows(json_out, {"config": asdict(config), "fuse": list(chosen)},
                                               "fused_rows"))
    console.print(render_fuse_bench(rows))
    return 0


def json_rows(path: Path | None, header: dict[str, Any], key: str) -> Callable[[Any], None]:
    """--json's writer: the file rewritten whole (atomically) with every row measured so far, as each comes, so a
    benchmark stopped at a time limit leaves the rows it measured."""
    rows: list[dict[str, Any]] = []

    def write(row: Any) -> None:
        rows.append(asdict(row))
        if path is not None:
            write_json(path, {**header, key: rows})
    return write


def render_fuse_bench(rows: list[Any]) -> Table:
    """Per depth and K: aggregate img/s of the three ways, the fused job's ratios, peak memory; fits 80 columns."""
    first = rows[0]
    title = (f"{first.kind}: K seeds fused vs separate, on {first.device_name} ({first.device}, {first.precision}; "
             f"fused and single: {first.threads} threads, K processes: cores / K threads each)")
    steps = "compiled" if first.compile else "eager"
    steps += ", the single run's replayed as a CUDA graph" if first.cuda_graph else ""
    caption = (f"img/s = images x models per second, steps {steps}; vs: the fused job's ratio to each; "
               f"MB: {first.memory_measure}, the processes' summed")
    view = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, caption=caption)
    for column in ("depth", "K", "fused\nimg/s", "in seq.\nimg/s", "K procs\nimg/s", "vs\nseq.", "vs\nprocs",
                   "MB\nfused", "MB\nsingle", "MB\nprocs"):
        view.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        view.add_row(str(row.depth), str(row.models), thousands(row.fused_images_per_second),
                     thousands(row.sequence_images_per_second), thousands(row.processes_images_per_second),
                     f"{row.fused_vs_sequence:.2f}x", ratio(row.fused_vs_processes),
                     thousands(row.fused_peak_memory_mb), thousands(row.single_peak_memory_mb),
                     thousands(row.processes_peak_memory_mb))
    return view


def render_bench(kind: str, rows: list[BenchRow]) -> Table:
    """The bench rows as a table that fits 80 columns: two-line headers, no vertical rules (rich cuts words)."""
    first = rows[0]
    title = (f"{kind} training throughput on {first.device_name} ({first.device}, {first.threads} threads, "
             f"{first.precision}, channels_last {'on' if first.channels_last else 'off'}, "
             f"compile {'on' if first.compile else 'off'}{', CUDA graph' if first.cuda_graph else ''})")
    caption = (f"achieved FLOP/s = 3 x 2 x forward multiply-adds x resdepth img/s; MB: {first.memory_measure}"
               + (f"; naive precision: {first.naive_precision}" if first.naive_precision else ""))
    view = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, caption=caption)
    for column in ("depth", "resdepth\nimg/s", "naive\nimg/s", "ratio", "achieved\nGFLOP/s", "matmul\nGFLOP/s",
                   "% of\npeak", "resdepth\nMB", "naive\nMB"):
        view.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        view.add_row(str(row.depth), f"{row.resdepth_images_per_second:,.0f}", thousands(row.naive_images_per_second),
                     ratio(row.speedup), f"{row.achieved_gflops:,.0f}", f"{row.matmul_gflops:,.0f}",
                     f"{row.peak_fraction * 100:.0f}%", f"{row.resdepth_peak_memory_mb:,.0f}",
                     thousands(row.naive_peak_memory_mb))
    return view
